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
#include "listener.h"

struct daemon {
    uv_loop_t *loop;
    struct config *config; /* the config in force; replaced whole by a successful reload */
    char *token;           /* the auth token from auth.token_file; NULL: no auth */
    size_t token_len;
    struct conn_set conns;
    struct listener listener;
    struct batcher batcher;
    uv_signal_t sig_term, sig_int, sig_hup;
    uint64_t started_ms; /* loop time at start, for uptime */
    bool stopping;       /* SIGTERM received: no new work */
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

/* Milliseconds since the daemon started. */
uint64_t daemon_uptime_ms(const struct daemon *d);

#endif
