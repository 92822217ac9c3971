// serving/request.h: an OpenAI API request body, read and checked: the JSON
// of POST /v1/chat/completions and /v1/completions turned into what a
// generation needs, or the error the API answers (status, message, the
// field at fault). No model is needed here (the fuzz target runs it alone);
// the server checks the model name and the context afterwards.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { REQUEST_CHAT, REQUEST_COMPLETION } RequestKind;

enum {
    REQUEST_MAX_STOPS = 4,           // OpenAI's limit on "stop" sequences
    REQUEST_MAX_STOP_BYTES = 256,    // the longest stop sequence accepted
    REQUEST_MAX_MESSAGES = 1024,     // messages in one chat request
};

// An API error: HTTP status, OpenAI's error type, the message, and the
// request field it is about ("" when none).
typedef struct {
    int status;
    const char *type;   // "invalid_request_error", "not_found_error", ...
    char message[512];
    char param[64];
} ApiError;

typedef struct {
    RequestKind kind;
    char *model;               // the adapter's name, or the base's
    ChatMessage *messages;     // chat: role and content (malloc'd strings), n_messages of them
    int n_messages;
    char *prompt;              // completion: the prompt text
    int max_tokens;            // tokens to generate at most; -1: up to the context
    float temperature;         // 0 = greedy
    float top_p;
    uint64_t seed;
    int seed_given;
    char *stop[REQUEST_MAX_STOPS];
    int n_stop;
    int stream;                // answer as server-sent events
    int include_usage;         // stream_options.include_usage: a last chunk with the token counts
} CompletionRequest;

// Parses and checks body (len bytes). 0, or -1 with e filled (400: malformed
// JSON, a missing field, a value of the wrong type or out of range, each
// naming the field) and r empty. r must be freed with request_free on 0.
int request_parse(CompletionRequest *r, RequestKind kind, const char *body, size_t len, ApiError *e);
void request_free(CompletionRequest *r);

// Fills e (printf-style message) and returns -1.
int api_error(ApiError *e, int status, const char *type, const char *param, const char *format, ...)
    __attribute__((format(printf, 5, 6)));

#ifdef __cplusplus
}
#endif
