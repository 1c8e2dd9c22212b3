/* statements: see statements.h. */
#include "statements.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "copy.h"
#include "uuid.h"
#include "xalloc.h"

const char statements_unknown_users[] = "SELECT public.usaged_unknown_users($1::uuid[])";

/* A durable ack is usaged's own promise, whatever the server's synchronous_commit says: every
 * transaction that stores rows commits with it on (one WAL flush per statement). */
#define SYNC_COMMIT "SET LOCAL synchronous_commit TO on;\n"

const char statements_rejects[] =
    "INSERT INTO usaged.rejects (table_name, row_data, error, sqlstate) "
    "SELECT $1, r, $3, $4 FROM (SELECT set_config('synchronous_commit', 'on', true)) AS sync, "
    "jsonb_array_elements($2::jsonb) AS r "
    "WHERE NOT EXISTS (SELECT 1 FROM usaged.rejects AS x "
    "WHERE x.table_name = $1 AND x.row_data->>'id' = r->>'id')";

static void append_str(struct buf *b, const char *s)
{
    buf_append(b, s, strlen(s));
}

/* A string constant in the escape form: ' and \ doubled, read the same whatever
 * standard_conforming_strings says. */
static void append_literal(struct buf *b, const uint8_t *s, size_t len)
{
    append_str(b, "E'");
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '\'' || s[i] == '\\')
            buf_put_u8(b, s[i]);
        buf_put_u8(b, s[i]);
    }
    buf_put_u8(b, '\'');
}

