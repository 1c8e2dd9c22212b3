/* event: validation of the log methods' events, and their encoding into COPY rows.
 *
 * Each rule the database would enforce (types, NOT NULL, lengths in characters, ranges, CHECKs,
 * UTF-8 without NUL) is checked here, so that a bad event is refused at the socket with
 * invalid_field and never reaches a batch. A valid event is appended to a buffer as one binary
 * COPY tuple in the table's column order, with an id (a UUIDv7 when the client sent none) and a
 * created_at. Pure: the clock and the id generator are handed in. */
#ifndef USAGED_EVENT_H
#define USAGED_EVENT_H

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>

#include "buf.h"
#include "copy.h"
#include "errors.h"
#include "uuid.h"

enum event_kind { EVENT_USAGE = 0, EVENT_PROMPT, EVENT_KIND_COUNT };

/* A destination table: its name and the columns a COPY row holds, in order. */
struct event_table {
    const char *name;        /* short name, for stats and the rejects table */
    const char *relation;    /* schema-qualified */
    const char *column_list; /* "(id, user_id, ...)" for COPY and INSERT */
    const struct copy_column *columns;
    int ncolumns;
};

const struct event_table *event_table(enum event_kind kind);

/* Column positions the batcher reads back from encoded rows. */
enum {
    EVENT_USAGE_COL_USER_ID = 1,
    EVENT_USAGE_COL_PROVIDER = 2,
    EVENT_USAGE_COL_STATUS_CODE = 7,
    EVENT_USAGE_COL_CREATED_AT = 9,
};

struct event_context {
    int64_t now_ms;          /* receive time, the default created_at */
    struct uuid_v7_gen *ids; /* ids for events that have none */
};

/* Validates one event (a map) and appends its COPY tuple to out. On error, out may hold a partial
 * tuple (the caller truncates) and err is invalid_field naming the field. */
bool event_encode(enum event_kind kind, const msgpack_object *event, struct event_context *ctx,
                  struct buf *out, struct rpc_error *err);

/* The values of a usage row the daemon writes itself (a denied check, with log_denied). */
struct event_usage_row {
    const uint8_t *user_id;
    const char *provider;
    size_t provider_len;
    int32_t status_code;
    const char *error_message;
    int64_t created_at_ms;
};

void event_encode_usage_row(const struct event_usage_row *row, struct event_context *ctx,
                            struct buf *out);

#endif
