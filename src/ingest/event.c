/* event: see event.h. */
#include "event.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "utf8.h"

enum field_kind {
    F_UUID,    /* 36-char string or 16-byte bin */
    F_TEXT,    /* UTF-8 string, length limits in characters */
    F_INT4,    /* integer within [min, max] */
    F_FLOAT,   /* float or integer within [min, max], stored as numeric */
    F_DECIMAL, /* float, integer or decimal string >= 0, stored as numeric */
    F_BOOL,
    F_TIMESTAMP, /* timestamp extension or integer milliseconds */
    F_STATUS,    /* one of the prompt statuses */
};

struct field_spec {
    const char *name;
    uint8_t name_len; /* strlen(name), so that matching a key costs one memcmp */
    enum field_kind kind;
    bool required;
    uint32_t min_chars, max_chars; /* F_TEXT; max 0: no limit beyond the message size */
    int64_t min, max;              /* F_INT4, F_FLOAT */
};

#define INT4_MAX 2147483647LL
#define N(name) name, sizeof(name) - 1

static const struct field_spec usage_fields[] = {
    {N("id"), F_UUID, false, 0, 0, 0, 0},
    {N("user_id"), F_UUID, true, 0, 0, 0, 0},
    {N("provider"), F_TEXT, true, 1, 50, 0, 0},
    {N("endpoint"), F_TEXT, false, 0, 0, 0, 0},
    {N("request_size"), F_INT4, false, 0, 0, 0, INT4_MAX},
    {N("response_size"), F_INT4, false, 0, 0, 0, INT4_MAX},
    {N("response_time_ms"), F_INT4, false, 0, 0, 0, INT4_MAX},
    {N("status_code"), F_INT4, false, 0, 0, 100, 599},
    {N("error_message"), F_TEXT, false, 0, 0, 0, 0},
    {N("created_at"), F_TIMESTAMP, false, 0, 0, 0, 0},
};

static const struct field_spec prompt_fields[] = {
    {N("id"), F_UUID, false, 0, 0, 0, 0},
    {N("user_id"), F_UUID, true, 0, 0, 0, 0},
    {N("framework_id"), F_TEXT, false, 0, 50, 0, 0},
    {N("framework_name"), F_TEXT, false, 0, 100, 0, 0},
    {N("model"), F_TEXT, false, 0, 50, 0, 0},
    {N("provider"), F_TEXT, false, 0, 50, 0, 0},
    {N("user_input"), F_TEXT, false, 0, 0, 0, 0},
    {N("ai_response"), F_TEXT, false, 0, 0, 0, 0},
    {N("tone"), F_TEXT, false, 0, 50, 0, 0},
    {N("length"), F_TEXT, false, 0, 50, 0, 0},
    {N("temperature"), F_FLOAT, false, 0, 0, 0, 2},
    {N("max_tokens"), F_INT4, false, 0, 0, 0, INT4_MAX},
    {N("vibe_coding"), F_BOOL, false, 0, 0, 0, 0},
    {N("processing_time_ms"), F_INT4, false, 0, 0, 0, INT4_MAX},
    {N("tokens_used"), F_INT4, false, 0, 0, 0, INT4_MAX},
    {N("cost_usd"), F_DECIMAL, false, 0, 0, 0, 0},
    {N("status"), F_STATUS, true, 0, 0, 0, 0},
    {N("error_message"), F_TEXT, false, 0, 0, 0, 0},
    {N("error_code"), F_TEXT, false, 0, 50, 0, 0},
    {N("created_at"), F_TIMESTAMP, false, 0, 0, 0, 0},
};

#define USAGE_NFIELDS ((int)(sizeof(usage_fields) / sizeof(usage_fields[0])))
#define PROMPT_NFIELDS ((int)(sizeof(prompt_fields) / sizeof(prompt_fields[0])))
#define MAX_FIELDS 20

static const struct copy_column usage_columns[] = {
    {"id", COPY_UUID},
    {"user_id", COPY_UUID},
    {"provider", COPY_TEXT},
    {"endpoint", COPY_TEXT},
    {"request_size", COPY_INT4},
    {"response_size", COPY_INT4},
    {"response_time_ms", COPY_INT4},
    {"status_code", COPY_INT4},
    {"error_message", COPY_TEXT},
    {"created_at", COPY_TIMESTAMPTZ},
};