static uint32_t be32_at(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* One (user, provider) pair of a batch and what it adds to api_configurations. */
struct bump {
    const uint8_t *user_id;
    const uint8_t *provider;
    int32_t provider_len;
    uint32_t count;
    int64_t last_pg_us; /* latest created_at, PostgreSQL epoch */
    uint32_t hash;
};

static uint32_t bump_hash(const uint8_t *user, const uint8_t *provider, int32_t len)
{
    uint32_t h = 2166136261u;
    for (int i = 0; i < 16; i++)
        h = (h ^ user[i]) * 16777619u;
    for (int32_t i = 0; i < len; i++)
        h = (h ^ provider[i]) * 16777619u;
    return h;
}

/* Appends the UPDATE of api_configurations for rows [lo, hi) of a usage batch, counted in C:
 * rows with status 429 (rate limited, including usaged's own denial records) are not calls. */
static void append_usage_bump(struct buf *sql, const struct batch *batch, uint32_t lo, uint32_t hi)
{
    int ncolumns = event_table(EVENT_USAGE)->ncolumns;
    uint32_t rows = hi - lo, cap = 16;
    while (cap < rows * 2)
        cap *= 2;
    struct bump *table = xcalloc(cap, sizeof(*table));
    uint32_t distinct = 0;
    for (uint32_t r = lo; r < hi; r++) {
        struct copy_field f[16];
        size_t row_len;
        const uint8_t *row = batch->rows.data + batch->row_off[r];
        if (copy_row_fields(row, batch->row_off[r + 1] - batch->row_off[r], f, 16, &row_len) !=
            ncolumns)
            continue;
        const struct copy_field *status = &f[EVENT_USAGE_COL_STATUS_CODE];
        if (status->len == 4 && be32_at(status->data) == 429)
            continue;
        const uint8_t *user = f[EVENT_USAGE_COL_USER_ID].data;
        const struct copy_field *prov = &f[EVENT_USAGE_COL_PROVIDER];
        const uint8_t *ts = f[EVENT_USAGE_COL_CREATED_AT].data;
        int64_t pg_us = (int64_t)((uint64_t)be32_at(ts) << 32 | be32_at(ts + 4));
        uint32_t h = bump_hash(user, prov->data, prov->len);
        uint32_t i = h & (cap - 1);
        while (table[i].user_id && !(table[i].hash == h && table[i].provider_len == prov->len &&
                                     memcmp(table[i].user_id, user, 16) == 0 &&
                                     memcmp(table[i].provider, prov->data, (size_t)prov->len) == 0))
            i = (i + 1) & (cap - 1);
        if (!table[i].user_id) {
            table[i] = (struct bump){user, prov->data, prov->len, 0, pg_us, h};
            distinct++;
        }
        table[i].count++;
        if (pg_us > table[i].last_pg_us)
            table[i].last_pg_us = pg_us;
    }
    if (distinct > 0) {
        /* Four array literals unnested, rather than a VALUES list: PostgreSQL parses and plans
         * one constant per column instead of thousands of row expressions. Saturating: an
         * overflowing counter must not fail the batch as if its rows were bad. */
        struct buf ids, provs, counts, times;
        buf_init(&ids);
        buf_init(&provs);
        buf_init(&counts);
        buf_init(&times);
        bool first = true;
        for (uint32_t i = 0; i < cap; i++) {
            if (!table[i].user_id)
                continue;
            char id[UUID_STRING_LEN + 1], ts[48], num[16];
            uuid_format(table[i].user_id, id);
            copy_format_timestamp(table[i].last_pg_us, ' ', "+00", ts, sizeof(ts));
            snprintf(num, sizeof(num), "%u", table[i].count);
            const char *sep = first ? "{" : ",";
            append_str(&ids, sep);
            append_str(&ids, id);
            append_str(&counts, sep);
            append_str(&counts, num);
            append_str(&times, sep);
            append_str(&times, "\"");
            append_str(&times, ts);
            append_str(&times, "\"");
            /* An array element in double quotes, with " and \ escaped (any other byte is taken
             * as it is; providers are valid UTF-8 without NUL). */
            append_str(&provs, sep);
            buf_put_u8(&provs, '"');
            for (int32_t k = 0; k < table[i].provider_len; k++) {
                uint8_t ch = table[i].provider[k];
                if (ch == '"' || ch == '\\')
                    buf_put_u8(&provs, '\\');
                buf_put_u8(&provs, ch);
            }
            buf_put_u8(&provs, '"');
            first = false;
        }
        struct buf *arrays[4] = {&ids, &provs, &counts, &times};
        static const char *const casts[4] = {"::uuid[], ", "::text[], ", "::int[], ",
                                             "::timestamptz[]"};
        append_str(sql, ";\nUPDATE public.api_configurations AS c SET usage_count = "
                        "LEAST(c.usage_count::bigint + v.n, 2147483647), "
                        "last_used_at = GREATEST(c.last_used_at, v.t) FROM unnest(");
        for (int a = 0; a < 4; a++) {
            buf_put_u8(arrays[a], '}');
            append_literal(sql, arrays[a]->data, arrays[a]->len);
            append_str(sql, casts[a]);
            buf_free(arrays[a]);
        }
        append_str(sql, ") AS v(user_id, provider, n, t) WHERE c.user_id = v.user_id AND "
                        "c.provider = v.provider");
    }
    free(table);
}

void statements_copy(struct buf *sql, enum event_kind kind, const struct batch *batch, uint32_t lo,
                     uint32_t hi, bool idempotent)
{
    const struct event_table *tab = event_table(kind);
    buf_clear(sql);
    /* With a second statement, the string runs as one implicit transaction, which SET LOCAL
     * applies to. */
    append_str(sql, SYNC_COMMIT);
    if (!idempotent) {
        append_str(sql, "COPY ");
        append_str(sql, tab->relation);
        append_str(sql, " ");
        append_str(sql, tab->column_list);
        append_str(sql, " FROM STDIN (FORMAT binary)");
        if (kind == EVENT_USAGE)
            append_usage_bump(sql, batch, lo, hi);
    } else {
        /* Idempotent: stage the rows, insert what is not there yet, bump for what was
         * inserted. The temporary table lives as long as the connection; ON COMMIT DELETE ROWS
         * empties it with every transaction. */
        char stage[64];
        snprintf(stage, sizeof(stage), "usaged_stage_%s", tab->name);
        append_str(sql, "CREATE TEMP TABLE IF NOT EXISTS ");
        append_str(sql, stage);
        append_str(sql, " (LIKE ");
        append_str(sql, tab->relation);
        append_str(sql, " INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;\nCOPY ");
        append_str(sql, stage);
        append_str(sql, " ");
        append_str(sql, tab->column_list);
        append_str(sql, " FROM STDIN (FORMAT binary);\n");
        if (kind == EVENT_USAGE)
            append_str(sql, "WITH ins AS (");
        append_str(sql, "INSERT INTO ");
        append_str(sql, tab->relation);
        append_str(sql, " ");
        append_str(sql, tab->column_list);
        append_str(sql, " SELECT ");
        /* the column list without its parentheses */
        append_str(sql, tab->column_list + 1);
        sql->len--; /* drop ')' */
        append_str(sql, " FROM ");
        append_str(sql, stage);
        append_str(sql, " ON CONFLICT DO NOTHING");
        if (kind == EVENT_USAGE)
            append_str(sql, " RETURNING user_id, provider, created_at, status_code)\n"
                            "UPDATE public.api_configurations AS c SET usage_count = "
                            "LEAST(c.usage_count::bigint + v.n, 2147483647), last_used_at = "
                            "GREATEST(c.last_used_at, v.t) FROM (SELECT user_id, "
                            "provider, count(*)::int AS n, max(created_at) AS t FROM ins WHERE "
                            "status_code IS DISTINCT FROM 429 GROUP BY user_id, provider) AS v "
                            "WHERE c.user_id = v.user_id AND c.provider = v.provider");
    }
    buf_put_u8(sql, '\0');
}

void statements_user_ids(struct buf *out, const struct batch *batch, uint32_t lo, uint32_t hi)
{
    buf_clear(out);
    buf_put_u8(out, '{');
    for (uint32_t i = lo; i < hi; i++) {
        uint8_t id[16];
        char text[UUID_STRING_LEN + 1];
        if (!batch_row_user_id(batch, i, id))
            continue;
        uuid_format(id, text);
        if (out->len > 1)
            buf_put_u8(out, ',');
        buf_append(out, text, UUID_STRING_LEN);
    }
    buf_put_u8(out, '}');
    buf_put_u8(out, '\0');
}
