// serving/server.cpp: ./serve's requests (see serving/server.h). A
// generation is checked and tokenized on the HTTP thread, queued, and run by
// a worker on its own key/value cache with its adapter applied unmerged
// (forward_cpu_adapter, or forward_gpu with --device cuda): requests for
// different adapters run side by side, one sequence per worker, and switching
// adapters costs nothing but a pointer. On the GPU the workers take turns: one
// lock around every GPU call (each forward, and the allocations), since the
// kernels share the default stream and the one cuBLAS handle.
#include "serving/server.h"
#include "eval/eval.h"
#include "formats/json.h"
#include "infer/forward.h"
#include "infer/forward_gpu.h"
#include "infer/sampler.h"
#include "nf4.h"
#include "ops/gpu.h"
#include "ops/random.h"
#include "serving/request.h"
#include "serving/response.h"
#include "serving/scheduler.h"
#include "serving/stop.h"
#include "tokenizer.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// tokens one forward call takes while reading the prompt (as ./generate)
static const int PREFILL_CHUNK = 256;
// what a 429 tells the client to wait, in seconds
static const int RETRY_AFTER_SECONDS = 1;
// the longest adapter name
static const size_t MAX_ADAPTER_NAME = 64;
// how often the client of a whole answer is asked whether it hung up, ms
static const int CLIENT_CHECK_MS = 100;

static double now_seconds() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// ---- adapters ---------------------------------------------------------------

// A loaded adapter; requests hold it by shared_ptr, so an unload while they
// run frees it when the last one ends.
struct LoadedAdapter {
    std::string name, dir;
    AdapterWeights weights;
    GpuAdapter *gpu = nullptr;           // A and B on the GPU (--device cuda)
    std::mutex *gpu_lock = nullptr;      // the server's, held to free them
    ~LoadedAdapter() {
        if (gpu) {
            std::lock_guard<std::mutex> lock(*gpu_lock);
            gpu_adapter_free(gpu);
        }
        adapter_weights_free(&weights);
    }
};

// ---- one generation ----------------------------------------------------------

struct Generation {
    CompletionRequest request;
    std::shared_ptr<LoadedAdapter> adapter;   // NULL: the base
    std::vector<int> prompt;
    int max_new = 0;
    std::string id;
    long long created = 0;
    double accepted_at = 0;
    uint64_t unseeded = 0;   // the sampler's seed when the request gives none
    // filled by the worker, read by the HTTP thread under mutex
    std::mutex mutex;
    std::condition_variable changed;
    std::string text;        // the answer so far (cut before a stop sequence)
    size_t sent = 0;         // bytes of text already sent as chunks
    std::string events;      // server-sent events not yet read
    int completion_tokens = 0;
    const char *finish_reason = "length";
    bool finished = false, cancelled = false, failed = false;
    ApiError error;
    ~Generation() { request_free(&request); }
};

struct ServerStream {
    std::shared_ptr<Generation> generation;
    int keepalive_ms;   // <= 0: wait for events however long
};

struct Server {
    ServerOptions options;
    Model model;
    std::string base_name;
    std::mutex adapters_mutex;
    std::map<std::string, std::shared_ptr<LoadedAdapter>> adapters;
    std::unique_ptr<Scheduler> scheduler;
    GpuModel *gpu = nullptr;   // the base on the GPU (--device cuda), else NULL
    std::mutex gpu_lock;       // one GPU call at a time
    std::atomic<long long> next_id{0};
    std::atomic<bool> stopping{false};
    int eos = -1, im_end = -1;
    uint64_t loaded_hash = 0;   // model_weights_hash of the base as loaded (before an NF4 round trip)
};

// ---- replies ----------------------------------------------------------------

// A reply whose body write() puts into a memory stream.
template <typename Write> static void json_reply(Reply *reply, int status, Write write) {
    char *body = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&body, &len);
    if (f) {
        write(f);
        fclose(f);
    }
    reply->status = body ? status : 500;
    reply->body = body;
    reply->body_len = body ? len : 0;
    reply->content_type = "application/json";
}

