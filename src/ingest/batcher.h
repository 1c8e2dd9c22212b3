/* batcher: the ingestion path from validated events to committed rows.
 *
 * One queue per table. Events are encoded as binary COPY tuples straight into the batch being
 * filled; a batch is sealed at ingest.batch_rows rows or ingest.batch_ms after its first row, and
 * written by its table's own PostgreSQL connection with one COPY (plus the api_configurations
 * usage bump, in the same implicit transaction). While one batch is in COPY the next one fills.
 *
 * What it promises:
 *   - a request is all or nothing, and all of it lands in one batch;
 *   - durable acks are sent when the batch holding the request has committed (or been spooled);
 *   - a batch refused for its data is split until the bad rows are alone; each bad row goes to
 *     usaged.rejects with its error and every good row lands;
 *   - a batch whose commit outcome is unknown (connection lost) is retried idempotently, so it is
 *     stored once; a repeated id is stored once;
 *   - at ingest.queue_rows, requests get overloaded and notifications are told to wait (their
 *     sender is paused by the caller, and told when there is room again); nothing accepted is
 *     ever dropped.
 * It takes plain requests (an array of events, an optional completion for a durable ack) and
 * never sees a connection: the protocol side is daemon/methods_log.c. */
#ifndef USAGED_BATCHER_H
#define USAGED_BATCHER_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "batch.h"
#include "config.h"
#include "errors.h"
#include "event.h"
#include "log.h"
#include "spool.h"
#include "writer.h"

struct batcher;

struct batcher_table_stats {
    uint64_t rows_queued;       /* events accepted into this table's queue */
    uint64_t rows_written;      /* rows committed */
    uint64_t rows_rejected;     /* rows refused by PostgreSQL and stored in usaged.rejects */
    uint64_t rows_spooled;      /* rows fsync'd to the spool */
    uint64_t rows_replayed;     /* rows committed from the spool */
    uint64_t batches;           /* batches committed */
    uint64_t statements;        /* COPY statements sent (splits and retries included) */
    uint64_t idempotent_writes; /* statements through the staging table */
    uint64_t retries;           /* attempts that failed for a reason other than the data */
    uint64_t copy_us;           /* time spent in COPY statements, total */
};

/* Most writer connections a table may have (ingest.connections). */
#define BATCHER_MAX_WRITERS 8

struct batcher_table {
    struct batcher *b;
    enum event_kind kind;
    const struct event_table *table;
    struct batcher_writer writers[BATCHER_MAX_WRITERS]; /* each with its own connection */
    uint32_t nwriters;
    struct batch *filling;     /* accepting rows */
    struct batch *head, *tail; /* sealed batches, oldest first; writers take the first free */
    uint64_t queued_rows;      /* rows in this table's batches, written or not */
    uv_timer_t flush_timer;    /* batch_ms after the first row of the filling batch */
    uv_timer_t spill_timer;    /* while rows wait for writers that are down or failing */
    uint64_t failing_since;    /* loop time of the first failed attempt in a row; 0: none */
    bool fetching;             /* a spool record is being read for replay */
    uint32_t replays;          /* spool records read back and not yet committed: <= nwriters */
    bool replay_turn;          /* the next batch taken replays a spool record, if there is one */
    char last_error[256];
    struct log_limiter reject_log; /* a client sending bad rows must not flood the log */
    struct batcher_table_stats stats;
};

struct batcher_stats {
    uint64_t events_received;
    uint64_t events_accepted;
    uint64_t events_rejected[RPC_CODE_COUNT]; /* events of refused requests, by error code */
    uint64_t requests_overloaded;
    uint64_t denied_rows_dropped; /* limits.log_denied rows that found no room, or a stop */
    uint64_t rows_lost; /* accepted rows the stop could keep neither in PostgreSQL nor on disk */
    uint64_t notifications_paused; /* times a notification was told to wait for room */
};

