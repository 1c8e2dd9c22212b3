/* redis_conn: see redis_conn.h.
 *
 * A call lives until hiredis hands its reply back (or frees it on disconnect), because hiredis
 * holds its pointer; whether the caller was already answered (by the deadline) is a flag on it.
 * Calls waiting for an answer sit in a list in issue order; one timer stands at the earliest of
 * their deadlines (calls may carry different timeouts: a redirected Cluster call keeps what is
 * left of its own). */
#include "redis_conn.h"

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
    int events;       /* UV_READABLE | UV_WRITABLE the handle is started with */
    bool write_later; /* a command is being queued: send_call writes it itself (see there) */
    bool want_write;  /* and hiredis asked for a write meanwhile */
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
    if (e->write_later) {
        e->want_write = true;
        return;
    }
    events_set(e, e->events | UV_WRITABLE);
}

static void events_del_write(void *arg)
{
    struct redis_events *e = arg;
    e->want_write = false;
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

int redis_events_attach(redisAsyncContext *ac, uv_loop_t *loop)
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

char *redis_conn_put_arg(char *p, const char *arg, size_t len)
{
    *p++ = '$';
    p += fmt_u64(p, len);
    *p++ = '\r';
    *p++ = '\n';
    memcpy(p, arg, len);
    p += len;
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

char *redis_conn_close_long_arg(char *start, size_t len)
{
    char digits[24];
    size_t n = len < 100 ? 2 : fmt_u64(digits, len);
    memmove(start + 3 + n, start + 4, len);
    start[0] = '$';
    if (len < 100) { /* most: keys and ids */
        start[1] = (char)('0' + len / 10);
        start[2] = (char)('0' + len % 10);
    } else {
        memcpy(start + 1, digits, n);
    }
    char *p = start + 1 + n;
    *p++ = '\r';
    *p++ = '\n';
    p += len;
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

/* Room for the head of an EVALSHA command: *argc, EVALSHA and the sha (and slack). */
#define HEAD_ROOM 80

struct redis_call {
    struct redis_conn *c;
    redis_reply_fn cb;
    void *arg;
    uint64_t deadline_ms; /* loop time */
    uint64_t sent_ms;     /* loop time */
    uint64_t sent_us;
    bool answered; /* cb has run */
    bool linked;   /* in c->calls */
    bool script;   /* EVALSHA and the sha (or EVAL and the source) go before the arguments */
    struct redis_call *prev, *next;
    int argc;        /* of the whole command */
    size_t args_len; /* of args */
    /* The arguments (after EVALSHA and the sha) in RESP, kept for a retry with EVAL; HEAD_ROOM
     * bytes before them are free for the command's head, and a '\0' follows (hiredis 0.14 looks one
     * byte past a command's first argument, whether a second one follows, which for ASKING is past
     * the end). */
    char *args;
    size_t room; /* bytes allocated after the struct */
};

static void conn_connect(struct redis_conn *c);

void redis_conn_init(struct redis_conn *c, uv_loop_t *loop, const struct redis_conn_setup *setup,
                     void (*on_state)(struct redis_conn *c, bool up, void *arg), void *arg)
{
    memset(c, 0, sizeof(*c));
    c->loop = loop;
    c->setup = setup;
    c->backoff_ms = BACKOFF_START_MS;
    c->on_state = on_state;
    c->state_arg = arg;
    uv_timer_init(loop, &c->reconnect_timer);
    c->reconnect_timer.data = c;
    uv_timer_init(loop, &c->deadline_timer);
    c->deadline_timer.data = c;
    buf_init(&c->command);
    redis_replies_init(&c->replies);
}

/* ---- calls ---- */

static void call_unlink(struct redis_conn *c, struct redis_call *call)
{
    if (!call->linked)
        return;
    if (call->prev)
        call->prev->next = call->next;
    else
        c->calls = call->next;
    if (call->next)
        call->next->prev = call->prev;
    else
        c->calls_tail = call->prev;
    call->prev = call->next = NULL;
    call->linked = false;
}

static void call_answer(struct redis_call *call, enum redis_status status, const redisReply *reply)
{
    if (call->answered)
        return;
    call->answered = true;
    call_unlink(call->c, call);
    call->cb(status, reply, call->arg);
}

/* Calls answered are kept for the next (at most CALL_SPARE, each with its room for arguments
 * when that is at most CALL_KEEP_BYTES). None under AddressSanitizer, which can then still catch
 * a call used after its answer. */
#if defined(__SANITIZE_ADDRESS__)
#define CALL_SPARE 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CALL_SPARE 0
#endif
#endif
#ifndef CALL_SPARE
#define CALL_SPARE 64
#endif
#define CALL_KEEP_BYTES 4096

static struct redis_call *call_new(struct redis_conn *c, size_t room)
{
    struct redis_call *call = c->spare_calls;
    if (call) {
        c->spare_calls = call->next;
        c->nspare_calls--;
        if (call->room >= room)
            return call;
        free(call);
    }
    if (room < 512)
        room = 512;
    call = xmalloc(sizeof(*call) + room);
    call->room = room;
    return call;
}

static void call_free(struct redis_call *call)
{
    struct redis_conn *c = call->c;
    if (c->nspare_calls + 1 > CALL_SPARE || call->room > CALL_KEEP_BYTES) {
        free(call);
        return;
    }
    call->next = c->spare_calls;
    c->spare_calls = call;
    c->nspare_calls++;
}

static void on_deadline(uv_timer_t *t);

/* Answers every call whose deadline has passed, oldest first. Returns true when one of them was
 * sent before the last reply arrived, i.e. Redis has answered nothing since: it is stalled.
 * Calls may carry different timeouts (a redirected call keeps what is left of its own), so the
 * list is walked whole; it holds what one round trip keeps in flight. */
static bool check_deadlines(struct redis_conn *c)
{
    uint64_t now = uv_now(c->loop);
    bool stalled = false;
    struct redis_call *call = c->calls;
    while (call) {
        struct redis_call *next = call->next;
        if (call->deadline_ms <= now) {
            c->setup->stats->timeouts++;
            if (call->sent_ms >= c->last_reply_ms)
                stalled = true;
            call_answer(call, REDIS_CALL_TIMEOUT, NULL);
        }
        call = next;
    }
    return stalled;
}

static void arm_deadline_earliest(struct redis_conn *c)
{
    uint64_t due = UINT64_MAX;
    for (struct redis_call *call = c->calls; call; call = call->next)
        if (call->deadline_ms < due)
            due = call->deadline_ms;
    if (due == UINT64_MAX)
        return;
    uint64_t now = uv_now(c->loop);
    uv_timer_start(&c->deadline_timer, on_deadline, due > now ? due - now : 0, 0);
}

static void on_deadline(uv_timer_t *t)
{
    struct redis_conn *c = t->data;
    if (check_deadlines(c) && c->connected) {
        /* No answer to anything for a whole timeout: a stopped server or a silent partition.
         * Keeping the connection would make every check wait out the timeout and pile calls up
         * in hiredis; drop it, answer fast (degraded) while down, and reconnect. */
        redis_conn_drop(c, "no answer within the timeout");
    }
    arm_deadline_earliest(c);
}

static void record_latency(struct redis_conn *c, const struct redis_call *call)
{
    struct redis_stats *s = c->setup->stats;
    uint64_t us = uv_hrtime() / 1000 - call->sent_us;
    s->latency_us_total += us;
    unsigned b = 0;
    while (b < 23 && (1ULL << b) <= us)
        b++;
    s->latency_buckets[b]++;
}

static void send_call(struct redis_conn *c, struct redis_call *call, bool with_source);

static bool is_readonly_error(const redisReply *r)
{
    return (r->type == REDIS_REPLY_ERROR || r->type == REDIS_REPLY_STRING) && r->len >= 8 &&
           memcmp(r->str, "READONLY", 8) == 0;
}

/* The reply is a -READONLY error, or an array holding one: a script that catches its write's
 * error (redis.pcall) hands it back as one of its results. */
static bool says_readonly(const redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY)
        return is_readonly_error(r);
    for (size_t i = 0; i < r->elements; i++)
        if (is_readonly_error(r->element[i]))
            return true;
    return false;
}

static void on_reply(redisAsyncContext *ac, void *reply_ptr, void *privdata)
{
    struct redis_call *call = privdata;
    struct redis_conn *c = call->c;
    redisReply *reply = reply_ptr;
    if (!reply) {
        /* hiredis is freeing the connection: the call never got its answer. */
        call_answer(call, REDIS_CALL_DOWN, NULL);
        call_free(call);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR && call->script &&
        strncmp(reply->str, "NOSCRIPT", 8) == 0 && !call->answered && c->ac) {
        /* The server lost its script cache (restart, SCRIPT FLUSH): run the source itself. */
        c->setup->stats->noscript++;
        send_call(c, call, true);
        return;
    }
    if (says_readonly(reply) && c->ac == ac && !c->drop_why[0]) {
        /* The server has become a replica (a failover): this connection is of no more use.
         * Its owner finds the new primary (Sentinel) or it reconnects (one server). */
        snprintf(c->drop_why, sizeof(c->drop_why), "the server is a replica now (READONLY)");
        redisAsyncDisconnect(ac);
    }
    c->last_reply_ms = uv_now(c->loop);
    if (!call->answered)
        record_latency(c, call);
    call_answer(call, REDIS_CALL_OK, reply);
    call_free(call);
}

static void send_call(struct redis_conn *c, struct redis_call *call, bool with_source)
{
    char head[HEAD_ROOM], *p = head;
    *p++ = '*';
    p += fmt_u64(p, (uint64_t)call->argc);
    *p++ = '\r';
    *p++ = '\n';
    const char *command;
    size_t len;
    if (!call->script || !with_source) {
        /* The common case: the head goes just before the arguments, and hiredis copies the
         * command from there. */
        if (call->script)
            p = redis_conn_put_arg(redis_conn_put_arg(p, "EVALSHA", 7), c->script_sha, 40);
        size_t head_len = (size_t)(p - head);
        memcpy(call->args - head_len, head, head_len);
        command = call->args - head_len;
        len = head_len + call->args_len;
    } else {
        /* NOSCRIPT: the source itself, in a buffer the connection reuses. */
        size_t source_len = strlen(c->setup->script);
        buf_clear(&c->command);
        char *start = (char *)buf_reserve(&c->command, HEAD_ROOM + source_len + call->args_len);
        memcpy(start, head, (size_t)(p - head));
        char *q = redis_conn_put_arg(start + (p - head), "EVAL", 4);
        q = redis_conn_put_arg(q, c->setup->script, source_len);
        memcpy(q, call->args, call->args_len + 1); /* with its '\0' */
        c->command.len = (size_t)(q - start) + call->args_len;
        command = start;
        len = c->command.len;
    }
    /* The command is written now, not when the poll next says the socket is writable: waiting
     * for that would start and stop watching for writability around every command, and the
     * socket nearly always takes it at once (what it does not take, hiredis asks the poll to
     * wait for, as before). Not from inside a callback of this context, where hiredis must not
     * be re-entered (the NOSCRIPT retry): that one waits for the poll. */
    redisAsyncContext *ac = c->ac;
    struct redis_events *e = ac->ev.data;
    bool write_now = !(ac->c.flags & REDIS_IN_CALLBACK);
    e->write_later = write_now;
    int rc = redisAsyncFormattedCommand(ac, on_reply, call, command, len);
    e->write_later = false;
    if (rc != REDIS_OK) {
        call_answer(call, REDIS_CALL_DOWN, NULL);
        call_free(call);
        return;
    }
    if (write_now && e->want_write) {
        e->want_write = false;
        /* A failed write disconnects: every call in flight, this one too, is answered
         * REDIS_CALL_DOWN from here, as when no connection was there to take it. */
        redisAsyncHandleWrite(ac);
    }
}

/* Issues a call: EVALSHA, the sha and numkeys first when script, then the caller's arguments
 * (argc of them, in RESP), copied into one allocation (the call, room for the command's head,
 * the arguments), which a NOSCRIPT retry needs after the caller's buffers are gone. */
static void issue(struct redis_conn *c, bool script, int numkeys, int argc, const char *args,
                  size_t args_len, uint32_t timeout_ms, redis_reply_fn cb, void *arg)
{
    if (!c->connected || !c->ac) {
        cb(REDIS_CALL_DOWN, NULL, arg);
        return;
    }
    struct redis_call *call = call_new(c, HEAD_ROOM + REDIS_ARG_OVERHEAD + args_len + 1);
    size_t room = call->room;
    memset(call, 0, sizeof(*call));
    call->room = room;
    call->c = c;
    call->cb = cb;
    call->arg = arg;
    call->argc = (script ? 3 : 0) + argc;
    call->script = script;
    call->args = (char *)(call + 1) + HEAD_ROOM;
    char *p = call->args;
    if (script) {
        char nk[24];
        p = redis_conn_put_arg(p, nk, fmt_u64(nk, (uint64_t)numkeys));
    }
    memcpy(p, args, args_len);
    p += args_len;
    *p = '\0';
    call->args_len = (size_t)(p - call->args);
    call->sent_ms = uv_now(c->loop);
    call->deadline_ms = call->sent_ms + timeout_ms;
    call->sent_us = uv_hrtime() / 1000;
    call->linked = true;
    call->prev = c->calls_tail;
    if (c->calls_tail)
        c->calls_tail->next = call;
    else
        c->calls = call;
    c->calls_tail = call;
    c->setup->stats->commands++;
    /* The timer stands at the earliest deadline of the calls in flight. */
    if (!uv_is_active((uv_handle_t *)&c->deadline_timer) ||
        call->sent_ms + uv_timer_get_due_in(&c->deadline_timer) > call->deadline_ms)
        uv_timer_start(&c->deadline_timer, on_deadline, timeout_ms, 0);
    send_call(c, call, false);
}

static void ignore_reply(enum redis_status status, const redisReply *reply, void *arg)
{
    (void)status;
    (void)reply;
    (void)arg;
}

void redis_conn_eval(struct redis_conn *c, int numkeys, int argc, const char *args, size_t len,
                     uint32_t timeout_ms, bool asking, redis_reply_fn cb, void *arg)
{
    if (asking && c->connected) {
        /* Its reply (+OK) comes first, and only the next command on this connection is let in. */
        static const char ask[] = "$6\r\nASKING\r\n";
        issue(c, false, 0, 1, ask, sizeof(ask) - 1, timeout_ms, ignore_reply, NULL);
    }
    issue(c, true, numkeys, argc, args, len, timeout_ms, cb, arg);
}

void redis_conn_command(struct redis_conn *c, int argc, const char *const *argv,
                        const size_t *arg_lens, uint32_t timeout_ms, redis_reply_fn cb, void *arg)
{
    /* Rare (CLUSTER SLOTS): formatted into an allocation of its own. */
    size_t need = 1;
    for (int i = 0; i < argc; i++)
        need += arg_lens[i] + REDIS_ARG_OVERHEAD;
    char *args = xmalloc(need), *p = args;
    for (int i = 0; i < argc; i++)
        p = redis_conn_put_arg(p, argv[i], arg_lens[i]);
    issue(c, false, 0, argc, args, (size_t)(p - args), timeout_ms, cb, arg);
    free(args);
}

/* ---- connection ---- */

static void conn_schedule_reconnect(struct redis_conn *c);

static void conn_fail(struct redis_conn *c, const char *why, bool was_up)
{
    uint64_t now = uv_now(c->loop);
    if (was_up) {
        /* A loss for the same reason as the last within a minute (a server that keeps turning
         * out to be a replica, say) is not logged again. */
        if (strcmp(why, c->last_lost) != 0 || now - c->last_lost_ms >= 60000) {
            log_warn("redis: connection to %s lost: %s", c->address, why);
            c->last_lost_ms = now;
        }
        snprintf(c->last_lost, sizeof(c->last_lost), "%s", why);
    } else if (strcmp(why, c->last_error) != 0 || now - c->last_logged_ms >= 60000) {
        log_warn("redis: cannot connect to %s: %s", c->address ? c->address : "?", why);
        c->last_logged_ms = now;
    }
    snprintf(c->last_error, sizeof(c->last_error), "%s", why);
    if (!was_up) {
        c->setup->stats->connect_failures++;
        c->addr_next++;
    }
    c->connected = false;
    c->connecting = false;
    c->drop_why[0] = '\0';
    if (!c->closing && !c->managed)
        conn_schedule_reconnect(c);
    if (c->on_state)
        c->on_state(c, false, c->state_arg);
}

/* Frees the context (never from inside a hiredis callback: from timers only) and goes through
 * the failure path once: hiredis's own disconnect callback, which the free may run, stands
 * aside meanwhile. Calls in flight are answered REDIS_CALL_DOWN by the free. */
void redis_conn_drop(struct redis_conn *c, const char *why)
{
    redisAsyncContext *ac = c->ac;
    bool was_up = c->connected;
    c->ac = NULL;
    c->connecting = false;
    c->connected = false;
    uv_timer_stop(&c->reconnect_timer);
    if (c->resolve) {
        resolve_abandon(c->resolve);
        c->resolve = NULL;
    }
    if (ac) {
        c->freeing = true;
        redisAsyncFree(ac);
        c->freeing = false;
    }
    conn_fail(c, why, was_up);
}

static void on_reconnect_timer(uv_timer_t *t)
{
    struct redis_conn *c = t->data;
    if (c->connecting) {
        /* The connect (or the handshake) has not finished in time: give up on this one. */
        redis_conn_drop(c, "connect timeout");
        return;
    }
    if (!c->ac && !c->closing && c->address)
        conn_connect(c);
}

static void conn_schedule_reconnect(struct redis_conn *c)
{
    uint32_t delay = c->backoff_ms;
    uint32_t max = c->setup->backoff_max_ms;
    c->backoff_ms = c->backoff_ms * 2 > max ? max : c->backoff_ms * 2;
    uv_timer_start(&c->reconnect_timer, on_reconnect_timer, delay, 0);
}

/* ---- the handshake: AUTH, ROLE, SCRIPT LOAD, each only where it applies ---- */

enum { STEP_AUTH = 0, STEP_ROLE, STEP_SCRIPT, STEP_DONE };

static void handshake_send(struct redis_conn *c);

/* A handshake that failed: the reason goes through the failure path's log, which says a
 * repeated reason once a minute (a wrong password must not fill the log at every retry). */
static void handshake_fail(struct redis_conn *c, redisAsyncContext *ac, const char *what,
                           const char *detail)
{
    snprintf(c->drop_why, sizeof(c->drop_why), "%s: %s", what, detail);
    redisAsyncDisconnect(ac);
}

static const char *reply_text(const redisReply *reply)
{
    return reply->type == REDIS_REPLY_ERROR || reply->type == REDIS_REPLY_STATUS ||
                   reply->type == REDIS_REPLY_STRING
               ? reply->str
               : "an unexpected reply";
}

static void on_handshake(redisAsyncContext *ac, void *reply_ptr, void *privdata)
{
    struct redis_conn *c = privdata;
    redisReply *reply = reply_ptr;
    if (!reply || c->ac != ac || c->drop_why[0])
        return; /* the connection went away meanwhile; the disconnect path handles it */
    switch (c->handshake_step) {
    case STEP_AUTH:
        if (reply->type == REDIS_REPLY_ERROR) {
            /* The reply names no password (WRONGPASS, or an ERR for a server without one);
             * neither does this line. */
            c->setup->stats->auth_failures++;
            handshake_fail(c, ac, "AUTH refused", reply_text(reply));
            return;
        }
        break;
    case STEP_ROLE:
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 1 ||
            reply->element[0]->type != REDIS_REPLY_STRING ||
            strcmp(reply->element[0]->str, "master") != 0) {
            handshake_fail(c, ac, "not the primary; ROLE",
                           reply->type == REDIS_REPLY_ARRAY && reply->elements >= 1 &&
                                   reply->element[0]->type == REDIS_REPLY_STRING
                               ? reply->element[0]->str
                               : reply_text(reply));
            return;
        }
        break;
    case STEP_SCRIPT:
        if (reply->type != REDIS_REPLY_STRING || reply->len != 40) {
            handshake_fail(c, ac, "SCRIPT LOAD failed", reply_text(reply));
            return;
        }
        memcpy(c->script_sha, reply->str, 40);
        c->script_sha[40] = '\0';
        break;
    }
    c->handshake_step++;
    handshake_send(c);
}

static void handshake_send(struct redis_conn *c)
{
    const struct redis_conn_setup *s = c->setup;
    if (c->handshake_step == STEP_AUTH && !s->password)
        c->handshake_step++;
    if (c->handshake_step == STEP_ROLE && !c->require_primary)
        c->handshake_step++;
    if (c->handshake_step == STEP_SCRIPT && !s->script)
        c->handshake_step++;
    const char *argv[3];
    size_t lens[3];
    int argc = 0;
    switch (c->handshake_step) {
    case STEP_AUTH:
        argv[argc++] = "AUTH";
        if (s->username)
            argv[argc++] = s->username;
        argv[argc++] = s->password;
        break;
    case STEP_ROLE:
        argv[argc++] = "ROLE";
        break;
    case STEP_SCRIPT:
        argv[argc++] = "SCRIPT";
        argv[argc++] = "LOAD";
        argv[argc++] = s->script;
        break;
    default:
        uv_timer_stop(&c->reconnect_timer);
        c->connecting = false;
        c->connected = true;
        c->backoff_ms = BACKOFF_START_MS;
        c->last_error[0] = '\0';
        s->stats->connects++;
        log_info("redis: connected to %s", c->address);
        if (c->on_state)
            c->on_state(c, true, c->state_arg);
        return;
    }
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    redisAsyncCommandArgv(c->ac, on_handshake, c, argc, argv, lens);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct redis_conn *c = ac->data;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this callback. */
        char why[256];
        snprintf(why, sizeof(why), "%s", ac->errstr[0] ? ac->errstr : "connect failed");
        c->ac = NULL;
        uv_timer_stop(&c->reconnect_timer);
        conn_fail(c, why, false);
        return;
    }
    c->handshake_step = STEP_AUTH;
    handshake_send(c);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct redis_conn *c = ac->data;
    if (c->freeing || c->ac != ac)
        return; /* redis_conn_drop is freeing this context and reports the failure itself */
    bool was_up = c->connected;
    char why[256];
    snprintf(why, sizeof(why), "%s",
             c->drop_why[0]       ? c->drop_why
             : status == REDIS_OK ? "closed"
                                  : (ac->errstr[0] ? ac->errstr : "error"));
    c->ac = NULL;
    uv_timer_stop(&c->reconnect_timer);
    if (c->closing) {
        c->connected = false;
        return;
    }
    conn_fail(c, why, was_up);
}