static void error_reply(Reply *reply, const ApiError &e) {
    json_reply(reply, e.status, [&](FILE *f) { write_error(f, &e); });
}

static void log_line(const char *method, const char *path, int status, const char *detail) {
    fprintf(stderr, "serve: %s %s %d%s%s\n", method, path, status, detail[0] ? " " : "", detail);
}

// ---- running a generation (a worker) ----------------------------------------

static CompletionInfo info_of(const Generation &g, const char *finish_reason) {
    CompletionInfo info = {g.id.c_str(), g.request.model, g.created, (int)g.prompt.size(), g.completion_tokens,
                           finish_reason};
    return info;
}

// Appends what write() prints to g's events (called with g.mutex held).
template <typename Write> static void add_event(Generation &g, Write write) {
    char *buffer = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buffer, &len);
    if (!f) return;
    write(f);
    fclose(f);
    g.events.append(buffer, len);
    free(buffer);
}

// Adds piece to the answer, cuts it at a stop sequence, and queues as a chunk
// what can no longer be part of one. Returns true when a stop sequence ended it.
static bool add_text(Generation &g, const char *piece, size_t len) {
    std::lock_guard<std::mutex> lock(g.mutex);
    size_t before = g.text.size();
    g.text.append(piece, len);
    size_t safe = g.text.size();
    long stop = g.request.n_stop ? stop_find(g.text.data(), g.text.size(), before, g.request.stop, g.request.n_stop, &safe)
                                 : -1;
    if (stop >= 0) g.text.resize((size_t)stop);
    if (g.request.stream && safe > g.sent) {
        CompletionInfo info = info_of(g, NULL);
        bool first = g.sent == 0;
        add_event(g, [&](FILE *f) { write_chunk(f, g.request.kind, &info, g.text.data() + g.sent, safe - g.sent, first); });
        g.sent = safe;
        g.changed.notify_all();
    }
    return stop >= 0;
}

// The stream's last events: the rest of the text, the finish reason, the
// usage when asked, [DONE] (called with g.mutex held).
static void finish_stream(Generation &g) {
    if (g.failed) {
        add_event(g, [&](FILE *f) {
            fprintf(f, "data: ");
            write_error(f, &g.error);
            fprintf(f, "\n\n");
        });
    } else {
        CompletionInfo open_info = info_of(g, NULL), info = info_of(g, g.finish_reason);
        if (g.text.size() > g.sent || g.sent == 0)
            add_event(g, [&](FILE *f) {
                write_chunk(f, g.request.kind, &open_info, g.text.data() + g.sent, g.text.size() - g.sent, g.sent == 0);
            });
        g.sent = g.text.size();
        add_event(g, [&](FILE *f) { write_chunk(f, g.request.kind, &info, "", 0, 0); });
        if (g.request.include_usage) add_event(g, [&](FILE *f) { write_usage_chunk(f, g.request.kind, &info); });
    }
    add_event(g, [](FILE *f) { write_done(f); });
}

static void fail(Generation &g, int status, const char *message) {
    std::lock_guard<std::mutex> lock(g.mutex);
    g.failed = true;
    api_error(&g.error, status, "server_error", NULL, "%s", message);
}

static bool cancelled(Generation &g) {
    std::lock_guard<std::mutex> lock(g.mutex);
    return g.cancelled;
}

// One sequence's key/value cache and forward on the server's device: the CPU's,
// or the GPU's, taking the GPU lock for each call.
struct Sequence {
    Server *s;
    const LoadedAdapter *adapter;   // NULL: the base
    InferState cpu = {};
    GpuInferState *gpu = nullptr;
    bool ready = false;

