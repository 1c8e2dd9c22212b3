/* redis: see redis.h.
 *
 * A call lives until hiredis hands its reply back (or frees it on disconnect), because hiredis
 * holds its pointer; whether the caller was already answered (by the deadline) is a flag on it.
 * Calls waiting for an answer sit in a list in issue order; one timer watches the oldest
 * deadline, which is enough because calls are issued with the same timeout, so deadlines come
 * in issue order (after a reload that shortens the timeout, a few calls may be answered late by
 * the difference, never early). */
#include "redis.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "xalloc.h"

#define BACKOFF_START_MS 50

/* ---- the event hooks hiredis asks for, on a uv_poll handle ----
 *
 * hiredis ships an adapter for libuv, but it restarts the poll handle at every command and
 * every read (an epoll_ctl each time, most of them failing: 5% of the daemon's time per check in
 * bench/RESULTS.md) and leaks its state when the handle cannot be made. This one touches the
 * handle only when the set of events it waits for changes. */
struct redis_events {
    redisAsyncContext *ac; /* NULL once hiredis has let go of it */
    uv_poll_t poll;
    int events; /* UV_READABLE | UV_WRITABLE the handle is started with */
};

static void events_on_poll(uv_poll_t *handle, int status, int events)
{
    struct redis_events *e = handle->data;
    /* On an error, a read lets hiredis see it and disconnect the right way. */
    if (status < 0)
        events = UV_READABLE;
    if (e->ac && (events & UV_READABLE))
        redisAsyncHandleRead(e->ac);
    if (e->ac && (events & UV_WRITABLE))
        redisAsyncHandleWrite(e->ac);
}

static void events_set(struct redis_events *e, int events)
{
    if (events == e->events)
        return;
    e->events = events;
    if (events)
        uv_poll_start(&e->poll, events, events_on_poll);
    else
        uv_poll_stop(&e->poll);
}

static void events_add_read(void *arg)
{
    struct redis_events *e = arg;
    events_set(e, e->events | UV_READABLE);
}

static void events_del_read(void *arg)
{
    struct redis_events *e = arg;
    events_set(e, e->events & ~UV_READABLE);
}

static void events_add_write(void *arg)
{
    struct redis_events *e = arg;
    events_set(e, e->events | UV_WRITABLE);
}

static void events_del_write(void *arg)
{
    struct redis_events *e = arg;
    events_set(e, e->events & ~UV_WRITABLE);
}

static void events_free(uv_handle_t *handle)
{
    free(handle->data);
}

static void events_cleanup(void *arg)
{
    struct redis_events *e = arg;
    e->ac = NULL; /* hiredis is freeing the context */
    uv_close((uv_handle_t *)&e->poll, events_free);
}

static int events_attach(redisAsyncContext *ac, uv_loop_t *loop)
{
    struct redis_events *e = xcalloc(1, sizeof(*e));
    if (uv_poll_init(loop, &e->poll, ac->c.fd) != 0) {
        free(e);
        return -1;
    }
    e->ac = ac;
    e->poll.data = e;
    ac->ev.data = e;
    ac->ev.addRead = events_add_read;
    ac->ev.delRead = events_del_read;
    ac->ev.addWrite = events_add_write;
    ac->ev.delWrite = events_del_write;
    ac->ev.cleanup = events_cleanup;
    return 0;
}

/* Appends one command in the Redis protocol (RESP): *argc, then $len and the bytes of each. The
 * room for all of it is reserved once: a check's script call has thousands of arguments. */
static void format_command(struct buf *out, int argc, const char *const *argv, const size_t *lens)
{
    size_t need = 24;
    for (int i = 0; i < argc; i++)
        need += lens[i] + 25; /* "$" 20 digits "\r\n" ... "\r\n" */
    char *start = (char *)buf_reserve(out, need);
    char *p = start;
    *p++ = '*';
    p += fmt_u64(p, (uint64_t)argc);
    *p++ = '\r';
    *p++ = '\n';
    for (int i = 0; i < argc; i++) {
        *p++ = '$';
        p += fmt_u64(p, lens[i]);
        *p++ = '\r';
        *p++ = '\n';
        memcpy(p, argv[i], lens[i]);
        p += lens[i];
        *p++ = '\r';
        *p++ = '\n';
    }
    out->len += (size_t)(p - start);
}

