// serving/request.c: reading and checking an OpenAI request body (see serving/request.h).
// Fields and ranges are OpenAI's: temperature in [0, 2], top_p in (0, 1],
// max_tokens >= 1, up to four stop sequences, n only 1. Fields we do not
// implement are ignored when left at their defaults, as vLLM and llama.cpp's
// server ignore them, and refused when they ask for something (logprobs,
// tools, a JSON response, penalties): an answer without it would look like one with it.
#include "serving/request.h"
#include "formats/json.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// OpenAI's defaults when a field is missing
static const float DEFAULT_TEMPERATURE = 1.0f;
static const float DEFAULT_TOP_P = 1.0f;
static const float MAX_TEMPERATURE = 2.0f;
// the legacy /v1/completions answers 16 tokens when max_tokens is missing
static const int COMPLETION_DEFAULT_MAX_TOKENS = 16;
// 2^63: a seed is a 64-bit integer
static const double SEED_LIMIT = 9223372036854775808.0;

// Fields of OpenAI's API this server does not implement: the field, what it
// asks for, and a text value that asks for nothing (beside null, false, 0, "", [], {}).
static const char *const UNSUPPORTED_FIELDS[][3] = {
    {"logprobs", "log probabilities", NULL},
    {"top_logprobs", "log probabilities", NULL},
    {"echo", "echoing the prompt", NULL},
    {"suffix", "a suffix (insertion)", NULL},
    {"tools", "tool calls", NULL},
    {"tool_choice", "tool calls", "none"},
    {"functions", "function calls", NULL},
    {"function_call", "function calls", "none"},
    {"response_format", "a response format other than text", NULL},
    {"logit_bias", "logit biases", NULL},
    {"presence_penalty", "a presence penalty", NULL},
    {"frequency_penalty", "a frequency penalty", NULL},
};

int api_error(ApiError *e, int status, const char *type, const char *param, const char *format, ...) {
    e->status = status;
    e->type = type;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list args;
    va_start(args, format);
    vsnprintf(e->message, sizeof e->message, format, args);
    va_end(args);
    return -1;
}

static int invalid(ApiError *e, const char *param, const char *what) {
    return api_error(e, 400, "invalid_request_error", param, "'%s': %s", param, what);
}

// A copy of a JSON string that holds no NUL byte; NULL (e filled) otherwise.
static char *copy_text(const JsonValue *v, const char *param, ApiError *e) {
    if (strlen(v->string) != v->string_len) { invalid(e, param, "must not contain a NUL character"); return NULL; }
    char *copy = strdup(v->string);
    if (!copy) api_error(e, 500, "server_error", param, "out of memory");
    return copy;
}

// A message's content: a string, or a list of {"type": "text", "text": ...}
// parts joined (OpenAI's content parts; images and audio are refused).
static char *message_content(const JsonValue *content, const char *param, ApiError *e) {
    if (content && content->type == JSON_STRING) return copy_text(content, param, e);
    if (!content || content->type != JSON_ARRAY) {
        invalid(e, param, "must be a string or a list of text parts");
        return NULL;
    }
    size_t total = 0;
    for (size_t i = 0; i < content->count; i++) {
        const JsonValue *part = &content->items[i];
        const JsonValue *text = json_get(part, "text");
        if (part->type != JSON_OBJECT || strcmp(json_get_string(part, "type", ""), "text") != 0 || !text ||
            text->type != JSON_STRING) {
            invalid(e, param, "each part must be {\"type\": \"text\", \"text\": string} (only text is supported)");
            return NULL;
        }
        if (strlen(text->string) != text->string_len) {
            invalid(e, param, "must not contain a NUL character");
            return NULL;
        }
        total += text->string_len;
    }
    char *joined = (char *)malloc(total + 1);
    if (!joined) { api_error(e, 500, "server_error", param, "out of memory"); return NULL; }
    size_t n = 0;
    for (size_t i = 0; i < content->count; i++) {
        const JsonValue *text = json_get(&content->items[i], "text");
        memcpy(joined + n, text->string, text->string_len);
        n += text->string_len;
    }
    joined[n] = '\0';
    return joined;
}

