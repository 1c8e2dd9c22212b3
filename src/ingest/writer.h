/* writer: one PostgreSQL connection of a table and the batch it is writing.
 *
 * An idle writer takes the batch its table's queue hands it (batcher_next_batch) and writes the
 * ranges of its stack one statement at a time. A range refused for its data is split in halves
 * until the bad row stands alone, or, when the refusal names an unknown user, the unknown users'
 * rows are asked for in one statement and set aside; bad rows go to usaged.rejects. An attempt
 * that fails for another reason lets the batch go (another writer, or the spool, takes it) and
 * retries after a doubling backoff; one whose outcome is unknown makes the batch idempotent. */
#ifndef USAGED_WRITER_H
#define USAGED_WRITER_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "batch.h"
#include "buf.h"
#include "config.h"
#include "pg.h"

struct batcher_table;

struct batcher_writer {
    struct batcher_table *t;
    struct pg_conn pg;
    struct batch *current; /* the batch being written (NULL: none) */
    bool writing;          /* an op is in flight */
    bool rejecting;        /* the op in flight stores bad rows in usaged.rejects */
    struct pg_op op;
    uv_buf_t copy_bufs[3]; /* header, rows, trailer */
    struct buf sql;        /* the statement of the op in flight */
    struct buf json;       /* rejected rows, as JSON; the user ids of a range, as uuid[] */
    const char *params[4];
    uint64_t op_started_us;
    uv_timer_t retry_timer; /* backoff after a failed attempt */
    uint32_t retry_ms;
};

/* index counts from 0 and names the connection in log lines ("ingest usage 1"). */
void writer_init(struct batcher_writer *w, struct batcher_table *t, uv_loop_t *loop,
                 const struct config *config, uint32_t index);
void writer_start(struct batcher_writer *w);
/* Takes a batch and starts writing it, when the writer is idle and one waits. */
void writer_kick(struct batcher_writer *w);
/* Connected: idle or running a statement. */
bool writer_up(const struct batcher_writer *w);
/* Asks the server to cancel the statement in flight, if any. */
void writer_cancel(struct batcher_writer *w);
/* Closes the timer and the connection; each calls batcher_part_closed when closed. */
void writer_close(struct batcher_writer *w);

#endif
