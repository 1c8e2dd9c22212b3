/* stats: the `stats` method's answer. Each module keeps its own counters; this module gathers
 * them into one map of sections (connections, messages, errors, ingest, limits, ...), the same
 * figures usagectl shows and the metrics endpoint exports.
 *
 * It reads the parts through struct stats_sources, which daemon.c fills once at start: stats
 * knows the parts' headers, never the daemon that holds them. */
#ifndef USAGED_STATS_H
#define USAGED_STATS_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "batcher.h"
#include "conn.h"
#include "limiter.h"
#include "maintenance.h"
#include "refresh.h"
#include "spool.h"

/* The parts whose figures the answer holds. */
struct stats_sources {
    uv_loop_t *loop;      /* whose clock measures uptime */
    uint64_t started_ms;  /* loop time at start */
    const bool *stopping; /* true once the drain began */
    const struct conn_set *conns;
    const struct batcher *batcher;
    const struct spool *spool;
    const struct limiter *limiter;
    const struct refresh *refresh;
    const struct maintenance *maintenance;
};

/* Milliseconds since the daemon started. */
uint64_t stats_uptime_ms(const struct stats_sources *s);
void stats_pack(const struct stats_sources *s, msgpack_packer *pk);
/* One line of the main figures (connections, queued and written rows, PostgreSQL), for
 * systemd's STATUS= (systemctl status shows it). */
void stats_summary(const struct stats_sources *s, char *out, size_t len);

#endif
