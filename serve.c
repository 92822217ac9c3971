// serve.c: ./serve, an OpenAI-compatible HTTP server for one base model and
// any number of LoRA adapters kept apart from it (multi-LoRA serving):
//   ./serve --adapter faq=out/adapter --port 8080
//   curl http://127.0.0.1:8080/v1/chat/completions -d '{"model": "faq", "messages": [...]}'
// The base is loaded once (round-tripped through NF4 when the adapters were
// trained on that, as ./generate does); each request names an adapter (or
// the base) in "model" and gets it applied unmerged, y = x W^T + s (x A^T) B^T.
// The forward runs on the GPU when there is one (--device), else on the CPU.
// Ctrl-C stops accepting, finishes the requests already in, and exits.
#include "formats/cli.h"
#include "model.h"
#include "ops/gpu.h"
#include "serving/http.h"
#include "serving/server.h"

#include <signal.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// the most --adapter options
#define MAX_ADAPTERS 64
// the defaults of --host, --port and --queue
static const char DEFAULT_HOST[] = "127.0.0.1";
static const int DEFAULT_PORT = 8080;
static const int DEFAULT_QUEUE = 16;
// the default request body limit, bytes (--max-body)
static const int DEFAULT_MAX_BODY = 1 << 20;
// the default idle time after which a connection is closed, seconds (--timeout; as llama.cpp's server)
static const int DEFAULT_IDLE_TIMEOUT = 600;

typedef struct {
    ServerOptions server;
    const char *names[MAX_ADAPTERS], *dirs[MAX_ADAPTERS];
    int n_adapters;
    const char *host;
    int port;
    int max_body;
    int idle_timeout;     // seconds; 0: never
    const char *device;   // --device: cpu, cuda or auto
} Options;

static void usage(FILE *out) {
    fprintf(out,
            "usage: ./serve [options]\n"
            "  --model PATH         GGUF file or HF model directory (default %s)\n"
            "  --adapter NAME=DIR   a LoRA adapter (peft layout, as ./train writes) served as model NAME;\n"
            "                       repeat for more. Kept apart from the base, applied per request\n"
            "  --quant Q            the base the adapters were trained on, as ./train's --quant: nf4 or none\n"
            "                       (default: the first adapter's record; else nf4; with no adapter: as loaded).\n"
            "                       Adapters loaded later (POST /v1/adapters) get this base; a record of\n"
            "                       another is answered with a warning\n"
            "  --double-quant 0|1   as ./train's --double-quant, for --quant nf4 (default: recorded; else 1)\n"
            "  --host ADDR          IPv4 address to listen on (default %s; 0.0.0.0: every interface)\n"
            "  --port N             port (default %d; 0: a free one, printed at start)\n"
            "  --workers N          generations that run at once, one sequence each (default 1)\n"
            "  --queue N            requests that may wait for a worker; more get 429 + Retry-After (default %d)\n"
            "  --max-body BYTES     the largest request body; larger get 413 (default %d)\n"
            "  --timeout S          a connection that sends nothing for S seconds while its request is read,\n"
            "                       or idles between requests, is closed (default %d; 0: never)\n"
            "  --device D           cpu, cuda or auto: cuda when a GPU is present (default auto). On the GPU\n"
            "                       the workers take turns, one forward at a time\n"
            "  -h, --help           this help\n"
            "Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models[/ID], GET /health,\n"
            "        POST /v1/adapters {\"name\": N, \"path\": DIR}, DELETE /v1/adapters/NAME\n",
            DEFAULT_MODEL, DEFAULT_HOST, DEFAULT_PORT, DEFAULT_QUEUE, DEFAULT_MAX_BODY, DEFAULT_IDLE_TIMEOUT);
}

static void usage_error(const char *message) {
    fprintf(stderr, "serve: %s\n", message);
    usage(stderr);
    exit(2);
}

// "NAME=DIR" into o's adapter list.
static void add_adapter(Options *o, const char *value) {
    const char *equals = strchr(value, '=');
    if (!equals || equals == value || !equals[1]) usage_error("--adapter expects NAME=DIR, e.g. faq=out/adapter");
    if (o->n_adapters == MAX_ADAPTERS) usage_error("too many --adapter options");
    o->names[o->n_adapters] = strndup(value, (size_t)(equals - value));
    o->dirs[o->n_adapters++] = equals + 1;
}

static int positive(const char *flag, const char *value, int low) {
    int n = cli_int("serve", flag, value);
    if (n < low) {
        fprintf(stderr, "serve: %s must be at least %d, got %d\n", flag, low, n);
        exit(2);
    }
    return n;
}

// The options but --adapter (which may repeat), checked for repeats.
static void check_repeats(int argc, char **argv, const char *const *flags) {
    char **rest = (char **)calloc((size_t)argc + 1, sizeof(char *)), err[256];
    int n = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--adapter") == 0) { i++; continue; }
        rest[n++] = argv[i];
    }
    int status = cli_check_options(n, rest, flags, NULL, NULL, err, sizeof err);
    free(rest);
    if (status != 0) usage_error(err);
}

