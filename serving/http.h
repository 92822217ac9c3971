// serving/http.h: ./serve's HTTP layer: libmicrohttpd (Debian's
// libmicrohttpd-dev, fetched by `make` when missing) with a thread per
// connection; each request's body is gathered (up to a limit: 413 beyond)
// and handed to server_handle, whose reply is sent whole or, for a stream,
// as chunked server-sent events pulled from server_stream_read.
#pragma once
#include <stddef.h>
#include "serving/server.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct HttpServer HttpServer;

// Listens on host (an IPv4 address) and port (0: a free one, written to
// *bound_port); a connection silent for idle_timeout seconds (0: never) while
// a request arrives or between requests is closed. NULL with a message.
HttpServer *http_start(Server *server, const char *host, int port, size_t max_body, int idle_timeout, int *bound_port,
                       char *err, size_t err_size);
// Stops accepting connections; those open go on.
void http_stop_accepting(HttpServer *h);
// Waits for the open connections to end, and frees h.
void http_stop(HttpServer *h);

#ifdef __cplusplus
}
#endif