static const struct copy_column prompt_columns[] = {
    {"id", COPY_UUID},
    {"user_id", COPY_UUID},
    {"framework_id", COPY_TEXT},
    {"framework_name", COPY_TEXT},
    {"model", COPY_TEXT},
    {"provider", COPY_TEXT},
    {"user_input", COPY_TEXT},
    {"ai_response", COPY_TEXT},
    {"tone", COPY_TEXT},
    {"length", COPY_TEXT},
    {"temperature", COPY_NUMERIC},
    {"max_tokens", COPY_INT4},
    {"vibe_coding", COPY_BOOL},
    {"processing_time_ms", COPY_INT4},
    {"tokens_used", COPY_INT4},
    {"cost_usd", COPY_NUMERIC},
    {"status", COPY_TEXT},
    {"error_message", COPY_TEXT},
    {"error_code", COPY_TEXT},
    {"created_at", COPY_TIMESTAMPTZ},
};

static const struct event_table tables[EVENT_KIND_COUNT] = {
    [EVENT_USAGE] = {"api_usage_logs", "public.api_usage_logs",
                     "(id, user_id, provider, endpoint, request_size, response_size, "
                     "response_time_ms, status_code, error_message, created_at)",
                     usage_columns, USAGE_NFIELDS},
    [EVENT_PROMPT] = {"prompt_history", "public.prompt_history",
                      "(id, user_id, framework_id, framework_name, model, provider, user_input, "
                      "ai_response, tone, length, temperature, max_tokens, vibe_coding, "
                      "processing_time_ms, tokens_used, cost_usd, status, error_message, "
                      "error_code, created_at)",
                      prompt_columns, PROMPT_NFIELDS},
};

const struct event_table *event_table(enum event_kind kind)
{
    return &tables[kind];
}

/* Timestamps PostgreSQL and the partitions take: 0001-01-01 .. 9999-12-31 UTC. */
#define TS_MIN_MS (-62135596800000LL)
#define TS_MAX_MS (253402300799999LL)

static bool bad_field(struct rpc_error *err, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static bool bad_field(struct rpc_error *err, const char *field, const char *fmt, ...)
{
    err->code = RPC_INVALID_FIELD;
    err->retry_after_ms = 0;
    snprintf(err->field_name, sizeof(err->field_name), "%s", field);
    err->field = err->field_name;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    return false;
}

static bool get_int(const msgpack_object *v, int64_t *out)
{
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (v->via.u64 > INT64_MAX)
            return false;
        *out = (int64_t)v->via.u64;
        return true;
    }
    if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = v->via.i64;
        return true;
    }
    return false;
}

static bool parse_uuid_value(const msgpack_object *v, uint8_t out[16])
{
    if (v->type == MSGPACK_OBJECT_STR)
        return uuid_parse(v->via.str.ptr, v->via.str.size, out);
    if (v->type == MSGPACK_OBJECT_BIN && v->via.bin.size == 16) {
        memcpy(out, v->via.bin.ptr, 16);
        return true;
    }
    return false;
}

/* A timestamp extension (type -1: 32, 64 or 96 bits) or integer ms, to microseconds. */
static bool parse_timestamp(const msgpack_object *v, int64_t *unix_us)
{
    int64_t ms;
    if (get_int(v, &ms)) {
        if (ms < TS_MIN_MS || ms > TS_MAX_MS)
            return false;
        *unix_us = ms * 1000;
        return true;
    }
    if (v->type != MSGPACK_OBJECT_EXT || v->via.ext.type != -1)
        return false;
    const uint8_t *p = (const uint8_t *)v->via.ext.ptr;
    int64_t sec;
    uint32_t nsec;
    switch (v->via.ext.size) {
    case 4:
        sec = (int64_t)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]);
        nsec = 0;
        break;
    case 8: {
        uint64_t d = 0;
        for (int i = 0; i < 8; i++)
            d = d << 8 | p[i];
        nsec = (uint32_t)(d >> 34);
        sec = (int64_t)(d & 0x3ffffffffULL);
        break;
    }
    case 12: {
        nsec = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
        uint64_t s = 0;
        for (int i = 4; i < 12; i++)
            s = s << 8 | p[i];
        sec = (int64_t)s;
        break;
    }
    default:
        return false;
    }
    if (nsec > 999999999u || sec < TS_MIN_MS / 1000 || sec > TS_MAX_MS / 1000)
        return false;
    *unix_us = sec * 1000000 + nsec / 1000;
    return true;
}

/* The shortest decimal form of a double that reads back as the same double. */
static size_t double_to_decimal(double d, char *out, size_t cap)
{
    for (int prec = 15; prec <= 17; prec++) {
        int n = snprintf(out, cap, "%.*g", prec, d);
        if (n > 0 && strtod(out, NULL) == d) {
            /* %g may use an exponent; expand it so that copy_numeric can read it. */
            if (strchr(out, 'e')) {
                int decimals = 0;
                const char *e = strchr(out, 'e');
                int exp = atoi(e + 1);
                const char *dot = strchr(out, '.');
                int mant_decimals = dot && dot < e ? (int)(e - dot - 1) : 0;
                decimals = mant_decimals - exp;
                if (decimals < 0)
                    decimals = 0;
                if (decimals > 40)
                    return 0;
                n = snprintf(out, cap, "%.*f", decimals, d);
            }
            return n > 0 && (size_t)n < cap ? (size_t)n : 0;
        }
    }
    return 0;
}