struct redis_call {
    struct redis_client *r;
    redis_reply_fn cb;
    void *arg;
    uint64_t deadline_ms; /* loop time */
    uint64_t sent_ms;     /* loop time */
    uint64_t sent_us;
    bool answered; /* cb has run */
    bool linked;   /* in r->calls */
    struct redis_call *prev, *next;
    int argc; /* of argv, kept for a retry with EVAL */
    const char **argv;
    size_t *arg_lens;
};

static void redis_connect(struct redis_client *r);

void redis_init(struct redis_client *r, uv_loop_t *loop, const char *address, const char *script,
                uint32_t connect_timeout_ms, uint32_t backoff_max_ms,
                void (*on_state)(struct redis_client *r, bool up, void *arg), void *arg)
{
    memset(r, 0, sizeof(*r));
    r->loop = loop;
    r->address = xstrdup(address);
    r->script = xstrdup(script);
    r->connect_timeout_ms = connect_timeout_ms;
    r->backoff_max_ms = backoff_max_ms;
    r->backoff_ms = BACKOFF_START_MS;
    r->on_state = on_state;
    r->state_arg = arg;
    uv_timer_init(loop, &r->reconnect_timer);
    r->reconnect_timer.data = r;
    uv_timer_init(loop, &r->deadline_timer);
    r->deadline_timer.data = r;
    buf_init(&r->command);
}

/* ---- calls ---- */

static void call_unlink(struct redis_client *r, struct redis_call *c)
{
    if (!c->linked)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        r->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        r->calls_tail = c->prev;
    c->prev = c->next = NULL;
    c->linked = false;
}

static void call_answer(struct redis_call *c, enum redis_status status, const redisReply *reply)
{
    if (c->answered)
        return;
    c->answered = true;
    call_unlink(c->r, c);
    c->cb(status, reply, c->arg);
}

static void call_free(struct redis_call *c)
{
    free(c);
}

static void on_deadline(uv_timer_t *t);

static void arm_deadline(struct redis_client *r)
{
    if (!r->calls || uv_is_active((uv_handle_t *)&r->deadline_timer))
        return;
    uint64_t now = uv_now(r->loop);
    uint64_t due = r->calls->deadline_ms > now ? r->calls->deadline_ms - now : 0;
    uv_timer_start(&r->deadline_timer, on_deadline, due, 0);
}

/* Answers every call whose deadline has passed, oldest first. */
/* Answers every call whose deadline has passed, oldest first. Returns true when one of them was
 * sent before the last reply arrived, i.e. Redis has answered nothing since: it is stalled. */
static bool check_deadlines(struct redis_client *r)
{
    uint64_t now = uv_now(r->loop);
    bool stalled = false;
    while (r->calls && r->calls->deadline_ms <= now) {
        r->stats.timeouts++;
        if (r->calls->sent_ms >= r->last_reply_ms)
            stalled = true;
        call_answer(r->calls, REDIS_CALL_TIMEOUT, NULL);
    }
    return stalled;
}

static void redis_drop(struct redis_client *r, const char *why);

static void on_deadline(uv_timer_t *t)
{
    struct redis_client *r = t->data;
    if (check_deadlines(r) && r->connected) {
        /* No answer to anything for a whole timeout: a stopped server or a silent partition.
         * Keeping the connection would make every check wait out the timeout and pile calls up
         * in hiredis; drop it, answer fast (degraded) while down, and reconnect. */
        redis_drop(r, "no answer within the timeout");
    }
    arm_deadline(r);
}

static void record_latency(struct redis_client *r, const struct redis_call *c)
{
    uint64_t us = uv_hrtime() / 1000 - c->sent_us;
    r->stats.latency_us_total += us;
    unsigned b = 0;
    while (b < 23 && (1ULL << b) <= us)
        b++;
    r->stats.latency_buckets[b]++;
}

static void send_call(struct redis_client *r, struct redis_call *c, bool with_source);

