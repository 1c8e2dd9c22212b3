/* redis_conn: one connection to one Redis server on the event loop (hiredis's async API, on a
 * uv_poll handle). The building block of redis.h's client, in each of its modes.
 *
 * Commands are pipelined: each is written as soon as it is issued and answered in order. Every
 * connection begins with a handshake, before any command of the caller: AUTH (with the ACL user
 * when one is set), ROLE when the server must be a primary (Sentinel), then SCRIPT LOAD of the
 * registered Lua script, which calls then run with EVALSHA (falling back to EVAL when the server
 * has lost its script cache). hiredis 0.14 has no timeouts of its own: every command carries a uv
 * deadline here, and its callback runs exactly once, with the reply, or on timeout, or on
 * disconnect.
 *
 * A lost connection is retried with doubling backoff at the same address, unless the connection
 * is managed: then its owner (the Sentinel client) is told, and decides where and when to
 * connect next. A -READONLY reply, or a reply holding one (a script's caught error), says the
 * server has become a replica: the connection is dropped. */
#ifndef USAGED_REDIS_CONN_H
#define USAGED_REDIS_CONN_H

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "redis_replies.h"
#include "resolve.h"

enum redis_status {
    REDIS_CALL_OK = 0,  /* reply holds the server's answer (maybe an error reply) */
    REDIS_CALL_TIMEOUT, /* no answer within the command's timeout */
    REDIS_CALL_DOWN,    /* not connected, or the connection broke */
};

/* reply is valid during the call only, and NULL unless status is REDIS_CALL_OK. */
typedef void (*redis_reply_fn)(enum redis_status status, const redisReply *reply, void *arg);

/* Shared by every connection of one client. */
struct redis_stats {
    uint64_t connects;
    uint64_t connect_failures;
    uint64_t auth_failures;       /* handshakes refused at AUTH */
    uint64_t commands;            /* commands sent */
    uint64_t timeouts;            /* commands answered by their deadline */
    uint64_t noscript;            /* EVALSHA refused for an unknown script, retried with EVAL */
    uint64_t redirects;           /* MOVED and ASK replies followed (Cluster) */
    uint64_t failovers;           /* primaries changed (Sentinel) */
    uint64_t latency_us_total;    /* sum of reply latencies, for the average */
    uint64_t latency_buckets[24]; /* reply latencies, bucket i: < 2^i microseconds */
};

/* What every connection of a client shares, owned by the client. */
struct redis_conn_setup {
    const char *username; /* NULL: the default user */
    const char *password; /* NULL: no AUTH */
    const char *script;   /* the Lua source run by redis_conn_eval; NULL: none */
    uint32_t connect_timeout_ms;
    uint32_t backoff_max_ms;
    struct redis_stats *stats;
};

struct redis_conn {
    uv_loop_t *loop;
    const struct redis_conn_setup *setup;
    char *address; /* "host:port" or "unix:/path"; NULL until known (managed) */
    redisAsyncContext *ac;
    struct resolve *resolve; /* the host name's lookup in flight */
    uint16_t port;
    unsigned addr_next; /* which of a looked-up name's addresses to connect to next */
    bool connected;     /* connected and the handshake done */
    bool connecting;
    bool closing;
    bool freeing;               /* redis_conn_drop is inside redisAsyncFree */
    bool managed;               /* the owner picks address and time of every connect */
    bool require_primary;       /* the handshake asks ROLE and wants "master" */
    bool moving;                /* redis_conn_connect is dropping the old server for a new one */
    int handshake_step;         /* where the handshake is (redis_conn.c) */
    char drop_why[128];         /* why this side is closing the connection, for the log */
    uint64_t last_reply_ms;     /* loop time of the last reply of any call */
    uv_timer_t reconnect_timer; /* backoff, and the connect deadline */
    uv_timer_t deadline_timer;  /* the deadline of the oldest call in flight */
    int closed_timers;
    uint32_t backoff_ms;
    struct buf command;           /* a command being formatted */
    struct redis_replies replies; /* the reply objects of this connection's contexts */
    char script_sha[41];
    struct redis_call *calls; /* in flight, oldest first (a doubly linked list) */
    struct redis_call *calls_tail;
    struct redis_call *spare_calls; /* answered, kept for reuse (redis_conn.c) */
    unsigned nspare_calls;
    void (*on_state)(struct redis_conn *c, bool up, void *arg);
    void *state_arg;
    char last_error[256]; /* of the last failed connect, to log a repeated one rarely */
    uint64_t last_logged_ms;
    char last_lost[128]; /* why the last established connection was lost, likewise */
    uint64_t last_lost_ms;
    void (*on_closed)(struct redis_conn *c, void *arg);
    void *closed_arg;
};

void redis_conn_init(struct redis_conn *c, uv_loop_t *loop, const struct redis_conn_setup *setup,
                     void (*on_state)(struct redis_conn *c, bool up, void *arg), void *arg);
/* Connects to address (replacing the one it had, dropping a connection it had). */
void redis_conn_connect(struct redis_conn *c, const char *address);

static inline bool redis_conn_is_up(const struct redis_conn *c)
{
    return c->connected;
}

/* Runs the script with argc string arguments, given in RESP (args, len: "$" length CRLF bytes
 * CRLF each, as redis_conn_put_arg writes them), the first numkeys of them its KEYS; cb runs
 * once, within timeout_ms. When not connected, cb runs at once with REDIS_CALL_DOWN. With
 * asking, an ASKING goes just before it (Cluster: a slot being imported). */
void redis_conn_eval(struct redis_conn *c, int numkeys, int argc, const char *args, size_t len,
                     uint32_t timeout_ms, bool asking, redis_reply_fn cb, void *arg);
/* Any command, the same way. */
void redis_conn_command(struct redis_conn *c, int argc, const char *const *argv,
                        const size_t *arg_lens, uint32_t timeout_ms, redis_reply_fn cb, void *arg);

/* RESP's text of arguments: writes one ($len CRLF, its bytes, CRLF) at p, returns its end. At
 * most len + REDIS_ARG_OVERHEAD bytes. */
#define REDIS_ARG_OVERHEAD 25
char *redis_conn_put_arg(char *p, const char *arg, size_t len);
/* The same for an argument already written at start + 4, len bytes long: its head goes before it
 * (moving it when its length has more than one digit). Returns its end. Inline for the short
 * ones: a check's call has dozens of arguments. */
char *redis_conn_close_long_arg(char *start, size_t len);
static inline char *redis_conn_close_arg(char *start, size_t len)
{
    if (len >= 10)
        return redis_conn_close_long_arg(start, len);
    start[0] = '$';
    start[1] = (char)('0' + len);
    start[2] = '\r';
    start[3] = '\n';
    start[4 + len] = '\r';
    start[5 + len] = '\n';
    return start + 6 + len;
}

/* Drops the connection (never call it from inside a hiredis callback); a managed connection
 * then waits for redis_conn_connect, the others retry after the backoff. */
void redis_conn_drop(struct redis_conn *c, const char *why);

/* Closes for good; calls in flight complete with REDIS_CALL_DOWN; on_closed runs at the end. */
void redis_conn_close(struct redis_conn *c, void (*on_closed)(struct redis_conn *c, void *arg),
                      void *arg);

/* Watches a context's socket on the loop (for the client's other contexts, e.g. a Sentinel's). */
int redis_events_attach(redisAsyncContext *ac, uv_loop_t *loop);

#endif
