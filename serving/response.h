// serving/response.h: the JSON bodies of OpenAI's API, written with the
// project's one JSON string writer (formats/json.h) into a FILE (a memory
// stream for an HTTP reply): errors, completions, streamed chunks, the model list.
#pragma once
#include <stdio.h>
#include "serving/request.h"

#ifdef __cplusplus
extern "C" {
#endif

// What a finished generation reports.
typedef struct {
    const char *id;              // "chatcmpl-N" / "cmpl-N"
    const char *model;           // the name the request used
    long long created;           // Unix time
    int prompt_tokens, completion_tokens;
    const char *finish_reason;   // "stop" or "length"; NULL inside a stream
} CompletionInfo;

// {"error": {"message", "type", "param", "code"}}: OpenAI's error shape.
void write_error(FILE *f, const ApiError *e);
// A whole answer: chat.completion (content in "message") or text_completion ("text").
void write_completion(FILE *f, RequestKind kind, const CompletionInfo *info, const char *text, size_t len);
// One server-sent event "data: {...}\n\n" of a stream: a chunk carrying
// text (len bytes; a chat stream's first chunk, first_chunk, carries the role
// too), or the last chunk with info->finish_reason set and no text.
void write_chunk(FILE *f, RequestKind kind, const CompletionInfo *info, const char *text, size_t len,
                 int first_chunk);
// The stream's usage chunk (stream_options.include_usage): no choices, the token counts.
void write_usage_chunk(FILE *f, RequestKind kind, const CompletionInfo *info);
// The end of a stream: "data: [DONE]\n\n".
void write_done(FILE *f);
// A server-sent-event comment, which clients skip: a waiting stream's sign of life.
static const char SSE_KEEPALIVE[] = ": keep-alive\n\n";
// One entry of GET /v1/models' list ({"object": "list", "data": [...]} around them).
void write_model_entry(FILE *f, const char *id, long long created, const char *parent);

#ifdef __cplusplus
}
#endif