static void on_reply(redisAsyncContext *ac, void *reply_ptr, void *privdata)
{
    (void)ac;
    struct redis_call *c = privdata;
    struct redis_client *r = c->r;
    redisReply *reply = reply_ptr;
    if (!reply) {
        /* hiredis is freeing the connection: the call never got its answer. */
        call_answer(c, REDIS_CALL_DOWN, NULL);
        call_free(c);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "NOSCRIPT", 8) == 0 &&
        !c->answered && r->ac) {
        /* The server lost its script cache (restart, SCRIPT FLUSH): run the source itself. */
        r->stats.noscript++;
        send_call(r, c, true);
        return;
    }
    r->last_reply_ms = uv_now(r->loop);
    if (!c->answered)
        record_latency(r, c);
    call_answer(c, REDIS_CALL_OK, reply);
    call_free(c);
}

static void send_call(struct redis_client *r, struct redis_call *c, bool with_source)
{
    /* argv[0] is EVALSHA or EVAL, argv[1] the sha or the source; the rest is the caller's. */
    c->argv[0] = with_source ? "EVAL" : "EVALSHA";
    c->arg_lens[0] = with_source ? 4 : 7;
    c->argv[1] = with_source ? r->script : r->script_sha;
    c->arg_lens[1] = strlen(c->argv[1]);
    /* Formatted here, into a buffer the client reuses: hiredis's own formatting allocates and
     * was a quarter of the daemon's work per check. */
    buf_clear(&r->command);
    format_command(&r->command, c->argc, c->argv, c->arg_lens);
    if (redisAsyncFormattedCommand(r->ac, on_reply, c, (const char *)r->command.data,
                                   r->command.len) != REDIS_OK) {
        call_answer(c, REDIS_CALL_DOWN, NULL);
        call_free(c);
    }
}

void redis_eval(struct redis_client *r, int numkeys, int argc, const char *const *argv,
                const size_t *arg_lens, uint32_t timeout_ms, redis_reply_fn cb, void *arg)
{
    if (!r->connected || !r->ac) {
        cb(REDIS_CALL_DOWN, NULL, arg);
        return;
    }
    /* One allocation holds the call and copies of its arguments, which a NOSCRIPT retry needs
     * after the caller's buffers are gone. Layout: call, argv[], lens[], then the bytes. */
    int total = argc + 3; /* EVALSHA sha numkeys args... */
    char nk[16];
    size_t nk_len = fmt_u64(nk, (uint64_t)numkeys);
    size_t bytes = nk_len;
    for (int i = 0; i < argc; i++)
        bytes += arg_lens[i];
    struct redis_call *c =
        xmalloc(sizeof(*c) + (size_t)total * (sizeof(char *) + sizeof(size_t)) + bytes);
    memset(c, 0, sizeof(*c));
    c->r = r;
    c->cb = cb;
    c->arg = arg;
    c->argc = total;
    c->argv = (const char **)(c + 1);
    c->arg_lens = (size_t *)(c->argv + total);
    char *p = (char *)(c->arg_lens + total);
    memcpy(p, nk, nk_len);
    c->argv[2] = p;
    c->arg_lens[2] = nk_len;
    p += nk_len;
    for (int i = 0; i < argc; i++) {
        memcpy(p, argv[i], arg_lens[i]);
        c->argv[3 + i] = p;
        c->arg_lens[3 + i] = arg_lens[i];
        p += arg_lens[i];
    }
    c->sent_ms = uv_now(r->loop);
    c->deadline_ms = c->sent_ms + timeout_ms;
    c->sent_us = uv_hrtime() / 1000;
    c->linked = true;
    c->prev = r->calls_tail;
    if (r->calls_tail)
        r->calls_tail->next = c;
    else
        r->calls = c;
    r->calls_tail = c;
    r->stats.commands++;
    arm_deadline(r);
    send_call(r, c, false);
}

/* ---- connection ---- */

static void redis_schedule_reconnect(struct redis_client *r);

