/* fields: one table-driven reading of the protocol's maps of named params (an event of the log
 * methods, the log methods' options, check's params).
 *
 * A table lists the names a map may hold, each with its kind, whether it is required, and its
 * bounds. fields_collect refuses a key that is not a string, not in the table or given twice,
 * and a required field that is absent or nil, each as invalid_field naming the field; fields_value
 * then reads one value by its spec. The two steps are apart so that a caller can read the values
 * in the order it needs (an event reads id and created_at first) and encode each as it goes.
 * fields_parse does both for a caller that wants every value at once. Pure. */
#ifndef USAGED_FIELDS_H
#define USAGED_FIELDS_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "errors.h"

/* Timestamps PostgreSQL and the partitions take: 0001-01-01 .. 9999-12-31 UTC, in ms. */
#define FIELDS_TS_MIN_MS (-62135596800000LL)
#define FIELDS_TS_MAX_MS (253402300799999LL)

enum fields_kind {
    FIELDS_UUID,      /* 36-char string or 16-byte bin */
    FIELDS_TEXT,      /* UTF-8 without NUL, its length bounded in characters */
    FIELDS_INT,       /* integer within [min, max] */
    FIELDS_FLOAT,     /* float or integer, finite, within [min, max] */
    FIELDS_DECIMAL,   /* float, integer or decimal string >= 0, read as decimal text */
    FIELDS_BOOL,      /* true or false */
    FIELDS_TIMESTAMP, /* timestamp extension (-1) or integer ms, years 1 to 9999 */
    FIELDS_CHOICE,    /* a string among choices */
};

struct fields_spec {
    const char *name;
    uint8_t name_len; /* strlen(name), so that matching a key costs one memcmp */
    enum fields_kind kind;
    bool required;                 /* absent or nil is invalid_field "NAME is required" */
    uint32_t min_chars, max_chars; /* FIELDS_TEXT; max 0: no limit beyond the message size */
    int64_t min, max;              /* FIELDS_INT, FIELDS_FLOAT */
    const char *const *choices;    /* FIELDS_CHOICE: the strings taken, NULL-terminated */
    const char *invalid; /* a bad value's message, in place of the kind's own; NULL: the kind's */
};

/* Fills name and name_len in a spec's initializer: {FIELDS_NAME("id"), .kind = FIELDS_UUID}. */
#define FIELDS_NAME(s) .name = s, .name_len = sizeof(s) - 1

/* Most fields a table may hold. */
#define FIELDS_MAX 32

struct fields_table {
    const struct fields_spec *specs;
    int nspecs;          /* <= FIELDS_MAX */
    const char *unknown; /* the message for an unknown key or one that is not a string; NULL:
                            "unknown field KEY" and "field names must be strings" */
};

/* A value read by fields_value, by the spec's kind. */
struct fields_value {
    union {
        uint8_t uuid[16];
        struct {
            const char *ptr;
            size_t len;
        } text;    /* FIELDS_TEXT: the client's bytes (valid UTF-8); FIELDS_CHOICE: the choice */
        int64_t i; /* FIELDS_INT */
        double d;  /* FIELDS_FLOAT */
        bool b;    /* FIELDS_BOOL */
        int64_t unix_us; /* FIELDS_TIMESTAMP: microseconds since 1970 */
        struct {
            char text[96];
            size_t len;
        } decimal; /* FIELDS_DECIMAL: plain decimal text, no exponent, not yet checked further */
    };
    uint32_t choice; /* FIELDS_CHOICE: the index in choices */
};

/* Reads a map's keys against the table: values[i] is the value of specs[i], NULL when absent or
 * nil (values holds t->nspecs entries). Refuses a key that is not a string, unknown or given
 * twice, then a required field that has no value. */
bool fields_collect(const struct fields_table *t, const msgpack_object_map *map,
                    const msgpack_object **values, struct rpc_error *err);

/* Reads one value (not nil) by its spec. */
bool fields_value(const struct fields_spec *f, const msgpack_object *v, struct fields_value *out,
                  struct rpc_error *err);

/* fields_collect, then fields_value for every field given, in the table's order. given[i] says
 * whether out[i] holds a value. */
bool fields_parse(const struct fields_table *t, const msgpack_object_map *map,
                  struct fields_value *out, bool *given, struct rpc_error *err);

/* Fills err with invalid_field naming field; the message is printf-formatted. Returns false. */
bool fields_error(struct rpc_error *err, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The shortest decimal text of d that reads back as d, with no exponent; single: d came as a
 * MessagePack float32, and its text is the shortest that reads back as that float (0.35f is
 * "0.35", not "0.3499999940395355"). 0 when it does not fit in cap (with its NUL) or needs more
 * than 40 decimals. */
size_t fields_double_to_decimal(double d, bool single, char *out, size_t cap);

#endif