    Sequence(Server *server, const LoadedAdapter *a) : s(server), adapter(a) {}
    // A cache of max_seq positions; false with why in err.
    bool init(int max_seq, char *err, size_t err_size) {
        if (!s->gpu) {
            ready = infer_state_init(&cpu, &s->model.config, max_seq, PREFILL_CHUNK) == 0;
            if (!ready) snprintf(err, err_size, "out of memory for the key/value cache");
            return ready;
        }
        std::lock_guard<std::mutex> lock(s->gpu_lock);
        gpu = gpu_infer_state_create(s->gpu, max_seq, PREFILL_CHUNK, adapter ? adapter->weights.rank : 0, err, err_size);
        return ready = gpu != nullptr;
    }
    // forward_cpu_adapter's last-token logits (NULL when the adapter's scratch cannot be had).
    const float *forward(const int *tokens, int n, int pos, float *norms) {
        if (!s->gpu) return forward_cpu_adapter(&s->model, adapter ? &adapter->weights : NULL, &cpu, tokens, n, pos, 0, norms);
        std::lock_guard<std::mutex> lock(s->gpu_lock);
        return forward_gpu(s->gpu, adapter ? adapter->gpu : NULL, gpu, tokens, n, pos, 0, norms);
    }
    ~Sequence() {
        if (!ready) return;
        if (s->gpu) {
            std::lock_guard<std::mutex> lock(s->gpu_lock);
            gpu_infer_state_free(gpu);
        } else {
            infer_state_free(&cpu);
        }
    }
};

// Prefill, then one token at a time as ./generate does: greedy or sampled,
// ending at EOS or <|im_end|>, a stop sequence, or max_new tokens.
static void decode(Server *s, Generation &g, Sequence *sequence, Sampler *sampler, float *norms) {
    const Model *m = &s->model;
    int n_prompt = (int)g.prompt.size();
    const float *logits = NULL;
    for (int pos = 0; pos < n_prompt; pos += PREFILL_CHUNK) {
        int n = n_prompt - pos < PREFILL_CHUNK ? n_prompt - pos : PREFILL_CHUNK;
        logits = sequence->forward(g.prompt.data() + pos, n, pos, norms);
        if (!logits) return fail(g, 500, "out of memory for the adapter's scratch");
    }
    TokenStream stream = {};
    size_t len;
    for (int pos = n_prompt; g.completion_tokens < g.max_new && !cancelled(g); pos++) {
        if (!eval_output_usable(logits, norms, &m->config))
            return fail(g, 500, "the model's output is NaN/Inf (or overflowed): the model or adapter weights are not "
                                "finite or far too large");
        int token = sampler_next(sampler, logits);
        g.completion_tokens++;
        if (token == s->eos || token == s->im_end) { g.finish_reason = "stop"; break; }
        char *piece = tokenizer_stream_next(m->tokenizer, &stream, token, &len);
        if (!piece) return fail(g, 500, "out of memory");
        bool stopped = add_text(g, piece, len);
        free(piece);
        if (stopped) { g.finish_reason = "stop"; return; }
        if (g.completion_tokens == g.max_new) break;
        logits = sequence->forward(&token, 1, pos, norms);
        if (!logits) return fail(g, 500, "out of memory for the adapter's scratch");
    }
    char *rest = tokenizer_stream_end(&stream, &len);
    if (!rest) return fail(g, 500, "out of memory");
    if (add_text(g, rest, len)) g.finish_reason = "stop";
    free(rest);
}

