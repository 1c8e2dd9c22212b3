/* metrics: see metrics.h.
 *
 * A connection's life: accepted -> reading the request head into a fixed buffer -> answered (one
 * uv_write) -> shut down for writing -> closed when the client closes its side, or at the
 * linger timeout. The shutdown-then-wait step is there because closing a socket that still has
 * unread bytes from the client makes the kernel send RST, which can destroy the answer before
 * the client has read it. */
#include "metrics.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "config.h"
#include "log.h"
#include "prom.h"
#include "xalloc.h"

#define METRICS_BACKLOG 64
#define METRICS_LINGER_MS 2000 /* after the answer, how long to wait for the client to close */

struct metrics_conn {
    uv_tcp_t tcp;
    uv_timer_t timer; /* METRICS_TIMEOUT_MS from accept, then METRICS_LINGER_MS after answering */
    uv_write_t write_req;
    uv_shutdown_t shutdown_req;
    struct metrics *m;
    struct metrics_conn *prev, *next; /* in m->conns */
    struct buf out;                   /* the answer */
    size_t len;                       /* bytes of req received */
    int handles;                      /* handles not yet closed; freed at 0 */
    bool answered;                    /* the answer is written: later bytes are read and dropped */
    bool written;                     /* ... and its write has completed */
    bool peer_done;                   /* the client's EOF came before that */
    bool closing;
    char req[METRICS_MAX_REQUEST]; /* the request head; after the answer, a discard buffer */
};

static void on_handle_closed(uv_handle_t *h)
{
    struct metrics_conn *c = h->data;
    if (--c->handles == 0) {
        buf_free(&c->out);
        free(c);
    }
}

static void conn_close(struct metrics_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    struct metrics *m = c->m;
    if (c->prev)
        c->prev->next = c->next;
    else
        m->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    m->nconns--;
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

static void on_timeout(uv_timer_t *t)
{
    conn_close(t->data);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct metrics_conn *c = req->data;
    if (status < 0)
        conn_close(c);
    /* Otherwise wait for the client's EOF (on_read) or the linger timer. */
}

static void on_written(uv_write_t *req, int status)
{
    struct metrics_conn *c = req->data;
    if (c->closing)
        return;
    c->written = true;
    if (status == 0 && c->peer_done) {
        conn_close(c); /* nothing left unread, so the close is a plain FIN after the answer */
        return;
    }
    if (status < 0 || uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, on_timeout, METRICS_LINGER_MS, 0);
}

static void respond(struct metrics_conn *c, const char *status, const char *headers,
                    const struct buf *body, bool head_only)
{
    char head[512];
    size_t body_len = body ? body->len : 0;
    int n =
        snprintf(head, sizeof(head),
                 "HTTP/1.1 %s\r\n"
                 "Content-Type: %s\r\n"
                 "Content-Length: %zu\r\n"
                 "Connection: close\r\n"
                 "%s\r\n",
                 status,
                 body && strncmp(status, "200", 3) == 0 ? "text/plain; version=0.0.4; charset=utf-8"
                                                        : "text/plain; charset=utf-8",
                 body_len, headers);
    buf_append(&c->out, head, (size_t)n);
    if (body && !head_only)
        buf_append(&c->out, body->data, body->len);
    c->answered = true;
    uv_buf_t b = uv_buf_init((char *)c->out.data, (unsigned)c->out.len);
    c->write_req.data = c;
    c->shutdown_req.data = c;
    if (uv_write(&c->write_req, (uv_stream_t *)&c->tcp, &b, 1, on_written) < 0)
        conn_close(c);
}

static void respond_text(struct metrics_conn *c, const char *status, const char *headers,
                         const char *text, bool head_only)
{
    struct buf body;
    buf_init(&body);
    buf_append(&body, text, strlen(text));
    respond(c, status, headers, &body, head_only);
    buf_free(&body);
}

static void respond_metrics(struct metrics_conn *c, bool head_only)
{
    struct metrics *m = c->m;
    struct buf packed, body;
    buf_init(&packed);
    buf_init(&body);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &packed, buf_msgpack_write);
    m->collect(m->collect_arg, &pk);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    if (msgpack_unpack_next(&u, (const char *)packed.data, packed.len, &off) ==
        MSGPACK_UNPACK_SUCCESS)
        prom_render(&u.data, "usaged", &body);
    msgpack_unpacked_destroy(&u);
    respond(c, "200 OK", "", &body, head_only);
    buf_free(&body);
    buf_free(&packed);
}