/* Connects to a numeric address (or a socket path): hiredis then looks nothing up. */
static void conn_connect_to(struct redis_conn *c, const char *host, uint16_t port)
{
    redisAsyncContext *ac = port ? redisAsyncConnect(host, port) : redisAsyncConnectUnix(host);
    if (!ac || ac->err) {
        char why[256];
        snprintf(why, sizeof(why), "%s", ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        conn_fail(c, why, false);
        return;
    }
    ac->data = c;
    redis_replies_attach(&c->replies, ac);
    if (redis_events_attach(ac, c->loop) < 0) {
        redisAsyncFree(ac);
        conn_fail(c, "cannot watch the socket", false);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    c->ac = ac;
    c->drop_why[0] = '\0';
    /* The deadline starts here, not before the lookup: a resolver slower than the deadline would
     * otherwise never let a connect start. */
    uv_timer_start(&c->reconnect_timer, on_reconnect_timer, c->setup->connect_timeout_ms, 0);
}

static void on_resolved(int status, const char *const *addrs, size_t naddrs, void *arg)
{
    struct redis_conn *c = arg;
    c->resolve = NULL;
    if (status != 0) {
        char why[256];
        snprintf(why, sizeof(why), "cannot resolve: %s", uv_strerror(status));
        conn_fail(c, why, false);
        return;
    }
    /* A name with several addresses: an attempt that fails moves on to the next, so one that does
     * not answer is not tried forever. */
    conn_connect_to(c, addrs[c->addr_next % naddrs], c->port);
}

/* A host name is looked up on the thread pool first: hiredis's own lookup would block the loop
 * for as long as DNS takes. The connect deadline starts once the lookup is done. */
static void conn_connect(struct redis_conn *c)
{
    char host[256];
    c->connecting = true;
    if (strncmp(c->address, "unix:", 5) == 0) {
        conn_connect_to(c, c->address + 5, 0);
    } else if (!config_split_host_port(c->address, host, sizeof(host), &c->port)) {
        conn_fail(c, "bad address", false);
    } else if (resolve_is_numeric(host)) {
        conn_connect_to(c, host, c->port);
    } else {
        int err = 0;
        c->resolve = resolve_start(c->loop, host, true, on_resolved, c, &err);
        if (!c->resolve) {
            char why[256];
            snprintf(why, sizeof(why), "cannot resolve: %s", uv_strerror(err));
            conn_fail(c, why, false);
        }
    }
}

void redis_conn_connect(struct redis_conn *c, const char *address)
{
    if (c->closing)
        return;
    if (c->ac || c->resolve) {
        bool managed = c->managed;
        c->managed = true; /* no reconnect of its own to the old address */
        c->moving = true;
        redis_conn_drop(c, "moving to another server");
        c->moving = false;
        c->managed = managed;
    }
    uv_timer_stop(&c->reconnect_timer);
    if (!c->address || strcmp(c->address, address) != 0) {
        free(c->address);
        c->address = xstrdup(address);
        c->addr_next = 0;
        c->last_error[0] = '\0';
    }
    conn_connect(c);
}

/* ---- close ---- */

static void on_timer_closed(uv_handle_t *h)
{
    struct redis_conn *c = h->data;
    if (++c->closed_timers < 2)
        return;
    free(c->address);
    c->address = NULL;
    buf_free(&c->command);
    redis_replies_free(&c->replies);
    while (c->spare_calls) {
        struct redis_call *next = c->spare_calls->next;
        free(c->spare_calls);
        c->spare_calls = next;
    }
    c->nspare_calls = 0;
    if (c->on_closed)
        c->on_closed(c, c->closed_arg);
}

void redis_conn_close(struct redis_conn *c, void (*on_closed)(struct redis_conn *c, void *arg),
                      void *arg)
{
    c->closing = true;
    c->on_closed = on_closed;
    c->closed_arg = arg;
    uv_timer_stop(&c->reconnect_timer);
    if (c->resolve) {
        resolve_abandon(c->resolve);
        c->resolve = NULL;
    }
    if (c->ac) {
        redisAsyncContext *ac = c->ac;
        c->ac = NULL;
        redisAsyncFree(ac); /* answers every call in flight with REDIS_CALL_DOWN */
    }
    c->connected = false;
    uv_close((uv_handle_t *)&c->reconnect_timer, on_timer_closed);
    uv_close((uv_handle_t *)&c->deadline_timer, on_timer_closed);
}
