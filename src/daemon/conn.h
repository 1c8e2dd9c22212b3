/* conn: client connections. Owns each connection's socket, its input buffer and framing, its
 * output and the limits that keep one client from hurting the others:
 *   - a message over listen.max_message_bytes (or declaring sizes that cannot fit in it) or bytes
 *     that are not MessagePack break only that stream: the "error" notification, then close;
 *   - unsent output over listen.max_output_bytes, or more than listen.max_pending_requests
 *     unanswered requests, pause that connection's reads until it catches up;
 *   - the input buffered by all connections together (partial messages, messages held back) over
 *     listen.max_input_bytes pauses the reads of the connections that hold some until it is half
 *     that again, but one of them at a time goes on to finish its message: clients trickling
 *     partial messages cannot hold max_connections times max_message_bytes;
 *   - listen.idle_timeout_s closes a connection that has sent nothing and awaits nothing.
 * A decoded, valid envelope goes to the dispatch function; everything a handler keeps must be
 * copied out of the message, whose memory is reused after dispatch returns. */
#ifndef USAGED_CONN_H
#define USAGED_CONN_H

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "frame.h"
#include "log.h"
#include "rpc.h"

struct conn;

/* Why a connection's reads are paused; reads resume when no reason is left. */
enum conn_pause {
    CONN_PAUSE_OUTPUT = 1u << 0,       /* unsent output over its bound */
    CONN_PAUSE_PENDING = 1u << 1,      /* too many unanswered requests */
    CONN_PAUSE_BACKPRESSURE = 1u << 2, /* the daemon cannot take this message yet */
    CONN_PAUSE_INPUT = 1u << 3,        /* all connections' buffered input over its bound */
};

enum conn_dispatch_result {
    CONN_DISPATCHED = 0, /* handled: answered now, or an answer will follow */
    CONN_RETRY_LATER,    /* not taken: the connection was paused; the same message will be
                            dispatched again when it resumes */
};

typedef enum conn_dispatch_result (*conn_dispatch_fn)(void *ctx, struct conn *c,
                                                      const struct rpc_message *m);

struct conn_limits {
    uint32_t max_connections;
    uint32_t max_message_bytes;
    uint32_t max_output_bytes;
    uint32_t max_pending_requests;
    uint64_t max_input_bytes;   /* input buffered by all connections together */
    uint64_t idle_timeout_ms;   /* 0: never */
    uint64_t finish_timeout_ms; /* at a stop, connections still open this long are closed */
};

struct conn_stats {
    uint64_t accepted;    /* connections accepted */
    uint64_t refused;     /* connections refused at max_connections */
    uint64_t closed_idle; /* connections closed by idle_timeout_s */
    uint64_t messages;    /* whole messages received */
    uint64_t bytes_in;
    uint64_t bytes_out;
    uint64_t stream_errors;           /* streams broken by bad bytes or oversize messages */
    uint64_t paused_output;           /* times a connection was paused for unsent output */
    uint64_t paused_pending;          /* times a connection was paused for unanswered requests */
    uint64_t paused_input;            /* times a connection was paused for max_input_bytes */
    uint64_t errors[RPC_CODE_COUNT];  /* error responses and notifications sent, by code */
    uint64_t dropped[RPC_CODE_COUNT]; /* invalid notifications dropped, by code */
};

struct conn_set {
    uv_loop_t *loop;
    struct conn_limits limits;
    conn_dispatch_fn dispatch;
    void *dispatch_ctx;
    struct conn *head;  /* every open connection */
    uint32_t count;     /* open connections */
    struct conn *dirty; /* connections with output waiting for the flush pass */
    uv_check_t flush_check;
    uv_idle_t flush_soon; /* active while output waits: the loop must not block before the check */
    uv_timer_t idle_timer;
    uv_timer_t finish_timer; /* the stop's deadline for the connections */
    msgpack_zone zone;       /* decoded objects of the message being dispatched */
    struct buf scratch;      /* where replies to closed connections go, to be dropped */
    msgpack_packer scratch_pk;
    bool finishing; /* shutdown: close each connection once it has nothing pending */
    void (*on_finished)(struct conn_set *set); /* runs when finishing and the last one closed */
    uint64_t next_id;
    uint64_t input_bytes;        /* capacity of every connection's input buffer, together */
    uint32_t input_paused;       /* connections paused for max_input_bytes */
    struct conn *input_owner;    /* past max_input_bytes, the one connection still read */
    bool input_full;             /* past max_input_bytes, until below half of it */
    struct log_limiter drop_log; /* budget for logging dropped notifications */
    struct conn_stats stats;
    uint8_t read_buf[64 * 1024]; /* shared by all reads; the loop is single-threaded */
};

