/* batch: the rows of one COPY batch and the bookkeeping of writing them, without I/O.
 *
 * A batch holds binary COPY tuples back to back with the offset of each, the durable requests
 * answered when it is kept, and a stack of ranges of rows still to write. A range refused for its
 * data is split in halves until the bad row stands alone (batch_split_top), or, when the refusal
 * named an unknown user, its rows are reordered so that the unknown users' rows stand apart
 * (batch_set_aside). When a waiting batch is due for the spool is decided here too
 * (batch_spill_due). Pure: the clock is handed in. */
#ifndef USAGED_BATCH_H
#define USAGED_BATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "errors.h"

struct batcher_table;
struct batcher_writer;
struct spool_record;

/* A durable request waiting for its batch. done runs once: err NULL when the batch is kept
 * (committed, or fsync'd in the spool), else why it was not. The owner of the request embeds
 * this in its own record and frees that in done. */
struct batch_ack {
    void (*done)(struct batch_ack *ack, const struct rpc_error *err);
};

struct batch_range {
    uint32_t lo, hi;
    bool reject; /* rows refused already: straight to usaged.rejects */
};

struct batch {
    struct batcher_table *t;
    struct batcher_writer *writer; /* the writer it is assigned to; NULL: any may take it */
    struct buf rows;               /* COPY tuples, back to back */
    uint32_t *row_off;             /* start of each row in rows; row_off[nrows] is rows.len */
    uint32_t nrows;
    uint32_t cap_rows;
    struct batch_ack **acks; /* durable requests answered when this batch is done */
    uint32_t nacks, cap_acks;
    uint64_t first_row_ms;       /* loop time of the first row */
    uint64_t sealed_ms;          /* loop time it was sealed */
    struct spool_record *replay; /* a record read back from the spool: never spilled again */
    bool idempotent;             /* write through a staging table with ON CONFLICT DO NOTHING */
    struct batch_range *ranges;  /* rows still to write: a stack, split on data errors */
    uint32_t nranges, cap_ranges;
    char *reject_error; /* what refused the rows of the reject ranges (NULL: none) */
    char reject_sqlstate[6];
    struct batch *next;
};

/* A batch with room for expected_rows offsets (0: a small default). */
struct batch *batch_new(struct batcher_table *t, uint32_t expected_rows);
void batch_free(struct batch *batch);

/* Makes room for one more row offset; the row's bytes are then appended to rows, and
 * batch_end_row records where it ends. */
void batch_reserve_row(struct batch *batch);
void batch_end_row(struct batch *batch);
/* Drops the rows from row `nrows` on, whose bytes start at `len`. */
void batch_truncate(struct batch *batch, uint32_t nrows, size_t len);

void batch_push_range(struct batch *batch, uint32_t lo, uint32_t hi, bool reject);
void batch_add_ack(struct batch *batch, struct batch_ack *ack);
/* Runs every ack's done with err (NULL: kept) and forgets them. */
void batch_answer_acks(struct batch *batch, const struct rpc_error *err);

/* The range on top of the stack: the one written next. */
static inline struct batch_range *batch_top(struct batch *batch)
{
    return &batch->ranges[batch->nranges - 1];
}

/* Replaces the top range, of two rows or more, by its halves, the first half on top. */
void batch_split_top(struct batch *batch);

/* The user id of row i (the column after the id, in both tables); false when the row has none. */
bool batch_row_user_id(const struct batch *batch, uint32_t i, uint8_t id[16]);

/* The top range was refused for a user that does not exist. Reorders its rows so that those of
 * the users in unknown (nunknown ids of 16 bytes, sorted by memcmp) come last, and replaces it by
 * a range of the others (when there are any) under a reject range of those. Returns how many rows
 * are not set aside. */
uint32_t batch_set_aside(struct batch *batch, const uint8_t (*unknown)[16], size_t nunknown);

/* What decides whether a table's waiting batches go to the spool. */
struct batch_spill_state {
    uint64_t now_ms;
    uint32_t spill_after_ms; /* a table failing this long spills */
    uint64_t failing_since;  /* loop time of the first failed attempt in a row; 0: none */
    uint32_t writers_up;     /* connected writers */
    uint32_t writers_connecting;
    bool drain_expired; /* drain_timeout_s passed: everything goes */
};

/* Whether a batch sealed at sealed_ms should be spilled now: when the drain is out of time, the
 * table has failed for spill_after_ms, no writer is up or connecting, or every writer is still
 * connecting after a short grace (the smaller of spill_after_ms and 200 ms) for a quick
 * reconnect. */
bool batch_spill_due(const struct batch_spill_state *s, uint64_t sealed_ms);

#endif