static void redis_fail(struct redis_client *r, const char *why, bool was_up)
{
    uint64_t now = uv_now(r->loop);
    if (was_up) {
        log_warn("redis: connection lost: %s", why);
    } else if (strcmp(why, r->last_error) != 0 || now - r->last_logged_ms >= 60000) {
        log_warn("redis: cannot connect to %s: %s", r->address, why);
        r->last_logged_ms = now;
    }
    snprintf(r->last_error, sizeof(r->last_error), "%s", why);
    if (!was_up) {
        r->stats.connect_failures++;
        r->addr_next++;
    }
    r->connected = false;
    r->connecting = false;
    if (r->on_state)
        r->on_state(r, false, r->state_arg);
    if (!r->closing)
        redis_schedule_reconnect(r);
}

/* Frees the context (never from inside a hiredis callback: from timers only) and goes through
 * the failure path once: hiredis's own disconnect callback, which the free may run, stands
 * aside meanwhile. Calls in flight are answered REDIS_CALL_DOWN by the free. */
static void redis_drop(struct redis_client *r, const char *why)
{
    redisAsyncContext *ac = r->ac;
    bool was_up = r->connected;
    r->ac = NULL;
    r->connecting = false;
    r->connected = false;
    if (r->resolve) {
        resolve_abandon(r->resolve);
        r->resolve = NULL;
    }
    if (ac) {
        r->freeing = true;
        redisAsyncFree(ac);
        r->freeing = false;
    }
    redis_fail(r, why, was_up);
}

static void on_reconnect_timer(uv_timer_t *t)
{
    struct redis_client *r = t->data;
    if (r->connecting) {
        /* The connect (or the script load) has not finished in time: give up on this one. */
        redis_drop(r, "connect timeout");
        return;
    }
    if (!r->ac && !r->closing)
        redis_connect(r);
}

static void redis_schedule_reconnect(struct redis_client *r)
{
    uint32_t delay = r->backoff_ms;
    r->backoff_ms = r->backoff_ms * 2 > r->backoff_max_ms ? r->backoff_max_ms : r->backoff_ms * 2;
    uv_timer_start(&r->reconnect_timer, on_reconnect_timer, delay, 0);
}

static void on_script_loaded(redisAsyncContext *ac, void *reply_ptr, void *privdata)
{
    (void)ac;
    struct redis_client *r = privdata;
    redisReply *reply = reply_ptr;
    if (!reply)
        return; /* the connection went away meanwhile; the disconnect path handles it */
    if (reply->type != REDIS_REPLY_STRING || reply->len != 40) {
        char why[200];
        snprintf(why, sizeof(why), "SCRIPT LOAD failed: %s",
                 reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
        log_error("redis: %s", why);
        snprintf(r->last_error, sizeof(r->last_error), "%s", why);
        redisAsyncDisconnect(r->ac);
        return;
    }
    memcpy(r->script_sha, reply->str, 40);
    r->script_sha[40] = '\0';
    uv_timer_stop(&r->reconnect_timer);
    r->connecting = false;
    r->connected = true;
    r->backoff_ms = BACKOFF_START_MS;
    r->last_error[0] = '\0';
    r->stats.connects++;
    log_info("redis: connected to %s", r->address);
    if (r->on_state)
        r->on_state(r, true, r->state_arg);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct redis_client *r = ac->data;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this callback. */
        char why[256];
        snprintf(why, sizeof(why), "%s", ac->errstr ? ac->errstr : "connect failed");
        r->ac = NULL;
        uv_timer_stop(&r->reconnect_timer);
        redis_fail(r, why, false);
        return;
    }
    const char *argv[] = {"SCRIPT", "LOAD", r->script};
    size_t lens[] = {6, 4, strlen(r->script)};
    redisAsyncCommandArgv(r->ac, on_script_loaded, r, 3, argv, lens);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct redis_client *r = ac->data;
    if (r->freeing)
        return; /* redis_drop is freeing this context and reports the failure itself */
    bool was_up = r->connected;
    char why[256];
    snprintf(why, sizeof(why), "%s",
             status == REDIS_OK ? "closed" : (ac->errstr ? ac->errstr : "error"));
    r->ac = NULL;
    uv_timer_stop(&r->reconnect_timer);
    if (r->closing) {
        r->connected = false;
        return;
    }
    redis_fail(r, why, was_up);
}