static bool encode_value(const struct field_spec *f, const msgpack_object *v, struct buf *out,
                         struct rpc_error *err)
{
    int64_t i;
    size_t chars;
    switch (f->kind) {
    case F_UUID: {
        uint8_t id[16];
        if (!parse_uuid_value(v, id))
            return bad_field(err, f->name, "%s must be a uuid (36-char string or 16-byte bin)",
                             f->name);
        copy_uuid(out, id);
        return true;
    }
    case F_TEXT:
        if (v->type != MSGPACK_OBJECT_STR)
            return bad_field(err, f->name, "%s must be a string", f->name);
        if (!utf8_valid(v->via.str.ptr, v->via.str.size, &chars))
            return bad_field(err, f->name, "%s must be valid UTF-8 without NUL", f->name);
        if (chars < f->min_chars)
            return bad_field(err, f->name, "%s must not be empty", f->name);
        if (f->max_chars && chars > f->max_chars)
            return bad_field(err, f->name, "%s is longer than %u characters", f->name,
                             f->max_chars);
        copy_text(out, v->via.str.ptr, v->via.str.size);
        return true;
    case F_INT4:
        if (!get_int(v, &i))
            return bad_field(err, f->name, "%s must be an integer", f->name);
        if (i < f->min || i > f->max)
            return bad_field(err, f->name, "%s must be between %lld and %lld", f->name,
                             (long long)f->min, (long long)f->max);
        copy_int4(out, (int32_t)i);
        return true;
    case F_FLOAT: {
        double d;
        if (get_int(v, &i))
            d = (double)i;
        else if (v->type == MSGPACK_OBJECT_FLOAT32 || v->type == MSGPACK_OBJECT_FLOAT64)
            d = v->via.f64;
        else
            return bad_field(err, f->name, "%s must be a number", f->name);
        if (!isfinite(d) || d < (double)f->min || d > (double)f->max)
            return bad_field(err, f->name, "%s must be between %lld and %lld", f->name,
                             (long long)f->min, (long long)f->max);
        char text[64];
        size_t n = double_to_decimal(d, text, sizeof(text));
        if (n == 0 || !copy_numeric(out, text, n, 60))
            return bad_field(err, f->name, "%s cannot be represented", f->name);
        return true;
    }
    case F_DECIMAL: {
        char text[96];
        size_t n;
        if (get_int(v, &i)) {
            if (i < 0)
                return bad_field(err, f->name, "%s must be >= 0", f->name);
            n = (size_t)snprintf(text, sizeof(text), "%lld", (long long)i);
        } else if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) { /* above INT64_MAX */
            n = (size_t)snprintf(text, sizeof(text), "%llu", (unsigned long long)v->via.u64);
        } else if (v->type == MSGPACK_OBJECT_FLOAT32 || v->type == MSGPACK_OBJECT_FLOAT64) {
            if (!isfinite(v->via.f64) || v->via.f64 < 0)
                return bad_field(err, f->name, "%s must be a finite number >= 0", f->name);
            n = double_to_decimal(v->via.f64, text, sizeof(text));
            if (n == 0)
                return bad_field(err, f->name, "%s cannot be represented", f->name);
        } else if (v->type == MSGPACK_OBJECT_STR) {
            if (v->via.str.size == 0 || v->via.str.size > 64 || v->via.str.ptr[0] == '-')
                return bad_field(err, f->name,
                                 "%s must be a decimal string >= 0 of at most 64 characters",
                                 f->name);
            memcpy(text, v->via.str.ptr, v->via.str.size);
            n = v->via.str.size;
        } else {
            return bad_field(err, f->name, "%s must be a number or a decimal string", f->name);
        }
        if (!copy_numeric(out, text, n, 64))
            return bad_field(err, f->name, "%s must be a decimal number such as 0.0125", f->name);
        return true;
    }
    case F_BOOL:
        if (v->type != MSGPACK_OBJECT_BOOLEAN)
            return bad_field(err, f->name, "%s must be true or false", f->name);
        copy_bool(out, v->via.boolean);
        return true;
    case F_STATUS: {
        static const char *const statuses[] = {"pending", "completed", "failed", "cancelled"};
        if (v->type == MSGPACK_OBJECT_STR) {
            for (size_t k = 0; k < 4; k++) {
                if (v->via.str.size == strlen(statuses[k]) &&
                    memcmp(v->via.str.ptr, statuses[k], v->via.str.size) == 0) {
                    copy_text(out, statuses[k], v->via.str.size);
                    return true;
                }
            }
        }
        return bad_field(err, f->name, "%s must be pending, completed, failed or cancelled",
                         f->name);
    }
    case F_TIMESTAMP:
        break; /* encoded by the caller, which also derives the default */
    }
    return bad_field(err, f->name, "%s: unsupported field", f->name);
}

