/* pg: one PostgreSQL connection driven by the event loop, never blocking it.
 *
 * libpq runs in non-blocking mode; its socket is watched with a uv_poll handle. The connection
 * connects (PQconnectStart/PQconnectPoll), reconnects with doubling backoff when it is lost,
 * runs one operation at a time (a statement, several in one string, or a COPY FROM STDIN whose
 * bytes it streams as the socket takes them), and reports NOTIFY messages. Callers queue their own
 * work and submit the next operation when the connection is idle again. */
#ifndef USAGED_PG_H
#define USAGED_PG_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "resolve.h"

struct pg_conn;

/* What became of an operation. */
struct pg_outcome {
    bool ok;              /* every statement succeeded */
    bool connection_lost; /* the connection broke: whether it took effect is unknown */
    PGresult *result;     /* the last result that carries tuples or a command status; owned by
                             pg, valid during the callback only; NULL when lost */
    char sqlstate[6];     /* of the first error; "" when none or lost */
    const char *error;    /* message of the first error, or why the connection was lost */
};

typedef void (*pg_done_fn)(struct pg_conn *pg, const struct pg_outcome *outcome, void *arg);

/* One operation. The caller owns it and everything it points at until done() is called. */
struct pg_op {
    const char *sql; /* one or more statements (simple query protocol when nparams 0) */
    int nparams;     /* > 0: one statement with text parameters $1.. */
    const char *const *params;
    const int *param_lengths;  /* NULL: NUL-terminated text params */
    const int *param_formats;  /* NULL: all text */
    const uv_buf_t *copy_bufs; /* the bytes for a COPY ... FROM STDIN in sql, in pieces */
    unsigned copy_nbufs;
    pg_done_fn done;
    void *arg;
};

struct pg_callbacks {
    void (*ready)(struct pg_conn *pg, void *arg); /* connected (again), or idle after an op */
    void (*lost)(struct pg_conn *pg, void *arg);  /* the connection went down */
    void (*notify)(struct pg_conn *pg, const char *channel, const char *payload, void *arg);
    /* an attempt to connect failed (a retry follows after the backoff); NULL: not told */
    void (*connect_failed)(struct pg_conn *pg, void *arg);
};

enum pg_state { PG_DOWN = 0, PG_CONNECTING, PG_IDLE, PG_BUSY, PG_CLOSED };

struct pg_stats {
    uint64_t connects; /* successful connections */
    uint64_t connect_failures;
    uint64_t ops;       /* operations completed (ok or not) */
    uint64_t op_errors; /* operations that failed with an error from the server */
    uint64_t losses;    /* connections lost while up */
};

struct pg_conn {
    uv_loop_t *loop;
    char name[24]; /* for log lines: "ingest", "limits", "refresh" */
    char *conninfo;
    PGconn *conn;
    struct pg_target target; /* the conninfo's hosts, while connecting */
    struct resolve *resolve; /* the lookup of target.hosts[lookup_host] in flight */
    size_t lookup_host;
    char lookup_error[512];    /* the last names that did not resolve, as logged */
    uint64_t lookup_logged_ms; /* loop time that was logged */
    uv_poll_t *poll;           /* watches PQsocket(conn); a new one per connection */
    int poll_events;
    uv_timer_t timer; /* reconnect backoff and connect timeout */
    enum pg_state state;
    struct pg_op *op;  /* in flight */
    unsigned copy_buf; /* the piece of op->copy_bufs being handed to libpq */
    size_t copy_off;   /* bytes of that piece handed over */
    bool copy_started; /* the server is in COPY IN for this op */
    bool copy_done;    /* PQputCopyEnd sent */
    PGresult *result;  /* kept for the outcome */
    char sqlstate[6];
    char error[512];
    bool failed;
    uint32_t connect_timeout_ms;
    uint32_t backoff_ms; /* next reconnect delay */
    uint32_t backoff_max_ms;
    uint64_t connect_started; /* loop time the current attempt began */
    const struct pg_callbacks *cb;
    void *cb_arg;
    char last_error[512];    /* why the last attempt or connection failed, for stats */
    uint64_t last_logged_ms; /* loop time a connect failure was last logged */
    struct pg_stats stats;
    void (*on_closed)(struct pg_conn *pg);
    bool closing; /* pg_close has begun */
    int closing_handles;
};

void pg_init(struct pg_conn *pg, uv_loop_t *loop, const char *name, const char *conninfo,
             uint32_t connect_timeout_ms, uint32_t backoff_max_ms, const struct pg_callbacks *cb,
             void *arg);
/* Starts connecting; ready() runs once connected. */
void pg_start(struct pg_conn *pg);
/* Runs op; the connection must be idle. Returns 0, or -ENOTCONN / -EBUSY. */
int pg_submit(struct pg_conn *pg, struct pg_op *op);
static inline bool pg_is_idle(const struct pg_conn *pg)
{
    return pg->state == PG_IDLE;
}
/* Drops the connection (an op in flight completes as lost) and reconnects after the backoff. */
void pg_reset(struct pg_conn *pg, const char *why);
/* Asks the server to cancel the running statement (blocking for one round trip to it, so it is
 * run on the thread pool). */
void pg_cancel(struct pg_conn *pg);
/* Closes for good; on_closed runs when every handle is closed. An op in flight completes as lost.
 */
void pg_close(struct pg_conn *pg, void (*on_closed)(struct pg_conn *pg));
const char *pg_state_name(enum pg_state state);
/* An outcome's error for a log line or stats: "SQLSTATE: message", or why the connection went. */
void pg_outcome_describe(const struct pg_outcome *o, char *out, size_t outlen);

/* Quotes a possibly schema-qualified name ("schema.name") as identifiers, into out. */
bool pg_quote_qualified(PGconn *conn, const char *name, char *out, size_t outlen);

#endif
