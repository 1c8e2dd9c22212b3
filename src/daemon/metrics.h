/* metrics: the Prometheus scrape endpoint (metrics.listen), a tiny HTTP/1.1 server on the loop.
 *
 * GET (or HEAD) /metrics answers 200 with the stats map in the text exposition format (prom.h);
 * another path gets 404, another method on /metrics 405, a malformed request 400, a request head
 * over METRICS_MAX_REQUEST bytes 431. One request per connection: the answer says
 * "Connection: close" and the connection closes after it. It never blocks the loop: reads and
 * writes are libuv's, a connection that has not finished within METRICS_TIMEOUT_MS is closed, and
 * at most METRICS_MAX_CONNECTIONS are open at once (more are closed on accept). No
 * authentication: bind it to loopback or a private address. */
#ifndef USAGED_METRICS_H
#define USAGED_METRICS_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define METRICS_MAX_REQUEST 8192   /* bytes of a request head */
#define METRICS_TIMEOUT_MS 10000   /* whole life of one connection */
#define METRICS_MAX_CONNECTIONS 64 /* open at once */

/* Packs the stats map to expose. */
typedef void (*metrics_collect_fn)(void *arg, msgpack_packer *pk);

struct metrics_conn;

struct metrics {
    uv_loop_t *loop;
    uv_tcp_t server;
    bool open; /* the server handle is open */
    metrics_collect_fn collect;
    void *collect_arg;
    struct metrics_conn *conns; /* open connections */
    uint32_t nconns;
};

/* Listens on `listen` ("host:port", numeric host or localhost). Returns 0, or a negative errno
 * with err saying what failed. */
int metrics_open(struct metrics *m, uv_loop_t *loop, const char *listen, metrics_collect_fn collect,
                 void *arg, char *err, size_t errlen);
/* Closes the server and every open connection. */
void metrics_close(struct metrics *m);

#endif
