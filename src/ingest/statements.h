/* statements: the SQL text the ingest writers send, built from plain inputs.
 *
 * A batch's range is written with one COPY ... FROM STDIN (FORMAT binary), or, once the batch may
 * be stored already (a commit whose outcome was unknown, a repeated id), through a staging table
 * with INSERT ... ON CONFLICT DO NOTHING. A usage range also bumps api_configurations (calls and
 * last use per user and provider) in the same implicit transaction. Every statement that stores
 * rows commits with synchronous_commit on, whatever the server's setting. Pure: no connection, no
 * clock; string literals are escaped here, in the E'' form every server setting reads alike. */
#ifndef USAGED_STATEMENTS_H
#define USAGED_STATEMENTS_H

#include <stdbool.h>
#include <stdint.h>

#include "batch.h"
#include "buf.h"
#include "event.h"

/* Replaces sql with the statement that writes rows [lo, hi) of batch into kind's table, NUL
 * included. */
void statements_copy(struct buf *sql, enum event_kind kind, const struct batch *batch, uint32_t lo,
                     uint32_t hi, bool idempotent);

/* Replaces out with a uuid[] literal ({...}) of the user ids of rows [lo, hi), NUL included. */
void statements_user_ids(struct buf *out, const struct batch *batch, uint32_t lo, uint32_t hi);

/* $1: a uuid[] of user ids. Returns the rows of those that are not in auth.users. */
extern const char statements_unknown_users[];

/* $1: table name, $2: a JSON array of rows, $3: the error, $4: its SQLSTATE. Stores each row in
 * usaged.rejects, unless a row of that id is there already. */
extern const char statements_rejects[];

#endif
