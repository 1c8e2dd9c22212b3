/* copy: PostgreSQL's binary COPY format. Encodes rows straight into a buffer (no text escaping,
 * no allocation per row) and decodes a row back into JSON for the rejects table. Pure.
 *
 * A COPY stream is the header, then tuples (int16 field count, then per field an int32 length,
 * -1 for NULL, and the value in the type's binary send format), then the trailer (int16 -1). */
#ifndef USAGED_COPY_H
#define USAGED_COPY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define COPY_HEADER_LEN 19
#define COPY_TRAILER_LEN 2

extern const uint8_t copy_header[COPY_HEADER_LEN];
extern const uint8_t copy_trailer[COPY_TRAILER_LEN];

/* Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 00:00 UTC). */
#define COPY_PG_EPOCH_US 946684800000000LL

enum copy_type { COPY_UUID, COPY_TEXT, COPY_INT4, COPY_BOOL, COPY_NUMERIC, COPY_TIMESTAMPTZ };

struct copy_column {
    const char *name;
    enum copy_type type;
};

static inline void copy_row_begin(struct buf *b, uint16_t fields)
{
    buf_put_be16(b, fields);
}

static inline void copy_null(struct buf *b)
{
    buf_put_be32(b, 0xffffffffu);
}

static inline void copy_int4(struct buf *b, int32_t v)
{
    buf_put_be32(b, 4);
    buf_put_be32(b, (uint32_t)v);
}

static inline void copy_bool(struct buf *b, bool v)
{
    buf_put_be32(b, 1);
    buf_put_u8(b, v ? 1 : 0);
}

static inline void copy_uuid(struct buf *b, const uint8_t id[16])
{
    buf_put_be32(b, 16);
    buf_append(b, id, 16);
}

static inline void copy_text(struct buf *b, const char *s, size_t len)
{
    buf_put_be32(b, (uint32_t)len);
    buf_append(b, s, len);
}

/* A timestamptz from microseconds since the Unix epoch. */
static inline void copy_timestamptz(struct buf *b, int64_t unix_us)
{
    buf_put_be32(b, 8);
    buf_put_be64(b, (uint64_t)(unix_us - COPY_PG_EPOCH_US));
}

/* A numeric from a plain decimal string: digits, an optional '.' and digits, an optional leading
 * '-'. Returns false (writing nothing) when s is not such a string or has more than max_digits
 * digits. */
bool copy_numeric(struct buf *b, const char *s, size_t len, size_t max_digits);

/* Splits one tuple into its fields. Returns the number of fields, or -1 when malformed. */
struct copy_field {
    int32_t len; /* -1: NULL */
    const uint8_t *data;
};
int copy_row_fields(const uint8_t *row, size_t len, struct copy_field *fields, int max_fields,
                    size_t *row_len);

/* Formats a timestamptz value (microseconds since PostgreSQL's epoch) as
 * YYYY-MM-DD<sep>HH:MM:SS.ffffff<zone>, e.g. sep 'T' and zone "Z"; returns the length. */
size_t copy_format_timestamp(int64_t pg_us, char sep, const char *zone, char *out, size_t cap);

/* Appends the tuple as a JSON object keyed by column name. */
void copy_row_to_json(const struct copy_column *columns, int ncolumns, const uint8_t *row,
                      size_t len, struct buf *out);

#endif
