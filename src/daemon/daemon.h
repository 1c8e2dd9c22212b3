/* daemon: the one struct that holds the running daemon's parts, built by main.c and passed down,
 * and its lifecycle: start, reload on SIGHUP, drain on SIGTERM/SIGINT, stop. */
#ifndef USAGED_DAEMON_H
#define USAGED_DAEMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "batcher.h"
#include "config.h"
#include "conn.h"
#include "limiter.h"
#include "listener.h"
#include "maintenance.h"
#include "methods.h"
#include "methods_log.h"
#include "metrics.h"
#include "notify.h"
#include "refresh.h"
#include "stats.h"

struct daemon {
    uv_loop_t *loop;
    struct config *config; /* the config in force; replaced whole by a successful reload */
    char *token;           /* the auth token from auth.token_file; NULL: no auth */
    size_t token_len;
    struct conn_set conns;
    struct listener listener;
    struct spool spool;
    struct batcher batcher;
    struct methods_log log_methods; /* log_usage and log_prompt over the batcher */
    struct limiter limiter;
    struct refresh refresh;         /* analytics refresh */
    struct maintenance maintenance; /* the daily database maintenance */
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_work_t threads_work;     /* starts the thread pool with the exit signals blocked */
    struct notify notify;       /* sd_notify: READY=1, STATUS=, STOPPING=1, WATCHDOG=1 */
    struct metrics metrics;     /* the Prometheus endpoint, when metrics.listen is set */
    struct methods methods;     /* what the protocol layer routes to */
    struct stats_sources stats; /* what the stats answer reads */
    uv_timer_t ready_timer;     /* READY_WAIT_MS after the start: ready, settled or not */
    bool ready_wait_over;       /* it fired: the parts' first attempts are no longer awaited */
    bool started;               /* daemon_start has finished: readiness may be judged */
    bool ready;                 /* every part has settled and READY=1 was sent */
    bool stopping;              /* SIGTERM received: no new work */
    int exit_code;
};

/* Builds and starts every part; returns 0, or a negative errno with err filled. Takes the config.
 */
int daemon_start(struct daemon *d, uv_loop_t *loop, struct config *config, char *err,
                 size_t errlen);
/* Runs the loop until the daemon has stopped; returns the process exit code. */
int daemon_run(struct daemon *d);
/* Re-reads the config file; on error logs it and keeps the old config. */
void daemon_reload(struct daemon *d);
/* Begins the drain: stop accepting, answer what is pending, flush, then stop. */
void daemon_stop(struct daemon *d);
/* Judges again whether the daemon is up, and tells systemd (READY=1) the first time it is.
 * Parts call it when their state changes (a connection made, failed or lost). */
void daemon_check_ready(struct daemon *d);

#endif
