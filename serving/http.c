// serving/http.c: the HTTP layer on libmicrohttpd (see serving/http.h).
#include "serving/http.h"
#include "formats/json.h"
#include "serving/request.h"
#include "serving/response.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

// bytes a streamed reply is read in
static const size_t STREAM_BLOCK = 4096;
// connections open at once; beyond, the server still answers, with 429, from the queue
static const unsigned CONNECTION_LIMIT = 256;
// the longest a stream stays silent before a keep-alive comment, ms (less with a short --timeout)
static const int STREAM_KEEPALIVE_MS = 15000;

struct HttpServer {
    struct MHD_Daemon *daemon;
    Server *server;
    size_t max_body;
    int keepalive_ms;   // a silent stream's keep-alive period: within the idle timeout
    int listen_fd;
};

// One request's body as it arrives.
typedef struct {
    char *data;
    size_t len;
    int too_large;
} Upload;

static ssize_t read_stream(void *stream, uint64_t pos, char *out, size_t max) {
    size_t n = server_stream_read((ServerStream *)stream, out, max);
    return n > 0 ? (ssize_t)n : MHD_CONTENT_READER_END_OF_STREAM;
}

static void close_stream(void *stream) { server_stream_close((ServerStream *)stream); }

static enum MHD_Result send_reply(struct MHD_Connection *connection, Reply *reply) {
    struct MHD_Response *response =
        reply->stream ? MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK, read_stream, reply->stream, close_stream)
                      : MHD_create_response_from_buffer(reply->body_len, reply->body, MHD_RESPMEM_MUST_FREE);
    if (!response) {
        if (reply->stream) server_stream_close(reply->stream);
        reply_free(reply);
        return MHD_NO;
    }
    MHD_add_response_header(response, "Content-Type", reply->content_type);
    if (reply->stream) MHD_add_response_header(response, "Cache-Control", "no-cache");
    if (reply->retry_after > 0) {
        char seconds[16];
        snprintf(seconds, sizeof seconds, "%d", reply->retry_after);
        MHD_add_response_header(response, "Retry-After", seconds);
    }
    enum MHD_Result queued = MHD_queue_response(connection, (unsigned)reply->status, response);
    MHD_destroy_response(response);
    return queued;
}

// 413 in OpenAI's error shape, naming the limit.
static enum MHD_Result too_large(struct MHD_Connection *connection, size_t max_body) {
    ApiError e;
    api_error(&e, 413, "invalid_request_error", NULL, "the request body is larger than this server's limit of %zu bytes (--max-body)",
              max_body);
    Reply reply = {0};
    FILE *f = open_memstream(&reply.body, &reply.body_len);
    if (!f) return MHD_NO;
    write_error(f, &e);
    fclose(f);
    reply.status = 413;
    reply.content_type = "application/json";
    fprintf(stderr, "serve: %s\n", e.message);
    return send_reply(connection, &reply);
}

// A client is gone when its end of the connection is closed (a read would
// return 0) or reset. Asked while a whole answer is made: with a thread per
// connection nothing else reads the socket meanwhile. (A client that shuts
// down its sending side and still waits for the answer reads as gone.)
static int client_gone(void *context) {
    int fd = *(const int *)context;
    if (fd < 0) return 0;
    char byte;
    ssize_t n = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

// Called first with no data (the headers are in), then with each piece of
// the body, then with none left: the request is complete.
static enum MHD_Result on_request(void *cls, struct MHD_Connection *connection, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **request_state) {
    HttpServer *h = (HttpServer *)cls;
    Upload *upload = (Upload *)*request_state;
    if (!upload) {
        upload = (Upload *)calloc(1, sizeof *upload);
        if (!upload) return MHD_NO;
        *request_state = upload;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        // past the limit the rest is read and dropped, to answer 413
        if (!upload->too_large && upload->len + *upload_data_size > h->max_body) {
            upload->too_large = 1;
            free(upload->data);
            upload->data = NULL;
        }
        if (!upload->too_large) {
            char *grown = (char *)realloc(upload->data, upload->len + *upload_data_size + 1);
            if (!grown) return MHD_NO;
            memcpy(grown + upload->len, upload_data, *upload_data_size);
            upload->data = grown;
            upload->len += *upload_data_size;
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (upload->too_large) return too_large(connection, h->max_body);
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
    int fd = info ? info->connect_fd : -1;
    ClientWatch watch = {client_gone, &fd, h->keepalive_ms};
    Reply reply;
    server_handle(h->server, method, url, upload->data ? upload->data : "", upload->len, &watch, &reply);
    return send_reply(connection, &reply);
}

static void on_completed(void *cls, struct MHD_Connection *connection, void **request_state,
                         enum MHD_RequestTerminationCode code) {
    Upload *upload = (Upload *)*request_state;
    if (!upload) return;
    free(upload->data);
    free(upload);
    *request_state = NULL;
}

HttpServer *http_start(Server *server, const char *host, int port, size_t max_body, int idle_timeout, int *bound_port,
                       char *err, size_t err_size) {
    struct sockaddr_in address;
    memset(&address, 0, sizeof address);
    address.sin_family = AF_INET;
    address.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &address.sin_addr) != 1) {
        snprintf(err, err_size, "--host %s: not an IPv4 address (e.g. 127.0.0.1, or 0.0.0.0 for every interface)", host);
        return NULL;
    }
    HttpServer *h = (HttpServer *)calloc(1, sizeof *h);
    if (!h) { snprintf(err, err_size, "out of memory"); return NULL; }
    h->server = server;
    h->max_body = max_body;
    // half the idle timeout: a keep-alive always comes before it
    h->keepalive_ms = idle_timeout > 0 && idle_timeout < STREAM_KEEPALIVE_MS / 500 ? idle_timeout * 500 : STREAM_KEEPALIVE_MS;
    h->listen_fd = -1;
    h->daemon = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC |
                                     MHD_USE_ERROR_LOG,
                                 (uint16_t)port, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR, &address,
                                 MHD_OPTION_CONNECTION_LIMIT, CONNECTION_LIMIT, MHD_OPTION_CONNECTION_TIMEOUT,
                                 (unsigned)idle_timeout, MHD_OPTION_NOTIFY_COMPLETED,
                                 on_completed, h, MHD_OPTION_END);
    if (!h->daemon) {
        snprintf(err, err_size, "cannot listen on %s:%d (in use, or not an address of this machine?)", host, port);
        free(h);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    *bound_port = info ? info->port : port;
    return h;
}

void http_stop_accepting(HttpServer *h) {
    if (h->listen_fd < 0) h->listen_fd = MHD_quiesce_daemon(h->daemon);
}

void http_stop(HttpServer *h) {
    MHD_stop_daemon(h->daemon);
    if (h->listen_fd >= 0) close(h->listen_fd);
    free(h);
}
