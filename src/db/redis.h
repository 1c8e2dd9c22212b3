/* redis: one Redis connection on the event loop (hiredis's async API, on a uv_poll handle).
 *
 * Commands are pipelined: each is written as soon as it is issued and answered in order. The
 * connection reconnects with doubling backoff when it is lost, loads the registered Lua script
 * at every connect, and runs it with EVALSHA (falling back to EVAL when the server has lost its
 * script cache). hiredis 0.14 has no timeouts of its own: every command carries a uv deadline
 * here, and its callback runs exactly once, with the reply, or on timeout, or on disconnect. */
#ifndef USAGED_REDIS_H
#define USAGED_REDIS_H

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "resolve.h"

enum redis_status {
    REDIS_CALL_OK = 0,  /* reply holds the server's answer (maybe an error reply) */
    REDIS_CALL_TIMEOUT, /* no answer within the command's timeout */
    REDIS_CALL_DOWN,    /* not connected, or the connection broke */
};

/* reply is valid during the call only, and NULL unless status is REDIS_CALL_OK. */
typedef void (*redis_reply_fn)(enum redis_status status, const redisReply *reply, void *arg);

struct redis_stats {
    uint64_t connects;
    uint64_t connect_failures;
    uint64_t commands;            /* commands sent */
    uint64_t timeouts;            /* commands answered by their deadline */
    uint64_t noscript;            /* EVALSHA refused for an unknown script, retried with EVAL */
    uint64_t latency_us_total;    /* sum of reply latencies, for the average */
    uint64_t latency_buckets[24]; /* reply latencies, bucket i: < 2^i microseconds */
};

struct redis_client {
    uv_loop_t *loop;
    char *address; /* "host:port" or "unix:/path" */
    redisAsyncContext *ac;
    struct resolve *resolve; /* the host name's lookup in flight */
    uint16_t port;
    unsigned addr_next; /* which of a looked-up name's addresses to connect to next */
    bool connected;     /* connected and the script loaded */
    bool connecting;
    bool closing;
    bool freeing;               /* redis_drop is inside redisAsyncFree */
    uint64_t last_reply_ms;     /* loop time of the last reply of any call */
    uv_timer_t reconnect_timer; /* backoff, and the connect deadline */
    uv_timer_t deadline_timer;  /* the deadline of the oldest call in flight */
    int closed_timers;
    uint32_t backoff_ms;
    uint32_t backoff_max_ms;
    uint32_t connect_timeout_ms;
    char *script;       /* the Lua source run by redis_eval */
    struct buf command; /* a command being formatted */
    char script_sha[41];
    struct redis_call *calls; /* in flight, oldest first (a doubly linked list) */
    struct redis_call *calls_tail;
    void (*on_state)(struct redis_client *r, bool up, void *arg);
    void *state_arg;
    char last_error[256];
    uint64_t last_logged_ms;
    struct redis_stats stats;
    void (*on_closed)(struct redis_client *r, void *arg);
    void *closed_arg;
};

void redis_init(struct redis_client *r, uv_loop_t *loop, const char *address, const char *script,
                uint32_t connect_timeout_ms, uint32_t backoff_max_ms,
                void (*on_state)(struct redis_client *r, bool up, void *arg), void *arg);
void redis_start(struct redis_client *r);

/* Runs the script with string arguments, the first numkeys of them its KEYS; cb runs once,
 * within timeout_ms. When not connected, cb runs at once with REDIS_CALL_DOWN. */
void redis_eval(struct redis_client *r, int numkeys, int argc, const char *const *argv,
                const size_t *arg_lens, uint32_t timeout_ms, redis_reply_fn cb, void *arg);

static inline bool redis_is_up(const struct redis_client *r)
{
    return r->connected;
}

/* Closes for good; calls in flight complete with REDIS_CALL_DOWN; on_closed runs at the end. */
void redis_close(struct redis_client *r, void (*on_closed)(struct redis_client *r, void *arg),
                 void *arg);

/* An estimate of the q-quantile (0..1) of reply latency, in microseconds. */
uint64_t redis_latency_quantile(const struct redis_stats *s, double q);

#endif