static int parse_messages(CompletionRequest *r, const JsonValue *messages, ApiError *e) {
    if (!messages) return invalid(e, "messages", "is required");
    if (messages->type != JSON_ARRAY || messages->count == 0) return invalid(e, "messages", "must be a non-empty list");
    if (messages->count > REQUEST_MAX_MESSAGES)
        return api_error(e, 400, "invalid_request_error", "messages", "'messages': at most %d messages",
                         REQUEST_MAX_MESSAGES);
    r->messages = (ChatMessage *)calloc(messages->count, sizeof(ChatMessage));
    if (!r->messages) return api_error(e, 500, "server_error", "messages", "out of memory");
    static const char *const ROLES[] = {"system", "user", "assistant", "developer"};
    for (size_t i = 0; i < messages->count; i++) {
        const JsonValue *m = &messages->items[i];
        char param[64];
        snprintf(param, sizeof param, "messages[%zu].role", i);
        const JsonValue *role = json_get(m, "role");
        int known = 0;
        for (size_t k = 0; role && role->type == JSON_STRING && k < sizeof ROLES / sizeof ROLES[0]; k++)
            known |= strcmp(role->string, ROLES[k]) == 0;
        if (m->type != JSON_OBJECT || !known)
            return invalid(e, param, "must be one of 'system', 'developer', 'user', 'assistant'");
        // OpenAI's "developer" is the newer name of "system"
        r->messages[i].role = strdup(strcmp(role->string, "developer") == 0 ? "system" : role->string);
        r->n_messages = (int)i + 1;
        snprintf(param, sizeof param, "messages[%zu].content", i);
        r->messages[i].content = message_content(json_get(m, "content"), param, e);
        if (!r->messages[i].content) return -1;
        if (!r->messages[i].role) return api_error(e, 500, "server_error", param, "out of memory");
    }
    return 0;
}

static int parse_prompt(CompletionRequest *r, const JsonValue *prompt, ApiError *e) {
    if (!prompt) return invalid(e, "prompt", "is required");
    // a list of one string is the same prompt; a batch of several is not supported
    if (prompt->type == JSON_ARRAY && prompt->count == 1) prompt = &prompt->items[0];
    if (prompt->type != JSON_STRING) return invalid(e, "prompt", "must be a string (or a list of one string)");
    r->prompt = copy_text(prompt, "prompt", e);
    return r->prompt ? 0 : -1;
}

// A number field within [low, high] (exclusive low when low_open); missing keeps *out.
static int number_field(const JsonValue *body, const char *key, double low, int low_open, double high, float *out,
                        ApiError *e) {
    const JsonValue *v = json_get(body, key);
    if (!v || v->type == JSON_NULL) return 0;
    if (v->type != JSON_NUMBER || !(low_open ? v->number > low : v->number >= low) || !(v->number <= high))
        return api_error(e, 400, "invalid_request_error", key, "'%s': must be a number in %s%g, %g]", key,
                         low_open ? "(" : "[", low, high);
    *out = (float)v->number;
    return 0;
}

// An integer field in [low, high] (missing or null: *given stays 0).
static int integer_field(const JsonValue *body, const char *key, double low, double high, double *out, int *given,
                         ApiError *e) {
    const JsonValue *v = json_get(body, key);
    *given = 0;
    if (!v || v->type == JSON_NULL) return 0;
    if (v->type != JSON_NUMBER || v->number != floor(v->number) || v->number < low || v->number > high) {
        if (isinf(high))
            return api_error(e, 400, "invalid_request_error", key, "'%s': must be an integer >= %.0f", key, low);
        return api_error(e, 400, "invalid_request_error", key, "'%s': must be an integer from %.0f to %.0f", key, low,
                         high);
    }
    *out = v->number;
    *given = 1;
    return 0;
}

static int parse_stop(CompletionRequest *r, const JsonValue *stop, ApiError *e) {
    if (!stop || stop->type == JSON_NULL) return 0;
    const JsonValue *items = stop->type == JSON_ARRAY ? stop->items : stop;
    size_t count = stop->type == JSON_ARRAY ? stop->count : 1;
    if (count > REQUEST_MAX_STOPS)
        return api_error(e, 400, "invalid_request_error", "stop", "'stop': at most %d sequences", REQUEST_MAX_STOPS);
    for (size_t i = 0; i < count; i++) {
        if (items[i].type != JSON_STRING || items[i].string_len == 0 || items[i].string_len > REQUEST_MAX_STOP_BYTES)
            return api_error(e, 400, "invalid_request_error", "stop",
                             "'stop': must be a string or a list of strings, each 1 to %d bytes",
                             REQUEST_MAX_STOP_BYTES);
        r->stop[i] = copy_text(&items[i], "stop", e);
        if (!r->stop[i]) return -1;
        r->n_stop = (int)i + 1;
    }
    return 0;
}

static int parse_bool(const JsonValue *body, const char *key, int *out, ApiError *e) {
    const JsonValue *v = json_get(body, key);
    if (!v || v->type == JSON_NULL) return 0;
    if (v->type != JSON_BOOL) return invalid(e, key, "must be true or false");
    *out = v->boolean;
    return 0;
}

