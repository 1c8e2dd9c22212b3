/* methods: routes each valid request or notification to the module that serves it, and answers
 * the methods that need no module of their own (ping, auth, stats). Auth and shutdown gate every
 * method here, in one place.
 *
 * It sees the parts it routes to through struct methods, which daemon.c fills once at start;
 * it never includes daemon.h. */
#ifndef USAGED_METHODS_H
#define USAGED_METHODS_H

#include <stdbool.h>
#include <stddef.h>

#include "conn.h"
#include "limiter.h"
#include "methods_log.h"
#include "stats.h"

struct methods {
    const char *token; /* the auth token; NULL: no auth */
    size_t token_len;
    const bool *stopping;    /* true once the drain began: no new work */
    struct methods_log *log; /* log_usage and log_prompt */
    struct limiter *limiter;
    const struct stats_sources *stats; /* for stats and ping's uptime */
};

/* The conn dispatch function; ctx is a struct methods. */
enum conn_dispatch_result methods_dispatch(void *ctx, struct conn *c, const struct rpc_message *m);

#endif
