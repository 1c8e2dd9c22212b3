/* methods_log: the log_usage and log_prompt methods' side of the protocol. Reads their params
 * (the events and the options map), hands the batcher a plain request, answers at once or when
 * a durable request's batch is kept, and pauses a notification sender while the queue is full
 * until the batcher says there is room. Packs the ingest and spool parts of `stats`. The batcher
 * never sees a connection. */
#ifndef USAGED_METHODS_LOG_H
#define USAGED_METHODS_LOG_H

#include <msgpack.h>
#include <stdint.h>

#include "batcher.h"
#include "conn.h"
#include "spool.h"

struct methods_log {
    struct batcher *batcher;
    struct conn **paused; /* notification senders paused until the queue has room */
    uint32_t npaused, cap_paused;
};

/* Serves the batcher's requests and takes its room callback. */
void methods_log_init(struct methods_log *ml, struct batcher *b);
/* Lets go of the paused senders (at the stop, once every connection is closed). */
void methods_log_close(struct methods_log *ml);

/* Handles a log_usage (EVENT_USAGE) or log_prompt (EVENT_PROMPT) request or notification. */
enum conn_dispatch_result methods_log(struct methods_log *ml, enum event_kind kind, struct conn *c,
                                      const struct rpc_message *m);

/* Counts the events of a log request refused before the batcher saw it (its options, or a
 * log_prompt's reservation): received, and rejected for err's code. */
void methods_log_count_refused(struct methods_log *ml, const struct rpc_message *m,
                               const struct rpc_error *err);

/* The ingest and spool parts of `stats`. */
void methods_log_pack_stats(const struct batcher *b, msgpack_packer *pk);
void methods_log_pack_spool_stats(const struct spool *s, msgpack_packer *pk);

#endif