static void run_generation(Server *s, std::shared_ptr<Generation> g) {
    const Config *c = &s->model.config;
    int max_seq = (int)g->prompt.size() + g->max_new;
    Sampler sampler;
    uint64_t seed = g->request.seed_given ? g->request.seed : g->unseeded;
    std::vector<float> norms((size_t)c->n_layers + 1);
    char err[512] = "out of memory for the sampler";
    {
        Sequence sequence(s, g->adapter.get());
        bool have_state = !cancelled(*g) && sequence.init(max_seq, err, sizeof err);
        bool have_sampler = have_state && sampler_init(&sampler, c->vocab_size, g->request.temperature,
                                                       g->request.top_p, seed) == 0;
        if (have_sampler) decode(s, *g, &sequence, &sampler, norms.data());
        else if (!cancelled(*g)) fail(*g, 500, err);
        if (have_sampler) sampler_free(&sampler);
    }
    double seconds = now_seconds() - g->accepted_at;
    char detail[256];
    snprintf(detail, sizeof detail, "model=%s prompt_tokens=%zu completion_tokens=%d ms=%.1f tok/s=%.1f%s",
             g->request.model, g->prompt.size(), g->completion_tokens, seconds * 1e3, g->completion_tokens / seconds,
             g->cancelled ? " (client gone)" : "");
    log_line("POST", g->request.kind == REQUEST_CHAT ? "/v1/chat/completions" : "/v1/completions",
             g->failed ? g->error.status : 200, detail);
    std::lock_guard<std::mutex> lock(g->mutex);
    if (g->request.stream) finish_stream(*g);
    g->finished = true;
    g->changed.notify_all();
}

// ---- checking and queueing a generation (the HTTP thread) --------------------

// The adapter a request names (NULL with the base); false with a 404 listing the known names.
static bool find_adapter(Server *s, const char *name, std::shared_ptr<LoadedAdapter> *out, ApiError *e) {
    if (s->base_name == name) return true;
    std::lock_guard<std::mutex> lock(s->adapters_mutex);
    auto it = s->adapters.find(name);
    if (it != s->adapters.end()) { *out = it->second; return true; }
    std::string known = s->base_name;
    for (const auto &entry : s->adapters) known += ", " + entry.first;
    api_error(e, 404, "not_found_error", "model", "The model '%s' does not exist; this server has: %s", name,
              known.c_str());
    return false;
}

// A seed for a request that gives none, different for each request (also two
// in the same second): the clock's nanoseconds and the request's number, mixed.
static uint64_t fresh_seed(long long number) {
    auto since_epoch = std::chrono::system_clock::now().time_since_epoch();
    uint64_t nanoseconds = (uint64_t)std::chrono::duration_cast<std::chrono::nanoseconds>(since_epoch).count();
    return splitmix64_at(nanoseconds, (uint64_t)number);
}

// The prompt's tokens, checked against the context and the vocabulary; false with the error.
static bool tokenize(Server *s, Generation &g, ApiError *e) {
    const Tokenizer *tok = s->model.tokenizer;
    int *ids = NULL, n;
    const CompletionRequest &r = g.request;
    const char *field = r.kind == REQUEST_CHAT ? "messages" : "prompt";
    if (r.kind == REQUEST_CHAT) {
        unsigned char *is_answer = NULL;
        n = chat_encode(tok, r.messages, r.n_messages, 1, &ids, &is_answer);
        free(is_answer);
        if (n < 0) { free(ids); api_error(e, 400, "invalid_request_error", "messages", "this model has no chat template: use /v1/completions"); return false; }
    } else {
        n = tokenizer_encode(tok, r.prompt, strlen(r.prompt), 1, &ids);
    }
    if (n > 0) g.prompt.assign(ids, ids + n);
    free(ids);
    int context = s->model.config.max_seq_len;
    if (n <= 0) { api_error(e, 400, "invalid_request_error", field, "'%s': encodes to no tokens", field); return false; }
    for (int id : g.prompt)
        if (id < 0 || id >= s->model.config.vocab_size) {
            api_error(e, 500, "server_error", field, "the tokenizer gave id %d, outside the model's vocabulary of %d", id,
                      s->model.config.vocab_size);
            return false;
        }
    if (n >= context) {
        api_error(e, 400, "invalid_request_error", field, "This model's maximum context length is %d tokens; the %s "
                  "has %d tokens (and at least one must be generated)", context, field, n);
        return false;
    }
    if (r.max_tokens > context - n) {
        api_error(e, 400, "invalid_request_error", "max_tokens", "This model's maximum context length is %d tokens; "
                  "you requested %d tokens (%d in the %s, %d in max_tokens)", context, n + r.max_tokens, n, field,
                  r.max_tokens);
        return false;
    }
    g.max_new = r.max_tokens < 0 ? context - n : r.max_tokens;
    return true;
}