/* Connects to a numeric address (or a socket path): hiredis then looks nothing up. */
static void redis_connect_to(struct redis_client *r, const char *host, uint16_t port)
{
    redisAsyncContext *ac = port ? redisAsyncConnect(host, port) : redisAsyncConnectUnix(host);
    if (!ac || ac->err) {
        char why[256];
        snprintf(why, sizeof(why), "%s", ac && ac->errstr ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        redis_fail(r, why, false);
        return;
    }
    ac->data = r;
    if (events_attach(ac, r->loop) < 0) {
        redisAsyncFree(ac);
        redis_fail(r, "cannot watch the socket", false);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    r->ac = ac;
    /* The deadline starts here, not before the lookup: a resolver slower than the deadline would
     * otherwise never let a connect start. */
    uv_timer_start(&r->reconnect_timer, on_reconnect_timer, r->connect_timeout_ms, 0);
}

static void on_resolved(int status, const char *const *addrs, size_t naddrs, void *arg)
{
    struct redis_client *r = arg;
    r->resolve = NULL;
    if (status != 0) {
        char why[256];
        snprintf(why, sizeof(why), "cannot resolve: %s", uv_strerror(status));
        redis_fail(r, why, false);
        return;
    }
    /* A name with several addresses: an attempt that fails moves on to the next, so one that does
     * not answer is not tried forever. */
    redis_connect_to(r, addrs[r->addr_next % naddrs], r->port);
}

/* A host name is looked up on the thread pool first: hiredis's own lookup would block the loop
 * for as long as DNS takes. The connect deadline starts once the lookup is done. */
static void redis_connect(struct redis_client *r)
{
    char host[256];
    r->connecting = true;
    if (strncmp(r->address, "unix:", 5) == 0) {
        redis_connect_to(r, r->address + 5, 0);
    } else if (!config_split_host_port(r->address, host, sizeof(host), &r->port)) {
        redis_fail(r, "bad address", false);
    } else if (resolve_is_numeric(host)) {
        redis_connect_to(r, host, r->port);
    } else {
        int err = 0;
        r->resolve = resolve_start(r->loop, host, true, on_resolved, r, &err);
        if (!r->resolve) {
            char why[256];
            snprintf(why, sizeof(why), "cannot resolve: %s", uv_strerror(err));
            redis_fail(r, why, false);
        }
    }
}

void redis_start(struct redis_client *r)
{
    redis_connect(r);
}

/* ---- close ---- */

static void on_timer_closed(uv_handle_t *h)
{
    struct redis_client *r = h->data;
    if (++r->closed_timers < 2)
        return;
    free(r->address);
    free(r->script);
    buf_free(&r->command);
    if (r->on_closed)
        r->on_closed(r, r->closed_arg);
}

void redis_close(struct redis_client *r, void (*on_closed)(struct redis_client *r, void *arg),
                 void *arg)
{
    r->closing = true;
    r->on_closed = on_closed;
    r->closed_arg = arg;
    uv_timer_stop(&r->reconnect_timer);
    if (r->resolve) {
        resolve_abandon(r->resolve);
        r->resolve = NULL;
    }
    if (r->ac) {
        redisAsyncContext *ac = r->ac;
        r->ac = NULL;
        redisAsyncFree(ac); /* answers every call in flight with REDIS_CALL_DOWN */
    }
    r->connected = false;
    uv_close((uv_handle_t *)&r->reconnect_timer, on_timer_closed);
    uv_close((uv_handle_t *)&r->deadline_timer, on_timer_closed);
}

uint64_t redis_latency_quantile(const struct redis_stats *s, double q)
{
    uint64_t total = 0;
    for (int i = 0; i < 24; i++)
        total += s->latency_buckets[i];
    if (total == 0)
        return 0;
    uint64_t want = (uint64_t)(q * (double)total);
    uint64_t seen = 0;
    for (int i = 0; i < 24; i++) {
        seen += s->latency_buckets[i];
        if (seen > want)
            return 1ULL << i;
    }
    return 1ULL << 23;
}