struct batcher {
    uv_loop_t *loop;
    struct batcher_table tables[EVENT_KIND_COUNT];
    uint64_t queued_rows; /* rows in memory, not yet handed to the spool, both tables */
    struct spool *spool;  /* NULL: no spool (rows wait in memory) */
    uint32_t spill_after_ms;
    uint32_t drain_timeout_s;
    uv_timer_t drain_timer;
    bool drain_expired;      /* drain_timeout_s passed: spill whatever is left */
    uint32_t spooling;       /* batches handed to the spool, not yet fsync'd */
    uint64_t spooling_bytes; /* their rows' bytes, still in memory until then */
    uint32_t batch_rows;
    uint32_t batch_ms;
    uint32_t queue_rows;
    uint64_t queue_bytes;  /* bound of queued_bytes */
    uint64_t batch_bytes;  /* a batch is also sealed at this size */
    uint64_t queued_bytes; /* bytes of the rows counted in queued_rows */
    enum config_ack default_ack;
    struct uuid_v7_gen ids;
    bool waiters;        /* a request was told to wait: say when there is room */
    uv_idle_t room_idle; /* runs on_room from the loop, outside the batcher's own work */
    double rows_per_ms;  /* recent commit throughput, for retry_after_ms */
    bool draining;
    void (*on_drained)(struct batcher *b, void *arg);
    void *drained_arg;
    int closing; /* handles still closing */
    void (*on_closed)(struct batcher *b, void *arg);
    void *closed_arg;
    /* Called when a writer connection connects, fails to connect or is lost (and after each
     * statement, when it is idle again), so that the daemon can judge its readiness; set by the
     * owner after batcher_init. NULL: nobody asks. */
    void (*on_state)(void *arg);
    void *state_arg;
    /* Called, from a loop callback of its own, when requests told to wait may try again; set by
     * the owner after batcher_init. */
    void (*on_room)(void *arg);
    void *room_arg;
    struct batcher_stats stats;
};

void batcher_init(struct batcher *b, uv_loop_t *loop, const struct config *config);
/* Starts the writer connections. */
void batcher_start(struct batcher *b);
/* Applies batch_rows, batch_ms, queue_rows and ack from a reloaded config. */
void batcher_configure(struct batcher *b, const struct config *config);

/* One log_usage or log_prompt request, its params read. */
struct batcher_request {
    enum event_kind kind;
    const msgpack_object_array *events;
    /* Durable: done runs when every event of it is kept (the batcher holds it until then);
     * NULL: the caller answers at once. Only for a request of one event or more. */
    struct batch_ack *ack;
    /* A notification: when the queue is full it waits (BATCHER_WAIT) instead of being refused. */
    bool can_wait;
};

enum batcher_result {
    BATCHER_ACCEPTED = 0, /* every event is queued */
    BATCHER_REFUSED,      /* nothing is queued; err says why (invalid_field, overloaded) */
    BATCHER_WAIT,         /* nothing is queued: try again after on_room */
};

enum batcher_result batcher_submit(struct batcher *b, const struct batcher_request *req,
                                   struct rpc_error *err);

/* Queues the api_usage_logs row of a denied check (limits.log_denied). Dropped (and counted)
 * when the queue is full: it is the daemon's own record, not a client's event. */
void batcher_log_denied(struct batcher *b, const uint8_t user_id[16], const char *provider,
                        size_t provider_len, const char *reason, int64_t now_ms);

/* Room appeared in the spool, or it finished recovery: spill or replay what waits. */
void batcher_spool_changed(struct batcher *b);

/* Seals every batch and calls on_drained once every queue is written (to PostgreSQL, or to the
 * spool for what is left after ingest.drain_timeout_s). */
void batcher_drain(struct batcher *b, void (*on_drained)(struct batcher *b, void *arg), void *arg);
/* Closes the connections and timers; on_closed runs when all are closed. Durable requests still
 * waiting are told shutting_down. */
void batcher_close(struct batcher *b, void (*on_closed)(struct batcher *b, void *arg), void *arg);

/* Writer connections up (connected), of all tables; and how many there are. */
uint32_t batcher_writers_up(const struct batcher *b);
uint32_t batcher_writers(const struct batcher *b);
/* Of one table. */
uint32_t batcher_table_writers_up(const struct batcher_table *t);
/* Every writer has finished a first connect attempt, connected or failed: the daemon serves
 * either way (rows wait in the queue and the spool while a failed one retries). */
bool batcher_settled(const struct batcher *b);
/* Rows committed, of all tables. */
uint64_t batcher_rows_written(const struct batcher *b);
/* Accepted rows the stop could not keep (the spool's disk full or unusable): the exit is not
 * clean. */
uint64_t batcher_rows_lost(const struct batcher *b);

/* For the writers (writer.c): the table's side of their work. */
/* A writer changed state (connected, idle, lost, failed to connect). */
void batcher_writer_changed(struct batcher_table *t);
/* Gives idle writers work, and spills what cannot be written now. */
void batcher_kick(struct batcher_table *t);
/* The batch an idle writer takes next (NULL: none), by turns from memory and from the spool. */
struct batch *batcher_next_batch(struct batcher_table *t);
/* Every range of batch is written; the writer has let go of it. */
void batcher_batch_written(struct batcher_table *t, struct batch *batch);
/* A handle or connection of the batcher's finished closing. */
void batcher_part_closed(struct batcher *b);

#endif
