/* event: see event.h. */
#include "event.h"

#include <string.h>

#include "fields.h"

#define INT4_MAX 2147483647LL
#define TEXT(n, lo, hi)                                                                            \
    {                                                                                              \
        FIELDS_NAME(n), .kind = FIELDS_TEXT, .min_chars = lo, .max_chars = hi                      \
    }
#define INT4(n, lo, hi)                                                                            \
    {                                                                                              \
        FIELDS_NAME(n), .kind = FIELDS_INT, .min = lo, .max = hi                                   \
    }

static const char *const statuses[] = {"pending", "completed", "failed", "cancelled", NULL};

/* id first and created_at last in both tables: event_encode reads them before the rest. */
static const struct fields_spec usage_fields[] = {
    {FIELDS_NAME("id"), .kind = FIELDS_UUID},
    {FIELDS_NAME("user_id"), .kind = FIELDS_UUID, .required = true},
    {FIELDS_NAME("provider"), .kind = FIELDS_TEXT, .required = true, .min_chars = 1,
     .max_chars = 50},
    TEXT("endpoint", 0, 0),
    INT4("request_size", 0, INT4_MAX),
    INT4("response_size", 0, INT4_MAX),
    INT4("response_time_ms", 0, INT4_MAX),
    INT4("status_code", 100, 599),
    TEXT("error_message", 0, 0),
    {FIELDS_NAME("created_at"), .kind = FIELDS_TIMESTAMP},
};

static const struct fields_spec prompt_fields[] = {
    {FIELDS_NAME("id"), .kind = FIELDS_UUID},
    {FIELDS_NAME("user_id"), .kind = FIELDS_UUID, .required = true},
    TEXT("framework_id", 0, 50),
    TEXT("framework_name", 0, 100),
    TEXT("model", 0, 50),
    TEXT("provider", 0, 50),
    TEXT("user_input", 0, 0),
    TEXT("ai_response", 0, 0),
    TEXT("tone", 0, 50),
    TEXT("length", 0, 50),
    {FIELDS_NAME("temperature"), .kind = FIELDS_FLOAT, .min = 0, .max = 2},
    INT4("max_tokens", 0, INT4_MAX),
    {FIELDS_NAME("vibe_coding"), .kind = FIELDS_BOOL},
    INT4("processing_time_ms", 0, INT4_MAX),
    INT4("tokens_used", 0, INT4_MAX),
    {FIELDS_NAME("cost_usd"), .kind = FIELDS_DECIMAL},
    {FIELDS_NAME("status"), .kind = FIELDS_CHOICE, .required = true, .choices = statuses},
    TEXT("error_message", 0, 0),
    TEXT("error_code", 0, 50),
    {FIELDS_NAME("created_at"), .kind = FIELDS_TIMESTAMP},
};

#define USAGE_NFIELDS ((int)(sizeof(usage_fields) / sizeof(usage_fields[0])))
#define PROMPT_NFIELDS ((int)(sizeof(prompt_fields) / sizeof(prompt_fields[0])))

static const struct fields_table field_tables[EVENT_KIND_COUNT] = {
    [EVENT_USAGE] = {usage_fields, USAGE_NFIELDS, NULL},
    [EVENT_PROMPT] = {prompt_fields, PROMPT_NFIELDS, NULL},
};

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

/* Appends one value of a field other than id and created_at. */
static bool encode_value(const struct fields_spec *f, const msgpack_object *v, struct buf *out,
                         struct rpc_error *err)
{
    struct fields_value val;
    if (!fields_value(f, v, &val, err))
        return false;
    switch (f->kind) {
    case FIELDS_UUID:
        copy_uuid(out, val.uuid);
        return true;
    case FIELDS_TEXT:
    case FIELDS_CHOICE:
        copy_text(out, val.text.ptr, val.text.len);
        return true;
    case FIELDS_INT:
        copy_int4(out, (int32_t)val.i);
        return true;
    case FIELDS_FLOAT: {
        char text[64];
        size_t n =
            fields_double_to_decimal(val.d, v->type == MSGPACK_OBJECT_FLOAT32, text, sizeof(text));
        if (n == 0 || !copy_numeric(out, text, n, 60))
            return fields_error(err, f->name, "%s cannot be represented", f->name);
        return true;
    }
    case FIELDS_DECIMAL:
        if (!copy_numeric(out, val.decimal.text, val.decimal.len, 64))
            return fields_error(err, f->name, "%s must be a decimal number such as 0.0125",
                                f->name);
        return true;
    case FIELDS_BOOL:
        copy_bool(out, val.b);
        return true;
    case FIELDS_TIMESTAMP:
        break; /* created_at is encoded by the caller, which also derives its default */
    }
    return fields_error(err, f->name, "%s: unsupported field", f->name);
}

bool event_encode(enum event_kind kind, const msgpack_object *event, struct event_context *ctx,
                  struct buf *out, struct rpc_error *err)
{
    const struct fields_table *ft = &field_tables[kind];
    const struct fields_spec *specs = ft->specs;
    int nfields = ft->nspecs;
    const msgpack_object *values[FIELDS_MAX];

    if (event->type != MSGPACK_OBJECT_MAP)
        return fields_error(err, "", "an event must be a map of field names to values");
    if (!fields_collect(ft, &event->via.map, values, err))
        return false;

    /* id and created_at first: each can be the other's default. */
    struct fields_value id, created;
    bool has_id = values[0] != NULL;
    if (has_id && !fields_value(&specs[0], values[0], &id, err))
        return false;
    int ts_index = nfields - 1;
    int64_t created_us;
    uint64_t v7_ms;
    if (values[ts_index]) {
        if (!fields_value(&specs[ts_index], values[ts_index], &created, err))
            return false;
        created_us = created.unix_us;
    } else if (has_id && uuid_v7_time(id.uuid, &v7_ms)) {
        /* A 48-bit time reaches year 10889; created_at takes years 1 to 9999. */
        if (v7_ms > (uint64_t)FIELDS_TS_MAX_MS)
            return fields_error(err, specs[0].name,
                                "%s is a UUIDv7 of a time after year 9999, which created_at "
                                "would default to: send created_at",
                                specs[0].name);
        created_us = (int64_t)v7_ms * 1000;
    } else {
        created_us = ctx->now_ms * 1000;
    }
    if (!has_id)
        uuid_v7_next(ctx->ids, (uint64_t)ctx->now_ms, id.uuid);

    copy_row_begin(out, (uint16_t)nfields);
    copy_uuid(out, id.uuid);
    for (int i = 1; i < ts_index; i++) {
        if (!values[i]) {
            if (specs[i].kind == FIELDS_BOOL)
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