// max_tokens (or the newer max_completion_tokens), n, seed, stream and its options.
static int parse_counts(CompletionRequest *r, const JsonValue *body, ApiError *e) {
    double value = 0;
    int given;
    if (integer_field(body, "max_tokens", 1, INFINITY, &value, &given, e) != 0) return -1;
    if (!given && integer_field(body, "max_completion_tokens", 1, INFINITY, &value, &given, e) != 0) return -1;
    // beyond any context: the server's context check names the limit
    if (given) r->max_tokens = value > 1e9 ? 1000000000 : (int)value;
    if (integer_field(body, "n", 1, INFINITY, &value, &given, e) != 0) return -1;
    if (given && value != 1) return invalid(e, "n", "only 1 choice per request is supported");
    if (integer_field(body, "best_of", 1, INFINITY, &value, &given, e) != 0) return -1;
    if (given && value != 1) return invalid(e, "best_of", "only 1 candidate per request is supported");
    // a 64-bit signed seed, as OpenAI's (its largest, 2^63 - 1, reads as the double 2^63)
    if (integer_field(body, "seed", -SEED_LIMIT, SEED_LIMIT, &value, &r->seed_given, e) != 0) return -1;
    if (r->seed_given) r->seed = value < 0 ? (uint64_t)(int64_t)value : (uint64_t)value;
    if (parse_bool(body, "stream", &r->stream, e) != 0) return -1;
    const JsonValue *options = json_get(body, "stream_options");
    if (options && options->type != JSON_NULL) {
        if (options->type != JSON_OBJECT) return invalid(e, "stream_options", "must be an object");
        if (parse_bool(options, "include_usage", &r->include_usage, e) != 0) return -1;
    }
    return 0;
}

// Whether a field asks for nothing: missing, null, false, 0, "", [] or {}, the
// text off (when not NULL), or {"type": "text"} (response_format's default).
static int asks_for_nothing(const JsonValue *v, const char *off) {
    if (!v) return 1;
    switch (v->type) {
    case JSON_NULL: return 1;
    case JSON_BOOL: return !v->boolean;
    case JSON_NUMBER: return v->number == 0;
    case JSON_STRING: return v->string_len == 0 || (off && strcmp(v->string, off) == 0);
    case JSON_ARRAY: return v->count == 0;
    case JSON_OBJECT: return v->count == 0 || (v->count == 1 && strcmp(json_get_string(v, "type", ""), "text") == 0);
    }
    return 0;
}

// 400 naming the first field that asks for what this server does not implement.
static int check_unsupported(const JsonValue *body, ApiError *e) {
    for (size_t i = 0; i < sizeof UNSUPPORTED_FIELDS / sizeof UNSUPPORTED_FIELDS[0]; i++) {
        const char *key = UNSUPPORTED_FIELDS[i][0];
        if (asks_for_nothing(json_get(body, key), UNSUPPORTED_FIELDS[i][2])) continue;
        return api_error(e, 400, "invalid_request_error", key, "'%s' asks for %s, which this server does not "
                         "implement (leave it out)", key, UNSUPPORTED_FIELDS[i][1]);
    }
    return 0;
}

int request_parse(CompletionRequest *r, RequestKind kind, const char *body, size_t len, ApiError *e) {
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->max_tokens = kind == REQUEST_COMPLETION ? COMPLETION_DEFAULT_MAX_TOKENS : -1;
    r->temperature = DEFAULT_TEMPERATURE;
    r->top_p = DEFAULT_TOP_P;
    char err[256];
    JsonValue *json = json_parse(body, len, err, sizeof err);
    if (!json) return api_error(e, 400, "invalid_request_error", "", "the body is not valid JSON: %s", err);
    int status = 0;
    const JsonValue *model = json_get(json, "model");
    if (json->type != JSON_OBJECT) status = api_error(e, 400, "invalid_request_error", "", "the body must be a JSON object");
    else if (!model || model->type != JSON_STRING || model->string_len == 0) status = invalid(e, "model", "must be a non-empty string (an adapter's name, or the base's: GET /v1/models)");
    else if (!(r->model = copy_text(model, "model", e))) status = -1;
    if (status == 0)
        status = kind == REQUEST_CHAT ? parse_messages(r, json_get(json, "messages"), e)
                                      : parse_prompt(r, json_get(json, "prompt"), e);
    if (status == 0) status = number_field(json, "temperature", 0.0, 0, MAX_TEMPERATURE, &r->temperature, e);
    if (status == 0) status = number_field(json, "top_p", 0.0, 1, 1.0, &r->top_p, e);
    if (status == 0) status = parse_counts(r, json, e);
    if (status == 0) status = parse_stop(r, json_get(json, "stop"), e);
    if (status == 0) status = check_unsupported(json, e);
    json_free(json);
    if (status != 0) request_free(r);
    return status;
}

void request_free(CompletionRequest *r) {
    free(r->model);
    for (int i = 0; i < r->n_messages; i++) {
        free((char *)r->messages[i].role);
        free((char *)r->messages[i].content);
    }
    free(r->messages);
    free(r->prompt);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    memset(r, 0, sizeof *r);
}