struct conn {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    struct conn_set *set;
    struct conn *prev, *next; /* in set->head */
    struct conn *next_dirty;  /* in set->dirty */
    uint64_t id;
    char peer[64];     /* for log lines */
    struct buf in;     /* input not yet dispatched: a partial message, or messages held
                          back while paused */
    size_t input_held; /* in.cap as counted in set->input_bytes */
    struct frame_scanner scan;
    struct buf out;    /* packed output not yet handed to the kernel */
    msgpack_packer pk; /* packs into out */
    uv_write_t write_req;
    uint8_t *write_data;     /* the buffer of the write in flight */
    size_t writing;          /* its length; 0: no write in flight */
    size_t seen_write_queue; /* libuv's unsent bytes of it at the last idle sweep */
    uint32_t pending;        /* requests received and not yet answered */
    uint32_t refs;           /* the open handle holds one; each deferred answer one more */
    uint64_t last_active_ms; /* loop time of the last byte read or written */
    unsigned pause;          /* enum conn_pause bits */
    bool reading;            /* uv_read_start is in force */
    bool eof;                /* the peer closed its side: finish and close */
    bool close_after_flush;  /* stream broken: close once the error is sent */
    bool closing;            /* uv_close called */
    bool dirty;              /* in set->dirty */
    bool processing;         /* inside the dispatch loop */
    bool authed;             /* sent a valid auth (only meaningful with auth configured) */
};

void conn_set_init(struct conn_set *set, uv_loop_t *loop, const struct conn_limits *limits,
                   conn_dispatch_fn dispatch, void *ctx);
/* Applies new limits to the set (a config reload). */
void conn_set_limits(struct conn_set *set, const struct conn_limits *limits);
/* Shutdown: each connection closes once its pending answers are sent, or at
 * limits.finish_timeout_ms; on_done runs when the last one has closed (at once when none). */
void conn_set_finish(struct conn_set *set, void (*on_done)(struct conn_set *set));
/* Closes the set's own handles; call once every connection is closed. */
void conn_set_close(struct conn_set *set);

/* Accepts a connection from a listening stream. */
void conn_accept(struct conn_set *set, uv_stream_t *server, bool tcp);
/* Serves a connected Unix stream socket the daemon did not accept (one end of a socketpair, in
 * the tests). The connection owns fd from here. Returns 0 or a negative errno. */
int conn_open_fd(struct conn_set *set, int fd);

/* Packs the head of a successful response and returns the packer for the result value. Counts
 * the request as answered. A reply to a closed connection is packed and dropped. */
msgpack_packer *conn_reply(struct conn *c, uint32_t msgid);
void conn_reply_error(struct conn *c, uint32_t msgid, const struct rpc_error *e);
/* Counts an error that has no one to answer (an invalid notification) and logs it, rate-limited. */
void conn_drop_notification(struct conn *c, const char *method, const struct rpc_error *e);
/* Answers a request with e, or counts and drops a notification's (above). */
enum conn_dispatch_result conn_refuse(struct conn *c, const struct rpc_message *m,
                                      const struct rpc_error *e);
/* True when a line about a client's misbehaviour may be logged now (10 per 10 s, all clients). */
bool conn_log_allowed(struct conn *c);

/* Closes the connection once its output is sent; nothing more is read from it. */
void conn_close_after_flush(struct conn *c);

/* A notification whose work finishes later (a check) counts as pending like a request, so that
 * a client sending them faster than they finish is paused at max_pending_requests: hold at
 * dispatch, release when done. */
void conn_hold(struct conn *c);
void conn_release(struct conn *c);

void conn_ref(struct conn *c);
void conn_unref(struct conn *c);
void conn_pause(struct conn *c, unsigned reasons);
void conn_resume(struct conn *c, unsigned reasons);
static inline bool conn_is_open(const struct conn *c)
{
    return !c->closing;
}

#endif
