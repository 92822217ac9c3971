// serving/server.h: ./serve's requests, answered without the HTTP layer: one
// base model in memory, LoRA adapters kept apart and chosen per request by
// its "model" field, generations run by a bounded queue of workers
// (serving/scheduler.h). serving/http.c hands every HTTP request to
// server_handle; the tests call it directly too.
//
// Routes (OpenAI's API where it has one):
//   GET    /health                 {"status": "ok"}
//   GET    /v1/models              the base and every adapter
//   POST   /v1/chat/completions    messages in the model's chat template (tokenizer.h's chat_encode)
//   POST   /v1/completions         a plain prompt
//   POST   /v1/adapters            {"name": N, "path": DIR}: load an adapter
//   DELETE /v1/adapters/NAME       unload one (requests already running keep it until they end)
#pragma once
#include <stddef.h>
#include "infer/adapter.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct Server Server;
typedef struct ServerStream ServerStream;

typedef struct {
    const char *model_path;
    AdapterBaseChoice base;   // --quant/--double-quant; what is not given comes from the first adapter's record
    int workers;              // generations that run at once
    int queue;                // generations that may wait for a worker; more get 429
    int on_gpu;               // 1: the forward on the GPU (--device cuda: infer/forward_gpu.h), one at a time
} ServerOptions;

// Loads the model once; then server_add_adapter for each --adapter (the
// first one's record, unless given, decides the base's NF4 round trip: call
// server_choose_base with every adapter dir before server_start). NULL with a message.
Server *server_create(const ServerOptions *options, char *err, size_t err_size);
// Chooses the base from the options and the adapters' records (warnings on
// stderr when they disagree), round-trips it through NF4 when chosen, uploads
// it to the GPU with on_gpu, and starts the workers. -1 with a message.
int server_start(Server *s, const char *const *adapter_dirs, int n_dirs, char *err, size_t err_size);
// Loads an adapter under name. -1 with a message (a bad name, a name in use, a bad adapter).
int server_add_adapter(Server *s, const char *name, const char *dir, char *err, size_t err_size);

// An answer: status, a whole body, or a stream of server-sent events to pull.
typedef struct {
    int status;
    char *body;                 // malloc'd (NULL with a stream)
    size_t body_len;
    const char *content_type;
    int retry_after;            // seconds, for 429 (0: no Retry-After)
    ServerStream *stream;       // non-NULL: the body comes from server_stream_read
} Reply;

// How the HTTP layer keeps track of a request's client: gone asks whether it
// hung up (polled while a whole answer is made, whose generation then stops;
// a stream's stops at server_stream_close), and a stream with no event for
// keepalive_ms sends a comment that clients skip, so that a stream waiting in
// the queue is not an idle connection.
typedef struct {
    int (*gone)(void *context);
    void *context;
    int keepalive_ms;   // <= 0: no keep-alive comments
} ClientWatch;

// Answers one request; waits for a generation to end unless it streams
// (watch: NULL, or how to tell that its client left). Never fails: errors are replies.
void server_handle(Server *s, const char *method, const char *path, const char *body, size_t body_len,
                   const ClientWatch *watch, Reply *reply);
// Frees the body (not the stream: server_stream_close does).
void reply_free(Reply *reply);
// Up to max bytes of the stream, waiting for them (or, after the watch's
// keepalive_ms without any, a keep-alive comment); 0 at its end.
size_t server_stream_read(ServerStream *stream, char *out, size_t max);
// The client is done (or gone): a generation still running stops.
void server_stream_close(ServerStream *stream);

// Workers take nothing new while paused (tests fill the queue this way).
void server_set_paused(Server *s, int paused);
// New generations are refused (503); those queued and running finish.
void server_shutdown(Server *s);
void server_free(Server *s);
// The base's name in /v1/models: its file or folder name.
const char *server_base_name(const Server *s);

#ifdef __cplusplus
}
#endif