// Waits for g to end, stopping it when its client hangs up meanwhile.
static void wait_and_answer(std::shared_ptr<Generation> g, const ClientWatch *watch, Reply *reply) {
    std::unique_lock<std::mutex> lock(g->mutex);
    while (!g->changed.wait_for(lock, std::chrono::milliseconds(CLIENT_CHECK_MS), [&] { return g->finished; }))
        if (watch && !g->cancelled && watch->gone(watch->context)) g->cancelled = true;
    if (g->failed) return error_reply(reply, g->error);
    CompletionInfo info = info_of(*g, g->finish_reason);
    json_reply(reply, 200, [&](FILE *f) { write_completion(f, g->request.kind, &info, g->text.data(), g->text.size()); });
}

static void handle_generation(Server *s, RequestKind kind, const char *body, size_t len, const ClientWatch *watch,
                              Reply *reply) {
    auto g = std::make_shared<Generation>();
    ApiError e;
    if (request_parse(&g->request, kind, body, len, &e) != 0) return error_reply(reply, e);
    if (!find_adapter(s, g->request.model, &g->adapter, &e) || !tokenize(s, *g, &e)) return error_reply(reply, e);
    long long number = s->next_id++;
    g->id = std::string(kind == REQUEST_CHAT ? "chatcmpl-" : "cmpl-") + std::to_string(number);
    g->created = (long long)time(NULL);
    g->unseeded = fresh_seed(number);
    g->accepted_at = now_seconds();
    if (s->stopping) {
        api_error(&e, 503, "server_error", NULL, "the server is shutting down");
        return error_reply(reply, e);
    }
    if (!s->scheduler->submit([s, g] { run_generation(s, g); })) {
        api_error(&e, 429, "rate_limit_error", NULL, "the server is busy: %d requests wait already; retry after %d s",
                  s->options.queue, RETRY_AFTER_SECONDS);
        error_reply(reply, e);
        reply->retry_after = RETRY_AFTER_SECONDS;
        return;
    }
    if (!g->request.stream) return wait_and_answer(g, watch, reply);
    reply->status = 200;
    reply->content_type = "text/event-stream";
    reply->stream = new ServerStream{g, watch ? watch->keepalive_ms : 0};
}

size_t server_stream_read(ServerStream *stream, char *out, size_t max) {
    Generation &g = *stream->generation;
    std::unique_lock<std::mutex> lock(g.mutex);
    auto ready = [&] { return !g.events.empty() || g.finished; };
    if (stream->keepalive_ms <= 0) {
        g.changed.wait(lock, ready);
    } else if (!g.changed.wait_for(lock, std::chrono::milliseconds(stream->keepalive_ms), ready)) {
        size_t n = sizeof SSE_KEEPALIVE - 1 < max ? sizeof SSE_KEEPALIVE - 1 : max;
        memcpy(out, SSE_KEEPALIVE, n);
        return n;
    }
    size_t n = g.events.size() < max ? g.events.size() : max;
    memcpy(out, g.events.data(), n);
    g.events.erase(0, n);
    return n;
}

void server_stream_close(ServerStream *stream) {
    if (!stream) return;
    {
        std::lock_guard<std::mutex> lock(stream->generation->mutex);
        stream->generation->cancelled = true;
    }
    delete stream;
}

// ---- the other routes --------------------------------------------------------

static void handle_models(Server *s, Reply *reply) {
    long long created = (long long)time(NULL);
    std::lock_guard<std::mutex> lock(s->adapters_mutex);
    json_reply(reply, 200, [&](FILE *f) {
        fprintf(f, "{\"object\": \"list\", \"data\": [");
        write_model_entry(f, s->base_name.c_str(), created, NULL);
        for (const auto &entry : s->adapters) {
            fprintf(f, ", ");
            write_model_entry(f, entry.first.c_str(), created, s->base_name.c_str());
        }
        fprintf(f, "]}");
    });
}

