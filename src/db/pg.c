/* pg: see pg.h.
 *
 * The one rule: every libpq call here returns at once. PQconnectPoll, PQsendQuery*,
 * PQputCopyData, PQflush and PQconsumeInput are non-blocking with PQsetnonblocking(1); the loop
 * calls back when the socket can make progress. Cancel is the exception libpq offers no
 * non-blocking form of, so it runs on libuv's thread pool. */
#include "pg.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "resolve.h"
#include "xalloc.h"

#define BACKOFF_START_MS 100

static void pg_on_poll(uv_poll_t *poll, int status, int events);
static void pg_schedule_reconnect(struct pg_conn *pg);

const char *pg_state_name(enum pg_state state)
{
    static const char *const names[] = {"down", "connecting", "idle", "busy", "closed"};
    return names[state];
}

void pg_init(struct pg_conn *pg, uv_loop_t *loop, const char *name, const char *conninfo,
             uint32_t connect_timeout_ms, uint32_t backoff_max_ms, const struct pg_callbacks *cb,
             void *arg)
{
    memset(pg, 0, sizeof(*pg));
    pg->loop = loop;
    snprintf(pg->name, sizeof(pg->name), "%s", name);
    pg->conninfo = xstrdup(conninfo);
    pg->connect_timeout_ms = connect_timeout_ms;
    pg->backoff_max_ms = backoff_max_ms;
    pg->backoff_ms = BACKOFF_START_MS;
    pg->cb = cb;
    pg->cb_arg = arg;
    uv_timer_init(loop, &pg->timer);
    pg->timer.data = pg;
}

static void free_poll(uv_handle_t *h)
{
    free(h);
}

static void pg_set_poll(struct pg_conn *pg, int events)
{
    if (!pg->poll || events == pg->poll_events)
        return;
    pg->poll_events = events;
    if (events)
        uv_poll_start(pg->poll, events, pg_on_poll);
    else
        uv_poll_stop(pg->poll);
}

/* Releases the connection and its poll handle; the op in flight, if any, completes as lost. */
static void pg_drop(struct pg_conn *pg, const char *why)
{
    bool was_up = pg->state == PG_IDLE || pg->state == PG_BUSY;
    if (pg->poll) {
        uv_poll_stop(pg->poll);
        uv_close((uv_handle_t *)pg->poll, free_poll);
        pg->poll = NULL;
        pg->poll_events = 0;
    }
    if (pg->resolve) {
        resolve_abandon(pg->resolve);
        pg->resolve = NULL;
    }
    pg_target_free(&pg->target);
    if (pg->conn) {
        PQfinish(pg->conn);
        pg->conn = NULL;
    }
    if (pg->result) {
        PQclear(pg->result);
        pg->result = NULL;
    }
    snprintf(pg->last_error, sizeof(pg->last_error), "%s", why);
    struct pg_op *op = pg->op;
    pg->op = NULL;
    pg->state = PG_DOWN;
    if (was_up && !pg->closing)
        pg->stats.losses++;
    if (op) {
        struct pg_outcome o = {.ok = false, .connection_lost = true, .error = pg->last_error};
        op->done(pg, &o, op->arg);
    }
    if (was_up && !pg->closing && pg->cb->lost)
        pg->cb->lost(pg, pg->cb_arg);
}

static void pg_fail_connection(struct pg_conn *pg, const char *why)
{
    bool was_up = pg->state == PG_IDLE || pg->state == PG_BUSY;
    uint64_t now = uv_now(pg->loop);
    if (was_up) {
        log_warn("postgres (%s): connection lost: %s", pg->name, why);
    } else if (strcmp(why, pg->last_error) != 0 || now - pg->last_logged_ms >= 60000) {
        /* A server that stays down would otherwise fill the log at every backoff step. */
        log_warn("postgres (%s): cannot connect: %s", pg->name, why);
        pg->last_logged_ms = now;
    }
    if (!was_up)
        pg->stats.connect_failures++;
    pg_drop(pg, why);
    if (pg->state != PG_CLOSED)
        pg_schedule_reconnect(pg);
    if (!was_up && pg->state != PG_CLOSED && pg->cb->connect_failed)
        pg->cb->connect_failed(pg, pg->cb_arg);
}

