/* maintenance: the daily database maintenance, run by the daemon so that no separate cron is
 * needed.
 *
 * At `maintenance.at` (UTC), or at start when that time has passed today and today's run is
 * missing, the daemon that claims the day in usaged.maintenance_runs runs the steps on a
 * connection opened for the run: create_partitions, apply_retention, daily_maintenance(),
 * analyze_all_tables(), and VACUUM (ANALYZE) of the log tables outside any transaction. Each
 * step's outcome is added to the day's result; a failed step does not stop the next ones.
 *
 * Stopping cancels the statement in flight (PQcancel, off the loop) instead of waiting for it. */
#ifndef USAGED_MAINTENANCE_H
#define USAGED_MAINTENANCE_H

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "pg.h"

/* The daily run's steps, in order. */
enum maintenance_step {
    MAINTENANCE_SET = 0,       /* SET statement_timeout */
    MAINTENANCE_CLAIM,         /* INSERT INTO usaged.maintenance_runs ... ON CONFLICT */
    MAINTENANCE_PARTITIONS,    /* usaged.create_partitions(partitions_ahead) */
    MAINTENANCE_DAILY,         /* public.daily_maintenance(), when retention is on */
    MAINTENANCE_ANALYZE,       /* public.analyze_all_tables() */
    MAINTENANCE_VACUUM_USAGE,  /* VACUUM (ANALYZE) public.api_usage_logs */
    MAINTENANCE_VACUUM_PROMPT, /* VACUUM (ANALYZE) public.prompt_history */
    MAINTENANCE_FINISH,        /* finished_at and the overall outcome */
};

struct maintenance_stats {
    uint64_t runs;              /* days this daemon ran maintenance */
    uint64_t claimed_elsewhere; /* days another daemon had claimed first */
    uint64_t failed;            /* runs with a failed step, or that could not finish */
    char last_run_date[11];     /* YYYY-MM-DD of the last run by this daemon; "" none */
    int64_t last_started_ms;    /* unix ms */
    int64_t last_finished_ms;   /* unix ms; 0 while running or none */
    char *last_result;          /* the run's result jsonb, as text; NULL none */
    char last_error[512];       /* first error of the last run (or claim attempt); "" none */
};

struct maintenance {
    uv_loop_t *loop;
    char *conninfo;
    uint32_t connect_timeout_ms;
    uint32_t reconnect_max_ms;
    int32_t at_minute; /* minute of the UTC day; -1: disabled */
    uint32_t partitions_ahead;
    bool retention;
    bool vacuum;
    uint32_t timeout_s;
    uv_timer_t timer; /* looks at the wall clock periodically */
    int64_t done_day; /* UTC day (days since 1970) claimed, by us or another; -1: none */
    int64_t run_day;  /* the day of the run in progress */
    bool running;     /* a run is in progress (connecting included) */
    bool pg_open;     /* pg is initialized and not closed yet (closing included) */
    bool pg_closing;  /* pg_close has been called on pg */
    bool connecting;  /* the run waits for its connection */
    bool noting;      /* the op in flight records a step's note, not the step itself */
    bool step_failed; /* some step of this run failed */
    enum maintenance_step step;
    struct pg_conn pg;        /* opened for a run, closed after it */
    uint64_t step_started_us; /* monotonic */
    uint64_t logged_ms;       /* loop time a claim failure was last logged */
    char run_date[11];        /* YYYY-MM-DD */
    struct pg_op op;
    const char *params[3];
    char number[24];
    char note_key[32];
    char sql[512];
    bool started;
    bool stopping;
    bool closing;
    int live; /* the timer and the run's connection, until their close callbacks */
    void (*on_closed)(struct maintenance *m, void *arg);
    void *closed_arg;
    struct maintenance_stats stats;
};

void maintenance_init(struct maintenance *m, uv_loop_t *loop, const struct config *config);
/* Arms the timer: it looks at once, then every MAINTENANCE_CHECK_MS. */
void maintenance_start(struct maintenance *m);
/* Applies maintenance: of a reloaded config, and looks whether the run is due now. */
void maintenance_configure(struct maintenance *m, const struct config *config);
/* Stops the timer and cancels the statement in flight; nothing new starts. */
void maintenance_stop(struct maintenance *m);
/* Closes the connection and the timer; on_closed runs when both are closed. */
void maintenance_close(struct maintenance *m, void (*on_closed)(struct maintenance *m, void *arg),
                       void *arg);

/* The "maintenance" section of stats. */
void maintenance_pack_stats(const struct maintenance *m, msgpack_packer *pk);

#endif