// GET /v1/models/ID (OpenAI's models.retrieve): the base's or an adapter's entry, else a 404 listing them.
static void handle_model(Server *s, const char *id, Reply *reply) {
    std::shared_ptr<LoadedAdapter> adapter;
    ApiError e;
    if (!find_adapter(s, id, &adapter, &e)) return error_reply(reply, e);
    long long created = (long long)time(NULL);
    std::string name = id, parent = adapter ? s->base_name : "";
    json_reply(reply, 200, [&](FILE *f) { write_model_entry(f, name.c_str(), created, adapter ? parent.c_str() : NULL); });
}

static void handle_load(Server *s, const char *body, size_t len, Reply *reply) {
    char err[2048];
    ApiError e;
    api_error(&e, 500, "server_error", NULL, "out of memory");
    JsonValue *json = json_parse(body, len, err, sizeof err);
    const char *name = json ? json_get_string(json, "name", NULL) : NULL, *dir = json ? json_get_string(json, "path", NULL) : NULL;
    if (!json) api_error(&e, 400, "invalid_request_error", NULL, "the body is not valid JSON: %s", err);
    else if (!name || !dir) api_error(&e, 400, "invalid_request_error", !name ? "name" : "path", "the body must be {\"name\": string, \"path\": the adapter's folder}");
    else if (server_add_adapter(s, name, dir, err, sizeof err) != 0)
        api_error(&e, strstr(err, "is in use") ? 409 : 400, "invalid_request_error", "path", "%s", err);
    else {
        // the base cannot change now: an adapter trained on another one is served, with a warning
        char warning[2048] = "";
        if (adapter_check_base(dir, &s->options.base, s->loaded_hash, s->options.model_path, warning, sizeof warning,
                               err, sizeof err) < 0)
            snprintf(warning, sizeof warning, "%s", err);
        if (warning[0]) fprintf(stderr, "serve: warning: %s\n", warning);
        std::string loaded = name;
        json_reply(reply, 200, [&](FILE *f) {
            fprintf(f, "{\"loaded\": ");
            json_write_string(f, loaded.c_str());
            if (warning[0]) {
                fprintf(f, ", \"warning\": ");
                json_write_string(f, warning);
            }
            fprintf(f, "}");
        });
    }
    json_free(json);
    if (!reply->body) error_reply(reply, e);
}

static void handle_unload(Server *s, const char *name, Reply *reply) {
    std::shared_ptr<LoadedAdapter> adapter;
    {
        std::lock_guard<std::mutex> lock(s->adapters_mutex);
        auto it = s->adapters.find(name);
        if (it != s->adapters.end()) {
            adapter = it->second;
            s->adapters.erase(it);
        }
    }
    ApiError e;
    if (!adapter) {
        std::shared_ptr<LoadedAdapter> none;
        find_adapter(s, name, &none, &e);
        if (s->base_name == name) api_error(&e, 400, "invalid_request_error", "name", "'%s' is the base model, not an adapter", name);
        return error_reply(reply, e);
    }
    fprintf(stderr, "serve: adapter %s unloaded (%.1f KiB freed when its last request ends)\n", name,
            adapter->weights.bytes / 1024.0);
    std::string unloaded = name;
    json_reply(reply, 200, [&](FILE *f) {
        fprintf(f, "{\"unloaded\": ");
        json_write_string(f, unloaded.c_str());
        fprintf(f, "}");
    });
}

static bool route_is(const char *path, const char *route) { return strcmp(path, route) == 0; }

// What follows "route/" in path (a name: /v1/adapters/NAME, /v1/models/ID), or NULL.
static const char *name_after(const char *path, const char *route) {
    size_t n = strlen(route);
    return strncmp(path, route, n) == 0 && path[n] == '/' && path[n + 1] ? path + n + 1 : NULL;
}