static const char *conn_error(PGconn *conn)
{
    const char *msg = conn ? PQerrorMessage(conn) : "out of memory";
    return msg && *msg ? msg : "unknown error";
}

/* Trims libpq's trailing newline so that the message fits one log line. */
static void copy_message(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src);
    size_t n = strlen(dst);
    while (n > 0 && (dst[n - 1] == '\n' || dst[n - 1] == ' '))
        dst[--n] = '\0';
}

static void pg_connected(struct pg_conn *pg)
{
    PQsetnonblocking(pg->conn, 1);
    uv_timer_stop(&pg->timer);
    pg_target_free(&pg->target);
    pg->state = PG_IDLE;
    pg->backoff_ms = BACKOFF_START_MS;
    pg->stats.connects++;
    pg->last_error[0] = '\0';
    pg_set_poll(pg, UV_READABLE);
    log_info("postgres (%s): connected", pg->name);
    if (pg->cb->ready)
        pg->cb->ready(pg, pg->cb_arg);
}

static void pg_continue_connect(struct pg_conn *pg)
{
    switch (PQconnectPoll(pg->conn)) {
    case PGRES_POLLING_READING:
        pg_set_poll(pg, UV_READABLE);
        break;
    case PGRES_POLLING_WRITING:
        pg_set_poll(pg, UV_WRITABLE);
        break;
    case PGRES_POLLING_OK:
        pg_connected(pg);
        break;
    default: {
        char why[512];
        copy_message(why, sizeof(why), conn_error(pg->conn));
        pg_fail_connection(pg, why);
        break;
    }
    }
}

static void on_connect_timeout(uv_timer_t *t)
{
    struct pg_conn *pg = t->data;
    if (pg->state == PG_CONNECTING)
        pg_fail_connection(pg, "connect timeout");
}

/* Server notices (NOTICE, and the FATAL sent before a server shuts a connection) go to the log,
 * not to stderr raw as libpq's default would. */
static void pg_notice(void *arg, const char *message)
{
    struct pg_conn *pg = arg;
    char line[512];
    copy_message(line, sizeof(line), message);
    log_debug("postgres (%s): %s", pg->name, line);
}

/* The lookups are done (or none was needed): libpq connects to numbers only. */
static void pg_connect_now(struct pg_conn *pg)
{
    char why[512];
    if (pg->target.verbatim) {
        pg->conn = PQconnectStart(pg->conninfo);
    } else {
        const char **keys, **vals;
        if (!pg_target_params(&pg->target, &keys, &vals, why, sizeof(why))) {
            pg_fail_connection(pg, why);
            return;
        }
        /* Some names did not resolve, but others did: try those, and say so. */
        uint64_t now = uv_now(pg->loop);
        if (why[0] && (strcmp(why, pg->lookup_error) != 0 || now - pg->lookup_logged_ms >= 60000)) {
            log_warn("postgres (%s): %s", pg->name, why);
            snprintf(pg->lookup_error, sizeof(pg->lookup_error), "%s", why);
            pg->lookup_logged_ms = now;
        }
        pg->conn = PQconnectStartParams(keys, vals, 0);
    }
    /* The deadline starts now: a lookup has its own, the resolver's timeouts. A lookup cut short
     * by a deadline shorter than a slow resolver would never let the connection start. */
    uv_timer_start(&pg->timer, on_connect_timeout, pg->connect_timeout_ms, 0);
    if (!pg->conn || PQstatus(pg->conn) == CONNECTION_BAD) {
        copy_message(why, sizeof(why), conn_error(pg->conn));
        pg_fail_connection(pg, why);
        return;
    }
    PQsetNoticeProcessor(pg->conn, pg_notice, pg);
    int fd = PQsocket(pg->conn);
    pg->poll = xmalloc(sizeof(*pg->poll));
    if (uv_poll_init(pg->loop, pg->poll, fd) != 0) {
        free(pg->poll);
        pg->poll = NULL;
        pg_fail_connection(pg, "cannot watch the socket");
        return;
    }
    pg->poll->data = pg;
    pg->poll_events = 0;
    /* PQconnectStart leaves the first step to PQconnectPoll once the socket is writable. */
    pg_set_poll(pg, UV_WRITABLE);
}

