/* refresh: the analytics refresher, run by the daemon so that no separate cron is needed (the daily
 * maintenance is maintenance.h's).
 *
 * Each view of `refresh:` has a timer. When it fires, the view is refreshed on the
 * refresher's own PostgreSQL connection (never the ingest ones), one statement at a time, so two
 * refreshes of one view never overlap and ingestion never waits for a refresh. Each attempt is one
 * transaction that takes the view's advisory lock (pg_try_advisory_xact_lock), reads
 * usaged.refresh_state, and refreshes only when no daemon has done it within the interval; so
 * daemons sharing a database refresh each view about once per interval between them. A view that
 * was never populated is refreshed without CONCURRENTLY the first time. Failures are logged once
 * per distinct error, recorded in usaged.refresh_state and retried at the next tick.
 *
 * Stopping cancels the statement in flight (PQcancel, off the loop) instead of waiting for it. */
#ifndef USAGED_REFRESH_H
#define USAGED_REFRESH_H

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "pg.h"

struct refresh;

struct refresh_view_stats {
    int64_t last_refresh_ms; /* unix ms when this daemon's last successful refresh began; 0: none */
    uint32_t duration_ms;    /* of the REFRESH statement of that refresh */
    uint64_t refreshes;      /* refreshes done by this daemon */
    uint64_t skipped;        /* attempts skipped: another daemon held the lock or had refreshed */
    uint64_t failed;         /* attempts that failed (the error is in last_error) */
};

struct refresh_view {
    struct refresh *r;
    char *name;        /* "schema.view" as configured; the key of usaged.refresh_state */
    char *lock_key;    /* "usaged.refresh:" + name, hashed into the advisory lock */
    uint32_t every_ms; /* interval between refreshes */
    uint32_t timeout_ms;
    uv_timer_t timer; /* the next attempt */
    bool queued;      /* waiting in the refresher's due list */
    bool removed;     /* no longer configured: discarded when its attempt ends */
    struct refresh_view *next_due;
    char last_error[512];     /* error of the last attempt that was not skipped; "" if it worked */
    uint64_t last_logged_ms;  /* loop time the current error was last logged */
    uint32_t failures_in_row; /* attempts failed since the last success */
    struct refresh_view_stats stats;
};

/* The attempt in flight on the refresher's connection. */
enum refresh_step {
    REFRESH_STEP_BEGIN = 0, /* BEGIN; SET LOCAL statement_timeout */
    REFRESH_STEP_LOCK,      /* pg_try_advisory_xact_lock */
    REFRESH_STEP_CHECK,     /* refresh_state age and whether the view is populated */
    REFRESH_STEP_REFRESH,   /* REFRESH MATERIALIZED VIEW [CONCURRENTLY] */
    REFRESH_STEP_RECORD,    /* upsert of refresh_state */
    REFRESH_STEP_COMMIT,
    REFRESH_STEP_ROLLBACK,     /* after a skip or a failure */
    REFRESH_STEP_RECORD_ERROR, /* the failure into refresh_state, after the rollback */
};

enum refresh_outcome { REFRESH_REFRESHED = 0, REFRESH_SKIPPED, REFRESH_FAILED };

struct refresh_job {
    struct refresh_view *view; /* NULL: no attempt in flight */
    enum refresh_step step;
    enum refresh_outcome outcome; /* what the attempt comes to, once it has ended */
    uint32_t next_delay_ms;       /* when to try this view again */
    bool concurrently;            /* the view is populated */
    uint64_t started_ms;          /* loop time the attempt began */
    int64_t started_wall_ms;      /* unix ms the attempt began */
    uint64_t refresh_started_us;  /* hrtime of the REFRESH statement's start */
    uint32_t duration_ms;         /* of the REFRESH statement */
    char error[512];              /* why it failed */
    struct pg_op op;
    const char *params[3];
    char number[24];  /* a numeric parameter */
    char quoted[300]; /* the view's name quoted as identifiers */
    char sql[512];    /* the statement in flight, when built here */
};

struct refresh {
    uv_loop_t *loop;
    char *conninfo;
    uint32_t connect_timeout_ms;
    uint32_t reconnect_max_ms;
    struct pg_conn pg; /* the refresher's own connection */
    bool pg_started;
    struct refresh_view **views; /* configured views (and removed ones still in flight) */
    size_t nviews;
    struct refresh_view *due_head, *due_tail; /* views waiting for the connection, FIFO */
    struct refresh_job job;
    bool started;
    bool stopping;
    bool closing;
    int live; /* handles and connections not closed yet */
    void (*on_closed)(struct refresh *r, void *arg);
    void *closed_arg;
};

void refresh_init(struct refresh *r, uv_loop_t *loop, const struct config *config);
/* Arms the timers and connects when there is something to refresh. */
void refresh_start(struct refresh *r);
/* Applies refresh: of a reloaded config: new views start at once, removed ones
 * stop (an attempt in flight finishes), changed intervals apply from the next attempt. */
void refresh_configure(struct refresh *r, const struct config *config);
/* Stops the timers and cancels the statements in flight; nothing new starts. */
void refresh_stop(struct refresh *r);
/* Closes the connections and timers; on_closed runs when all are closed. */
void refresh_close(struct refresh *r, void (*on_closed)(struct refresh *r, void *arg), void *arg);

/* The "refresh" section of stats. */
void refresh_pack_stats(const struct refresh *r, msgpack_packer *pk);

#endif
