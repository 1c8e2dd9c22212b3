/* alerts: the rows of public.usage_alerts and their NOTIFY usaged_alerts (PROTOCOL.md, "Shadow
 * rules and alerts"), written on a PostgreSQL connection of their own.
 *
 * Which check crosses a rule's alert_at_percent is decided inside the Redis script (check.lua),
 * atomically: once per user, rule and window across every daemon sharing the Redis. Each alert
 * gets an id derived from the user, the rule (provider, model, dimension, window, shadow) and
 * the window's start, and is inserted with ON CONFLICT (id) DO NOTHING together with its NOTIFY
 * in one statement: a retry after a lost answer, or a second daemon raising the same alert after
 * Redis lost its marker, finds the row and sends nothing.
 *
 * None is lost while PostgreSQL is away: an alert that cannot be written at once (the connection
 * is not up, or a write failed) goes, with the others waiting in memory, to the file of
 * alerts_file.h in spool.dir, fsync'd in the thread pool; at shutdown whatever waits in memory
 * goes there too. The file is replayed, in order, when PostgreSQL is back and at start, and
 * emptied once all of it is written: an alert written twice (a crash between its write and the
 * emptying) is found by its id and sends nothing. Memory is bounded: at most limits.alert_queue
 * alerts wait in memory (past that, while the disk is busy or failing, the newest are dropped,
 * logged and counted), as many again in the append on its way to the disk, and one file read of
 * ALERTS_REPLAY. Without a usable spool.dir, alerts
 * wait in memory only and are given up (logged) at shutdown. */
#ifndef USAGED_ALERTS_H
#define USAGED_ALERTS_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "pg.h"
#include "rules.h"

struct alerts_alert {
    uint8_t user_id[16];
    char provider[RULES_PROVIDER_BYTES + 1]; /* "": the rule counts every provider */
    char model[RULES_MODEL_BYTES + 1];       /* "": any model */
    uint8_t dimension, window;               /* enum rules_dimension, enum rules_window */
    bool shadow;
    uint8_t percent;          /* the rule's alert_at_percent */
    int64_t limit;            /* the rule's amount (spend in micro-dollars) */
    int64_t used;             /* the use that reached the share */
    uint64_t window_start_ms; /* unix ms, on Redis's clock */
    uint64_t now_ms;          /* when it was decided, on Redis's clock */
};

struct alerts_stats {
    uint64_t raised;     /* decided by this daemon's checks */
    uint64_t written;    /* rows inserted (and notified) */
    uint64_t duplicates; /* found already written: nothing sent */
    uint64_t dropped;    /* the queue was full, or PostgreSQL refused the row */
    uint64_t spooled;    /* written to the file (fsync'd) */
    uint64_t corrupt;    /* records of the file found damaged, skipped */
};

#define ALERTS_REPLAY 64 /* records read from the file at a time */

struct alerts_job;

struct alerts {
    uv_loop_t *loop;
    struct pg_conn pg;
    uv_timer_t retry_timer;
    struct alerts_alert *queue; /* a ring of size items, grown up to cap as needed */
    uint32_t cap, size, head, n;
    bool in_flight; /* the head is being written */
    bool waiting;   /* a failed write: the retry timer runs */
    bool started;
    struct pg_op op;
    char params[12][64]; /* the head's text parameters, while in flight */
    const char *param_ptrs[12];
    char provider[RULES_PROVIDER_BYTES + 1]; /* the head's, while in flight */
    char model[RULES_MODEL_BYTES + 1];
    uint64_t full_logged_ms; /* loop time of the last "queue full" log line */
    struct alerts_stats stats;
    /* The file (alerts_file.h): records [file_read, file_size) wait for PostgreSQL, the first
     * nreplay of them read into replay[], of which replay_done are written. */
    int fd; /* -1: none, alerts wait in memory only */
    uint64_t file_size, file_read;
    struct alerts_job *job; /* the file's work in the thread pool, one at a time */
    bool flush_wanted;      /* what waits in memory is to go to the file */
    bool disk_failed;       /* the last append failed: the next waits for the retry timer */
    bool replay_in_flight;  /* the write in flight is replay[replay_done] (else the ring's head) */
    uint32_t nreplay, replay_done;
    uint64_t replay_bytes; /* of the file, read into replay[] */
    struct alerts_alert replay[ALERTS_REPLAY];
    char dir[512]; /* spool.dir */
    int closing;
    void (*on_closed)(struct alerts *a, void *arg);
    void *closed_arg;
};

void alerts_init(struct alerts *a, uv_loop_t *loop, const struct config *config);
/* Connects on the first alert, not before: most daemons never raise one. */
void alerts_push(struct alerts *a, const struct alerts_alert *alert);
/* Raises the alerts a check's script answer listed ("2,5": numbers of rules from 1) for the
 * user, provider and model of the check, whose rules are lim and uses used. */
void alerts_raise(struct alerts *a, const uint8_t user_id[16], const char *provider,
                  size_t provider_len, const char *model, size_t model_len,
                  const struct rules_resolved *lim, const char *list, const int64_t *used,
                  uint64_t now_ms);
/* Alerts waiting to be written: in memory, and in the file. */
static inline uint32_t alerts_waiting(const struct alerts *a)
{
    return a->n;
}
uint64_t alerts_on_disk(const struct alerts *a);
/* The row id of an alert: deterministic, a UUID (version 8) from its user, rule and window. */
void alerts_id(const struct alerts_alert *alert, uint8_t id[16]);
/* What is still waiting in memory goes to the file (without one: is logged, one line each, and
 * given up); on_closed runs once that is done. */
void alerts_close(struct alerts *a, void (*on_closed)(struct alerts *a, void *arg), void *arg);

#endif