static void pg_lookup_next(struct pg_conn *pg, size_t from);

static void on_resolved(int status, const char *const *addrs, size_t naddrs, void *arg)
{
    struct pg_conn *pg = arg;
    pg->resolve = NULL;
    pg_target_set_addrs(&pg->target, pg->lookup_host, status, addrs, naddrs);
    pg_lookup_next(pg, pg->lookup_host + 1);
}

/* Looks up the conninfo's host names one after another on the thread pool: libpq would look
 * them up itself inside PQconnectPoll, blocking the loop for as long as DNS takes. */
static void pg_lookup_next(struct pg_conn *pg, size_t from)
{
    size_t i = pg_target_next_lookup(&pg->target, from);
    if (i == pg->target.nhosts) {
        pg_connect_now(pg);
        return;
    }
    int err = 0;
    pg->lookup_host = i;
    pg->resolve = resolve_start(pg->loop, pg->target.hosts[i], false, on_resolved, pg, &err);
    if (!pg->resolve) {
        pg_target_set_addrs(&pg->target, i, err, NULL, 0);
        pg_lookup_next(pg, i + 1);
    }
}

static void pg_connect(struct pg_conn *pg)
{
    pg->state = PG_CONNECTING;
    const struct pg_env env = {getenv("PGHOST"), getenv("PGHOSTADDR"), getenv("PGPORT"),
                               getenv("PGSERVICE")};
    char why[512];
    if (!pg_target_parse(&pg->target, pg->conninfo, &env, why, sizeof(why))) {
        pg_fail_connection(pg, why);
        return;
    }
    pg_lookup_next(pg, 0);
}

static void on_reconnect_timer(uv_timer_t *t)
{
    struct pg_conn *pg = t->data;
    if (pg->state == PG_DOWN)
        pg_connect(pg);
}

static void pg_schedule_reconnect(struct pg_conn *pg)
{
    uint32_t delay = pg->backoff_ms;
    pg->backoff_ms =
        pg->backoff_ms * 2 > pg->backoff_max_ms ? pg->backoff_max_ms : pg->backoff_ms * 2;
    uv_timer_start(&pg->timer, on_reconnect_timer, delay, 0);
}

void pg_start(struct pg_conn *pg)
{
    if (pg->state == PG_DOWN)
        pg_connect(pg);
}

void pg_reset(struct pg_conn *pg, const char *why)
{
    if (pg->state == PG_CLOSED || pg->state == PG_DOWN)
        return;
    pg_fail_connection(pg, why);
}

/* ---- operations ---- */

static void pg_deliver_notifications(struct pg_conn *pg)
{
    PGnotify *n;
    while (pg->conn && (n = PQnotifies(pg->conn)) != NULL) {
        if (pg->cb->notify)
            pg->cb->notify(pg, n->relname, n->extra, pg->cb_arg);
        PQfreemem(n);
    }
}

static void pg_finish_op(struct pg_conn *pg)
{
    struct pg_op *op = pg->op;
    pg->op = NULL;
    pg->state = PG_IDLE;
    pg->stats.ops++;
    if (pg->failed)
        pg->stats.op_errors++;
    struct pg_outcome o = {
        .ok = !pg->failed,
        .connection_lost = false,
        .result = pg->result,
        .error = pg->failed ? pg->error : NULL,
    };
    memcpy(o.sqlstate, pg->sqlstate, sizeof(o.sqlstate));
    pg_set_poll(pg, UV_READABLE);
    op->done(pg, &o, op->arg);
    if (pg->result) {
        PQclear(pg->result);
        pg->result = NULL;
    }
    /* Reading the op's results may have parsed notifications that came in the same packets:
     * the socket has nothing more to say about them, so hand them over now. */
    pg_deliver_notifications(pg);
    if (pg->state == PG_IDLE && pg->cb->ready)
        pg->cb->ready(pg, pg->cb_arg);
}

static void pg_note_error(struct pg_conn *pg, const PGresult *r)
{
    if (pg->failed)
        return;
    pg->failed = true;
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    snprintf(pg->sqlstate, sizeof(pg->sqlstate), "%s", state ? state : "");
    copy_message(pg->error, sizeof(pg->error), PQresultErrorMessage(r));
}