void server_handle(Server *s, const char *method, const char *path, const char *body, size_t body_len,
                   const ClientWatch *watch, Reply *reply) {
    memset(reply, 0, sizeof *reply);
    bool get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0, del = strcmp(method, "DELETE") == 0;
    static const char ADAPTERS[] = "/v1/adapters", MODELS[] = "/v1/models";
    const char *adapter_name = name_after(path, ADAPTERS), *model_id = name_after(path, MODELS);
    bool known = route_is(path, "/health") || route_is(path, MODELS) || route_is(path, "/v1/chat/completions") ||
                 route_is(path, "/v1/completions") || route_is(path, ADAPTERS) || adapter_name || model_id;
    if (get && route_is(path, "/health")) json_reply(reply, 200, [](FILE *f) { fprintf(f, "{\"status\": \"ok\"}"); });
    else if (get && route_is(path, MODELS)) handle_models(s, reply);
    else if (get && model_id) handle_model(s, model_id, reply);
    else if (post && route_is(path, "/v1/chat/completions")) handle_generation(s, REQUEST_CHAT, body, body_len, watch, reply);
    else if (post && route_is(path, "/v1/completions")) handle_generation(s, REQUEST_COMPLETION, body, body_len, watch, reply);
    else if (post && route_is(path, ADAPTERS)) handle_load(s, body, body_len, reply);
    else if (del && adapter_name) handle_unload(s, adapter_name, reply);
    else {
        ApiError e;
        if (known) api_error(&e, 405, "invalid_request_error", NULL, "%s does not take %s", path, method);
        else api_error(&e, 404, "not_found_error", NULL, "no route %s %s", method, path);
        error_reply(reply, e);
    }
    // a generation logs itself when it ends; the rest here, errors included
    bool generation = post && (route_is(path, "/v1/chat/completions") || route_is(path, "/v1/completions"));
    if (!generation || reply->status != 200) {
        char detail[600] = "";
        if (reply->status >= 400 && reply->body) snprintf(detail, sizeof detail, "%.*s", (int)reply->body_len, reply->body);
        log_line(method, path, reply->status, detail);
    }
}

void reply_free(Reply *reply) {
    free(reply->body);
    reply->body = NULL;
}

// ---- setting up ------------------------------------------------------------------

static std::string path_base_name(const char *path) {
    std::string p = path;
    while (p.size() > 1 && p.back() == '/') p.pop_back();
    size_t slash = p.find_last_of('/');
    return slash == std::string::npos ? p : p.substr(slash + 1);
}

Server *server_create(const ServerOptions *options, char *err, size_t err_size) {
    Server *s = new Server();
    s->options = *options;
    if (model_load(&s->model, options->model_path, err, err_size) != 0) { delete s; return NULL; }
    if (!s->model.tokenizer) {
        snprintf(err, err_size, "%s: has no tokenizer", options->model_path);
        model_free(&s->model);
        delete s;
        return NULL;
    }
    s->base_name = path_base_name(options->model_path);
    s->eos = tokenizer_eos_id(s->model.tokenizer);
    s->im_end = tokenizer_find(s->model.tokenizer, "<|im_end|>");
    return s;
}

// The base (as chosen) onto the GPU, in the 16-bit type ./train would pick there.
static int upload_base(Server *s, char *err, size_t err_size) {
    const char *precision = gpu_infer_choose_precision();
    s->gpu = gpu_model_upload(&s->model, err, err_size);
    if (!s->gpu) return -1;
    fprintf(stderr, "serve: device %s, %s: the base takes %.1f MiB of GPU memory; the workers take turns on it\n",
            gpu_device_name(), precision, gpu_model_bytes(s->gpu) / 1048576.0);
    return 0;
}