/* The request line is METHOD SP TARGET SP HTTP/1.x; headers are read and ignored. */
static void handle_request(struct metrics_conn *c, size_t head_len)
{
    char line[512];
    size_t n = 0;
    while (n < head_len && c->req[n] != '\r' && c->req[n] != '\n')
        n++;
    if (n >= sizeof(line)) {
        respond_text(c, "400 Bad Request", "", "bad request\n", false);
        return;
    }
    memcpy(line, c->req, n);
    line[n] = '\0';
    char *method = line;
    char *target = strchr(method, ' ');
    char *version = target ? strchr(target + 1, ' ') : NULL;
    if (!target || !version || strncmp(version + 1, "HTTP/1.", 7) != 0 || target == method) {
        respond_text(c, "400 Bad Request", "", "bad request\n", false);
        return;
    }
    *target++ = '\0';
    *version = '\0';
    size_t path_len = strcspn(target, "?");
    bool head = strcmp(method, "HEAD") == 0;
    if (path_len != strlen("/metrics") || strncmp(target, "/metrics", path_len) != 0)
        respond_text(c, "404 Not Found", "", "not found; try /metrics\n", head);
    else if (strcmp(method, "GET") != 0 && !head)
        respond_text(c, "405 Method Not Allowed", "Allow: GET, HEAD\r\n", "use GET\n", false);
    else
        respond_metrics(c, head);
}

/* Where the end of the request head is (just past the blank line), or 0 when not yet. */
static size_t head_end(const char *p, size_t len)
{
    for (size_t i = 0; i + 1 < len; i++) {
        if (p[i] == '\n' && p[i + 1] == '\n')
            return i + 2;
        if (p[i] == '\n' && p[i + 1] == '\r' && i + 2 < len && p[i + 2] == '\n')
            return i + 3;
    }
    return 0;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct metrics_conn *c = h->data;
    (void)suggested;
    if (c->answered)
        *b = uv_buf_init(c->req, sizeof(c->req));
    else
        *b = uv_buf_init(c->req + c->len, (unsigned)(sizeof(c->req) - c->len));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct metrics_conn *c = s->data;
    (void)b;
    if (c->closing)
        return;
    if (nread < 0) {
        /* EOF with the answer still being written (a client that half-closes after its request):
         * finish the write first. Otherwise after the answer it is the normal end, and before it
         * there is nothing to answer. */
        if (nread == UV_EOF && c->answered && !c->written) {
            c->peer_done = true;
            uv_read_stop(s);
            return;
        }
        conn_close(c);
        return;
    }
    if (nread == 0 || c->answered)
        return;
    c->len += (size_t)nread;
    size_t end = head_end(c->req, c->len);
    if (end) {
        handle_request(c, end);
        return;
    }
    if (c->len == sizeof(c->req))
        respond_text(c, "431 Request Header Fields Too Large", "", "request too large\n", false);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct metrics *m = server->data;
    if (status < 0) {
        log_warn("metrics: accept: %s", uv_strerror(status));
        return;
    }
    struct metrics_conn *c = xcalloc(1, sizeof(*c));
    c->m = m;
    buf_init(&c->out);
    uv_tcp_init(m->loop, &c->tcp);
    uv_timer_init(m->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->handles = 2;
    c->next = m->conns;
    if (m->conns)
        m->conns->prev = c;
    m->conns = c;
    m->nconns++;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0 || m->nconns > METRICS_MAX_CONNECTIONS) {
        conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, on_timeout, METRICS_TIMEOUT_MS, 0);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0)
        conn_close(c);
}

int metrics_open(struct metrics *m, uv_loop_t *loop, const char *listen, metrics_collect_fn collect,
                 void *arg, char *err, size_t errlen)
{
    memset(m, 0, sizeof(*m));
    m->loop = loop;
    m->collect = collect;
    m->collect_arg = arg;
    char host[256];
    uint16_t port;
    if (!config_split_host_port(listen, host, sizeof(host), &port)) {
        snprintf(err, errlen, "metrics.listen: bad address %s", listen);
        return -EINVAL;
    }
    if (strcmp(host, "localhost") == 0)
        snprintf(host, sizeof(host), "127.0.0.1");
    struct sockaddr_storage ss;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0) {
        snprintf(err, errlen, "metrics.listen: %s is not a numeric IP address", host);
        return -EINVAL;
    }
    uv_tcp_init(loop, &m->server);
    m->server.data = m;
    m->open = true;
    int rc = uv_tcp_bind(&m->server, (struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&m->server, METRICS_BACKLOG, on_connection);
    if (rc < 0) {
        snprintf(err, errlen, "metrics.listen %s: %s", listen, uv_strerror(rc));
        metrics_close(m);
        return rc;
    }
    log_info("metrics endpoint on http://%s/metrics", listen);
    return 0;
}

void metrics_close(struct metrics *m)
{
    if (m->open) {
        m->open = false;
        uv_close((uv_handle_t *)&m->server, NULL);
    }
    while (m->conns)
        conn_close(m->conns);
}