/* A COPY call that failed: a dead connection, or the server ended the COPY early with an error
 * (which then arrives as a result). Returns false for the first. */
static bool pg_copy_failure_is_server_side(struct pg_conn *pg)
{
    if (PQstatus(pg->conn) != CONNECTION_OK)
        return false;
    pg->copy_done = true;
    return true;
}

/* Streams COPY data while libpq takes it. Returns false when the connection failed. */
static bool pg_push_copy(struct pg_conn *pg)
{
    struct pg_op *op = pg->op;
    const size_t chunk = 256 * 1024;
    while (pg->copy_buf < op->copy_nbufs) {
        const uv_buf_t *b = &op->copy_bufs[pg->copy_buf];
        if (pg->copy_off == b->len) {
            pg->copy_buf++;
            pg->copy_off = 0;
            continue;
        }
        size_t n = b->len - pg->copy_off;
        if (n > chunk)
            n = chunk;
        int r = PQputCopyData(pg->conn, b->base + pg->copy_off, (int)n);
        if (r < 0)
            return pg_copy_failure_is_server_side(pg);
        if (r == 0)
            return true; /* libpq's buffer is full: wait until the socket drains */
        pg->copy_off += n;
    }
    if (!pg->copy_done) {
        int r = PQputCopyEnd(pg->conn, NULL);
        if (r < 0)
            return pg_copy_failure_is_server_side(pg);
        if (r == 1)
            pg->copy_done = true;
    }
    return true;
}

/* Collects results while libpq has them; completes the op when the last has come. */
static void pg_drain_results(struct pg_conn *pg)
{
    for (;;) {
        if (PQisBusy(pg->conn))
            return;
        PGresult *r = PQgetResult(pg->conn);
        if (!r) {
            pg_finish_op(pg);
            return;
        }
        switch (PQresultStatus(r)) {
        case PGRES_COPY_IN:
            PQclear(r);
            pg->copy_started = true;
            if (!pg_push_copy(pg)) {
                char why[512];
                copy_message(why, sizeof(why), conn_error(pg->conn));
                pg_fail_connection(pg, why);
                return;
            }
            /* Results continue after the copy ends; flush and wait for them. */
            pg_set_poll(pg, UV_READABLE | UV_WRITABLE);
            return;
        case PGRES_COMMAND_OK:
        case PGRES_TUPLES_OK:
            if (pg->result)
                PQclear(pg->result);
            pg->result = r;
            break;
        case PGRES_FATAL_ERROR:
        case PGRES_NONFATAL_ERROR:
        case PGRES_BAD_RESPONSE:
            pg_note_error(pg, r);
            PQclear(r);
            break;
        default:
            PQclear(r);
            break;
        }
    }
}

static void pg_on_poll(uv_poll_t *poll, int status, int events)
{
    struct pg_conn *pg = poll->data;
    if (pg->poll != poll)
        return;
    if (status < 0) {
        pg_fail_connection(pg, uv_strerror(status));
        return;
    }
    if (pg->state == PG_CONNECTING) {
        pg_continue_connect(pg);
        return;
    }
    if (events & UV_READABLE) {
        if (!PQconsumeInput(pg->conn)) {
            char why[512];
            copy_message(why, sizeof(why), conn_error(pg->conn));
            pg_fail_connection(pg, why);
            return;
        }
        pg_deliver_notifications(pg);
    }
    if (pg->state != PG_BUSY)
        return;
    bool copying = pg->copy_started && !pg->copy_done;
    if (copying && (events & UV_WRITABLE)) {
        if (!pg_push_copy(pg)) {
            char why[512];
            copy_message(why, sizeof(why), conn_error(pg->conn));
            pg_fail_connection(pg, why);
            return;
        }
    }
    int f = PQflush(pg->conn);
    if (f < 0) {
        char why[512];
        copy_message(why, sizeof(why), conn_error(pg->conn));
        pg_fail_connection(pg, why);
        return;
    }
    copying = pg->copy_started && !pg->copy_done;
    pg_set_poll(pg, UV_READABLE | (f == 1 || copying ? UV_WRITABLE : 0));
    if (!copying)
        pg_drain_results(pg);
}

