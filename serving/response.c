// serving/response.c: OpenAI's response bodies (see serving/response.h). The
// field names and "object" values are those of the API reference, which the
// official clients parse.
#include "serving/response.h"
#include "formats/json.h"

// OpenAI's "object" of a whole answer and of a streamed chunk, per kind.
static const char *object_name(RequestKind kind, int chunk) {
    if (kind == REQUEST_CHAT) return chunk ? "chat.completion.chunk" : "chat.completion";
    return "text_completion";
}

void write_error(FILE *f, const ApiError *e) {
    fprintf(f, "{\"error\": {\"message\": ");
    json_write_string(f, e->message);
    fprintf(f, ", \"type\": ");
    json_write_string(f, e->type);
    fprintf(f, ", \"param\": ");
    if (e->param[0]) json_write_string(f, e->param);
    else fprintf(f, "null");
    fprintf(f, ", \"code\": %d}}", e->status);
}

static void write_head(FILE *f, RequestKind kind, const CompletionInfo *info, int chunk) {
    fprintf(f, "{\"id\": ");
    json_write_string(f, info->id);
    fprintf(f, ", \"object\": \"%s\", \"created\": %lld, \"model\": ", object_name(kind, chunk), info->created);
    json_write_string(f, info->model);
}

static void write_usage(FILE *f, const CompletionInfo *info) {
    fprintf(f, "\"usage\": {\"prompt_tokens\": %d, \"completion_tokens\": %d, \"total_tokens\": %d}",
            info->prompt_tokens, info->completion_tokens, info->prompt_tokens + info->completion_tokens);
}

static void write_finish(FILE *f, const char *finish_reason) {
    fprintf(f, "\"finish_reason\": ");
    if (finish_reason) json_write_string(f, finish_reason);
    else fprintf(f, "null");
}

void write_completion(FILE *f, RequestKind kind, const CompletionInfo *info, const char *text, size_t len) {
    write_head(f, kind, info, 0);
    fprintf(f, ", \"choices\": [{\"index\": 0, ");
    if (kind == REQUEST_CHAT) {
        fprintf(f, "\"message\": {\"role\": \"assistant\", \"content\": ");
        json_write_string_len(f, text, len);
        fprintf(f, "}, \"logprobs\": null, ");
    } else {
        fprintf(f, "\"text\": ");
        json_write_string_len(f, text, len);
        fprintf(f, ", \"logprobs\": null, ");
    }
    write_finish(f, info->finish_reason);
    fprintf(f, "}], ");
    write_usage(f, info);
    fprintf(f, "}");
}

void write_chunk(FILE *f, RequestKind kind, const CompletionInfo *info, const char *text, size_t len,
                 int first_chunk) {
    fprintf(f, "data: ");
    write_head(f, kind, info, 1);
    fprintf(f, ", \"choices\": [{\"index\": 0, ");
    if (kind == REQUEST_CHAT) {
        fprintf(f, "\"delta\": {");
        if (first_chunk) fprintf(f, "\"role\": \"assistant\"%s", info->finish_reason ? "" : ", ");
        if (!info->finish_reason) {
            fprintf(f, "\"content\": ");
            json_write_string_len(f, text, len);
        }
        fprintf(f, "}, \"logprobs\": null, ");
    } else {
        fprintf(f, "\"text\": ");
        json_write_string_len(f, info->finish_reason ? "" : text, info->finish_reason ? 0 : len);
        fprintf(f, ", \"logprobs\": null, ");
    }
    write_finish(f, info->finish_reason);
    fprintf(f, "}]}\n\n");
}

void write_usage_chunk(FILE *f, RequestKind kind, const CompletionInfo *info) {
    fprintf(f, "data: ");
    write_head(f, kind, info, 1);
    fprintf(f, ", \"choices\": [], ");
    write_usage(f, info);
    fprintf(f, "}\n\n");
}

void write_done(FILE *f) { fprintf(f, "data: [DONE]\n\n"); }

void write_model_entry(FILE *f, const char *id, long long created, const char *parent) {
    fprintf(f, "{\"id\": ");
    json_write_string(f, id);
    fprintf(f, ", \"object\": \"model\", \"created\": %lld, \"owned_by\": \"qlora.c\", \"parent\": ", created);
    if (parent) json_write_string(f, parent);
    else fprintf(f, "null");
    fprintf(f, "}");
}