static Options parse_args(int argc, char **argv) {
    Options o = {{DEFAULT_MODEL, {1, 1, 0, 0}, 1, DEFAULT_QUEUE, 0}, {0}, {0}, 0, DEFAULT_HOST, DEFAULT_PORT, DEFAULT_MAX_BODY,
                 DEFAULT_IDLE_TIMEOUT, "auto"};
    const char *const quant_choices[] = {"nf4", "none", NULL}, *const bit_choices[] = {"0", "1", NULL};
    const char *const flags[] = {"--model", "--adapter", "--quant", "--double-quant", "--host", "--port", "--workers",
                                 "--queue", "--max-body", "--timeout", "--device", NULL};
    char err[256];
    check_repeats(argc, argv, flags);
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        if (strcmp(flag, "--help") == 0 || strcmp(flag, "-h") == 0) { usage(stdout); exit(0); }
        int is_option = strncmp(flag, "--", 2) == 0;
        if (!is_option) snprintf(err, sizeof err, "unexpected argument %s", flag);
        const char *value = is_option ? cli_option_value(argc, argv, &i, flags, err, sizeof err) : NULL;
        if (!value) usage_error(err);
        if (strcmp(flag, "--model") == 0) o.server.model_path = cli_text("serve", flag, value);
        else if (strcmp(flag, "--adapter") == 0) add_adapter(&o, value);
        else if (strcmp(flag, "--quant") == 0) {
            o.server.base.quant_nf4 = cli_choice("serve", flag, value, quant_choices) == 0;
            o.server.base.quant_given = 1;
        } else if (strcmp(flag, "--double-quant") == 0) {
            o.server.base.double_quant = cli_choice("serve", flag, value, bit_choices);
            o.server.base.double_quant_given = 1;
        } else if (strcmp(flag, "--host") == 0) o.host = cli_text("serve", flag, value);
        else if (strcmp(flag, "--port") == 0) o.port = positive(flag, value, 0);
        else if (strcmp(flag, "--workers") == 0) o.server.workers = positive(flag, value, 1);
        else if (strcmp(flag, "--queue") == 0) o.server.queue = positive(flag, value, 0);
        else if (strcmp(flag, "--max-body") == 0) o.max_body = positive(flag, value, 1);
        else if (strcmp(flag, "--timeout") == 0) o.idle_timeout = positive(flag, value, 0);
        else if (strcmp(flag, "--device") == 0) o.device = value;
        else {
            snprintf(err, sizeof err, "unknown option %s", flag);
            usage_error(err);
        }
    }
    if (o.port > 65535) usage_error("--port must be at most 65535");
    o.server.on_gpu = gpu_device_choose(o.device, err, sizeof err);
    if (o.server.on_gpu < 0) {
        fprintf(stderr, "serve: %s\n", err);
        exit(2);
    }
    return o;
}

int main(int argc, char **argv) {
    Options o = parse_args(argc, argv);
    // Ctrl-C and SIGTERM wait for main's sigwait: blocked here, before any thread starts, in every thread
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
    // a client that hangs up mid-stream must not end the server
    signal(SIGPIPE, SIG_IGN);

    char err[2048];
    Server *server = server_create(&o.server, err, sizeof err);
    int status = server ? server_start(server, o.dirs, o.n_adapters, err, sizeof err) : -1;
    for (int i = 0; status == 0 && i < o.n_adapters; i++) status = server_add_adapter(server, o.names[i], o.dirs[i], err, sizeof err);
    int port = 0;
    HttpServer *http = status == 0 ? http_start(server, o.host, o.port, (size_t)o.max_body, o.idle_timeout, &port, err, sizeof err) : NULL;
    if (!http) {
        fprintf(stderr, "serve: %s\n", err);
        server_free(server);
        return 1;
    }
    fprintf(stderr, "serve: %s with %d adapter%s, %d worker%s, queue %d, on the %s: listening on http://%s:%d\n",
            server_base_name(server), o.n_adapters, o.n_adapters == 1 ? "" : "s", o.server.workers,
            o.server.workers == 1 ? "" : "s", o.server.queue, o.server.on_gpu ? "GPU" : "CPU", o.host, port);
    int signal_number = 0;
    sigwait(&stop_signals, &signal_number);
    fprintf(stderr, "serve: %s: finishing the requests in progress, then exiting\n", strsignal(signal_number));
    http_stop_accepting(http);
    server_shutdown(server);
    http_stop(http);
    server_free(server);
    for (int i = 0; i < o.n_adapters; i++) free((char *)o.names[i]);
    fprintf(stderr, "serve: stopped\n");
    return 0;
}