static int find_field(const struct field_spec *specs, int n, const msgpack_object_str *key)
{
    for (int i = 0; i < n; i++)
        if (specs[i].name_len == key->size && memcmp(specs[i].name, key->ptr, key->size) == 0)
            return i;
    return -1;
}

bool event_encode(enum event_kind kind, const msgpack_object *event, struct event_context *ctx,
                  struct buf *out, struct rpc_error *err)
{
    const struct field_spec *specs = kind == EVENT_USAGE ? usage_fields : prompt_fields;
    int nfields = kind == EVENT_USAGE ? USAGE_NFIELDS : PROMPT_NFIELDS;
    const msgpack_object *values[MAX_FIELDS] = {0};
    bool seen[MAX_FIELDS] = {0};

    if (event->type != MSGPACK_OBJECT_MAP)
        return bad_field(err, "", "an event must be a map of field names to values");
    for (uint32_t k = 0; k < event->via.map.size; k++) {
        const msgpack_object *key = &event->via.map.ptr[k].key;
        const msgpack_object *val = &event->via.map.ptr[k].val;
        if (key->type != MSGPACK_OBJECT_STR)
            return bad_field(err, "", "field names must be strings");
        int idx = find_field(specs, nfields, &key->via.str);
        if (idx < 0) {
            char name[64];
            size_t n = key->via.str.size < sizeof(name) - 1 ? key->via.str.size : sizeof(name) - 1;
            memcpy(name, key->via.str.ptr, n);
            name[n] = '\0';
            /* The name goes back to the client as it came, valid UTF-8 or not: cut it to
             * ASCII-safe bytes so that the error itself is valid. */
            for (size_t c = 0; c < n; c++)
                if ((unsigned char)name[c] < 0x20 || (unsigned char)name[c] > 0x7e)
                    name[c] = '?';
            return bad_field(err, name, "unknown field %s", name);
        }
        if (seen[idx])
            return bad_field(err, specs[idx].name, "%s is given twice", specs[idx].name);
        seen[idx] = true;
        if (val->type != MSGPACK_OBJECT_NIL)
            values[idx] = val;
    }
    for (int i = 0; i < nfields; i++)
        if (specs[i].required && !values[i])
            return bad_field(err, specs[i].name, "%s is required", specs[i].name);

    /* id and created_at first: each can be the other's default. */
    uint8_t id[16];
    bool has_id = values[0] != NULL;
    if (has_id && !parse_uuid_value(values[0], id))
        return bad_field(err, "id", "id must be a uuid (36-char string or 16-byte bin)");
    int ts_index = nfields - 1;
    int64_t created_us;
    uint64_t v7_ms;
    if (values[ts_index]) {
        if (!parse_timestamp(values[ts_index], &created_us))
            return bad_field(err, "created_at",
                             "created_at must be a timestamp (ext -1) or integer ms between "
                             "years 1 and 9999");
    } else if (has_id && uuid_v7_time(id, &v7_ms)) {
        created_us = (int64_t)v7_ms * 1000;
    } else {
        created_us = ctx->now_ms * 1000;
    }
    if (!has_id)
        uuid_v7_next(ctx->ids, (uint64_t)ctx->now_ms, id);

    copy_row_begin(out, (uint16_t)nfields);
    copy_uuid(out, id);
    for (int i = 1; i < ts_index; i++) {
        if (!values[i]) {
            if (specs[i].kind == F_BOOL)
                copy_bool(out, false); /* vibe_coding: NOT NULL DEFAULT false */
            else
                copy_null(out);
            continue;
        }
        if (!encode_value(&specs[i], values[i], out, err))
            return false;
    }
    copy_timestamptz(out, created_us);
    return true;
}

void event_encode_usage_row(const struct event_usage_row *row, struct event_context *ctx,
                            struct buf *out)
{
    uint8_t id[16];
    uuid_v7_next(ctx->ids, (uint64_t)ctx->now_ms, id);
    copy_row_begin(out, USAGE_NFIELDS);
    copy_uuid(out, id);
    copy_uuid(out, row->user_id);
    copy_text(out, row->provider, row->provider_len);
    copy_null(out); /* endpoint */
    copy_null(out); /* request_size */
    copy_null(out); /* response_size */
    copy_null(out); /* response_time_ms */
    copy_int4(out, row->status_code);
    if (row->error_message)
        copy_text(out, row->error_message, strlen(row->error_message));
    else
        copy_null(out);
    copy_timestamptz(out, row->created_at_ms * 1000);
}
