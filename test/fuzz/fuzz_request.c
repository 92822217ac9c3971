// test/fuzz/fuzz_request.c: ./serve's request reader (serving/request.c) on
// any bytes, as the body of both POST /v1/chat/completions and
// /v1/completions. What it accepts must hold the checked ranges, and the
// response writers (serving/response.c) and the stop-sequence search
// (serving/stop.c) run on what it read; an error must carry a 4xx/5xx status
// and a message.
#include "serving/request.h"
#include "serving/response.h"
#include "serving/stop.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void check_accepted(const CompletionRequest *r) {
    if (!r->model || !r->model[0]) abort();
    if (!(r->temperature >= 0.0f && r->temperature <= 2.0f) || !(r->top_p > 0.0f && r->top_p <= 1.0f)) abort();
    if (r->max_tokens == 0 || r->max_tokens < -1 || r->n_stop > REQUEST_MAX_STOPS) abort();
    if (r->kind == REQUEST_CHAT && (r->n_messages < 1 || !r->messages)) abort();
    if (r->kind == REQUEST_COMPLETION && !r->prompt) abort();
}

// Writes the answers a request like r gets, its text the prompt or the last message.
static void write_answers(const CompletionRequest *r) {
    const char *text = r->kind == REQUEST_CHAT ? r->messages[r->n_messages - 1].content : r->prompt;
    size_t len = strlen(text), safe = 0;
    long stop = stop_find(text, len, 0, r->stop, r->n_stop, &safe);
    if (stop >= (long)len + 1 || safe > len) abort();
    CompletionInfo info = {"id-0", r->model, 0, 1, 2, "stop"};
    char *out = NULL;
    size_t out_len = 0;
    FILE *f = open_memstream(&out, &out_len);
    if (!f) return;
    write_completion(f, r->kind, &info, text, stop >= 0 ? (size_t)stop : len);
    write_chunk(f, r->kind, &info, text, safe, 1);
    write_usage_chunk(f, r->kind, &info);
    fclose(f);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    for (int kind = REQUEST_CHAT; kind <= REQUEST_COMPLETION; kind++) {
        CompletionRequest r;
        ApiError e;
        if (request_parse(&r, (RequestKind)kind, (const char *)data, size, &e) == 0) {
            check_accepted(&r);
            write_answers(&r);
            request_free(&r);
        } else if (e.status < 400 || e.status > 599 || !e.message[0]) {
            abort();
        }
    }
    return 0;
}