int server_start(Server *s, const char *const *adapter_dirs, int n_dirs, char *err, size_t err_size) {
    char warning[2048], description[256];
    AdapterBaseChoice *base = &s->options.base, compared = *base;
    for (int i = 0; i < n_dirs; i++) {
        AdapterBaseChoice choice = i == 0 ? *base : compared;
        int status = adapter_choose_base(adapter_dirs[i], &s->model, &choice, warning, sizeof warning, err, err_size);
        if (status < 0) return -1;
        if (warning[0]) fprintf(stderr, "serve: warning: %s\n", warning);
        if (i > 0) continue;
        // the first adapter's record decides what the options leave open; the
        // others are compared with that base, as if it had been given
        fprintf(stderr, "serve: base: %s\n", adapter_describe_base(&choice, status, description, sizeof description));
        *base = compared = choice;
        compared.quant_given = compared.double_quant_given = 1;
    }
    // with no adapter and no --quant the base stays as loaded (what adapters loaded later are compared with)
    if (n_dirs == 0 && !base->quant_given) base->quant_nf4 = 0;
    s->loaded_hash = model_weights_hash(&s->model);
    if (base->quant_nf4 && nf4_round_trip_model(&s->model, base->double_quant, err, err_size) != 0) return -1;
    if (s->options.on_gpu && upload_base(s, err, err_size) != 0) return -1;
    s->scheduler.reset(new Scheduler(s->options.workers, s->options.queue));
    if (!s->scheduler->started()) {
        snprintf(err, err_size, "--workers %d: the system cannot start that many threads (fewer, then)",
                 s->options.workers);
        return -1;
    }
    return 0;
}

static bool valid_name(const char *name) {
    size_t len = strlen(name);
    if (len == 0 || len > MAX_ADAPTER_NAME) return false;
    for (size_t i = 0; i < len; i++)
        if (!(isalnum((unsigned char)name[i]) || strchr("._-", name[i]))) return false;
    return true;
}

int server_add_adapter(Server *s, const char *name, const char *dir, char *err, size_t err_size) {
    if (!valid_name(name)) {
        snprintf(err, err_size, "adapter name '%s': use 1 to %zu letters, digits, '.', '_' or '-'", name, MAX_ADAPTER_NAME);
        return -1;
    }
    {
        std::lock_guard<std::mutex> lock(s->adapters_mutex);
        if (s->base_name == name || s->adapters.count(name)) {
            snprintf(err, err_size, "adapter name '%s' is in use", name);
            return -1;
        }
    }
    auto adapter = std::make_shared<LoadedAdapter>();
    adapter->name = name;
    adapter->dir = dir;
    if (adapter_load_peft(&s->model, dir, &adapter->weights, err, err_size) != 0) return -1;
    if (s->gpu) {
        std::lock_guard<std::mutex> lock(s->gpu_lock);
        adapter->gpu = gpu_adapter_upload(s->gpu, &adapter->weights, err, err_size);
        if (!adapter->gpu) return -1;
        adapter->gpu_lock = &s->gpu_lock;
    }
    std::lock_guard<std::mutex> lock(s->adapters_mutex);
    if (s->adapters.count(name)) {
        snprintf(err, err_size, "adapter name '%s' is in use", name);
        return -1;
    }
    s->adapters[name] = adapter;
    const AdapterWeights &w = adapter->weights;
    char on_gpu[64] = "";
    if (adapter->gpu) snprintf(on_gpu, sizeof on_gpu, " (+ %.1f KiB on the GPU)", gpu_adapter_bytes(adapter->gpu) / 1024.0);
    fprintf(stderr, "serve: adapter %s loaded from %s: %d modules, rank %d, scaling %g, %.1f KiB%s\n", name, dir,
            w.n_modules, w.rank, w.scaling, w.bytes / 1024.0, on_gpu);
    return 0;
}

void server_set_paused(Server *s, int paused) { s->scheduler->set_paused(paused != 0); }

void server_shutdown(Server *s) {
    s->stopping = true;
    if (s->scheduler) s->scheduler->shutdown();
}

void server_free(Server *s) {
    if (!s) return;
    server_shutdown(s);
    s->adapters.clear();
    gpu_model_free(s->gpu);
    model_free(&s->model);
    delete s;
}

const char *server_base_name(const Server *s) { return s->base_name.c_str(); }