int pg_submit(struct pg_conn *pg, struct pg_op *op)
{
    if (pg->state != PG_IDLE)
        return pg->state == PG_BUSY ? -EBUSY : -ENOTCONN;
    int sent = op->nparams > 0 ? PQsendQueryParams(pg->conn, op->sql, op->nparams, NULL, op->params,
                                                   op->param_lengths, op->param_formats, 0)
                               : PQsendQuery(pg->conn, op->sql);
    pg->op = op;
    pg->state = PG_BUSY;
    pg->copy_buf = 0;
    pg->copy_off = 0;
    pg->copy_started = false;
    pg->copy_done = false;
    pg->failed = false;
    pg->sqlstate[0] = '\0';
    pg->error[0] = '\0';
    if (!sent) {
        char why[512];
        copy_message(why, sizeof(why), conn_error(pg->conn));
        pg_fail_connection(pg, why);
        return 0; /* op->done has run with connection_lost */
    }
    int f = PQflush(pg->conn);
    pg_set_poll(pg, UV_READABLE | (f != 0 ? UV_WRITABLE : 0));
    return 0;
}

/* ---- cancel, on the thread pool ---- */

struct pg_cancel_work {
    uv_work_t work;
    PGcancel *cancel;
    char name[24];
    char error[256];
    int ok;
};

static void cancel_run(uv_work_t *w)
{
    struct pg_cancel_work *c = w->data;
    c->ok = PQcancel(c->cancel, c->error, sizeof(c->error));
}

static void cancel_done(uv_work_t *w, int status)
{
    struct pg_cancel_work *c = w->data;
    if (!c->ok)
        log_warn("postgres (%s): cancel failed: %s", c->name, c->error);
    PQfreeCancel(c->cancel);
    free(c);
    (void)status;
}

void pg_cancel(struct pg_conn *pg)
{
    if (pg->state != PG_BUSY || !pg->conn)
        return;
    PGcancel *cancel = PQgetCancel(pg->conn);
    if (!cancel)
        return;
    struct pg_cancel_work *c = xcalloc(1, sizeof(*c));
    c->cancel = cancel;
    snprintf(c->name, sizeof(c->name), "%s", pg->name);
    c->work.data = c;
    if (uv_queue_work(pg->loop, &c->work, cancel_run, cancel_done) != 0) {
        PQfreeCancel(cancel);
        free(c);
    }
}

/* ---- close ---- */

static void on_timer_closed(uv_handle_t *h)
{
    struct pg_conn *pg = h->data;
    free(pg->conninfo);
    pg->conninfo = NULL;
    if (pg->on_closed)
        pg->on_closed(pg);
}

void pg_close(struct pg_conn *pg, void (*on_closed)(struct pg_conn *pg))
{
    if (pg->state == PG_CLOSED || pg->closing)
        return;
    /* Marked first: the callbacks pg_drop runs (an op completing as lost) may call here again. */
    pg->closing = true;
    pg->on_closed = on_closed;
    pg_drop(pg, "closing");
    pg->state = PG_CLOSED;
    uv_timer_stop(&pg->timer);
    uv_close((uv_handle_t *)&pg->timer, on_timer_closed);
}

bool pg_quote_qualified(PGconn *conn, const char *name, char *out, size_t outlen)
{
    const char *dot = strchr(name, '.');
    if (!dot)
        return false;
    char *schema = PQescapeIdentifier(conn, name, (size_t)(dot - name));
    char *rel = PQescapeIdentifier(conn, dot + 1, strlen(dot + 1));
    bool ok = schema && rel && (size_t)snprintf(out, outlen, "%s.%s", schema, rel) < outlen;
    PQfreemem(schema);
    PQfreemem(rel);
    return ok;
}

void pg_outcome_describe(const struct pg_outcome *o, char *out, size_t outlen)
{
    const char *msg = o->error ? o->error : "unknown error";
    /* libpq prefixes the severity ("ERROR:  "); the SQLSTATE already says it is one. */
    if (!o->connection_lost && strncmp(msg, "ERROR:  ", 8) == 0)
        msg += 8;
    if (o->connection_lost)
        snprintf(out, outlen, "connection lost: %s", msg);
    else if (o->sqlstate[0])
        snprintf(out, outlen, "%s: %s", o->sqlstate, msg);
    else
        snprintf(out, outlen, "%s", msg);
}
