/* Event validation and encoding: defaults, ids, timestamps, and what is refused. */
#include "check.h"
#include "event.h"

static msgpack_sbuffer sb;
static msgpack_packer pk;
static msgpack_unpacked u;

static void kv_str(const char *k, const char *v)
{
    msgpack_pack_str_with_body(&pk, k, strlen(k));
    msgpack_pack_str_with_body(&pk, v, strlen(v));
}

static void kv_int(const char *k, int64_t v)
{
    msgpack_pack_str_with_body(&pk, k, strlen(k));
    msgpack_pack_int64(&pk, v);
}

static const msgpack_object *done(void)
{
    size_t off = 0;
    msgpack_unpacked_destroy(&u);
    msgpack_unpacked_init(&u);
    msgpack_unpack_next(&u, sb.data, sb.size, &off);
    msgpack_sbuffer_clear(&sb);
    return &u.data;
}

static bool encode(enum event_kind kind, const msgpack_object *ev, struct buf *out,
                   struct rpc_error *err, int64_t now_ms)
{
    struct uuid_v7_gen ids;
    uuid_v7_init(&ids, 1);
    struct event_context ctx = {.now_ms = now_ms, .ids = &ids};
    buf_clear(out);
    return event_encode(kind, ev, &ctx, out, err);
}

static int64_t created_at_us(const struct buf *row, int ncolumns)
{
    struct copy_field f[20];
    size_t len;
    if (copy_row_fields(row->data, row->len, f, 20, &len) != ncolumns)
        return -1;
    const uint8_t *p = f[ncolumns - 1].data;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return (int64_t)v + COPY_PG_EPOCH_US;
}

TEST(a_minimal_usage_event_gets_a_v7_id_and_the_receive_time)
{
    msgpack_pack_map(&pk, 2);
    kv_str("user_id", "0189d2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d");
    kv_str("provider", "openai");
    struct buf row;
    buf_init(&row);
    struct rpc_error err;
    CHECK(encode(EVENT_USAGE, done(), &row, &err, 1700000000123));
    struct copy_field f[20];
    size_t len;
    CHECK_EQ_INT(copy_row_fields(row.data, row.len, f, 20, &len), 10);
    uint64_t ms;
    CHECK(uuid_v7_time(f[0].data, &ms));
    CHECK_EQ_INT(ms, 1700000000123);
    CHECK_EQ_INT(f[3].len, -1); /* endpoint: NULL */
    CHECK_EQ_INT(created_at_us(&row, 10), 1700000000123000);
    buf_free(&row);
}

TEST(created_at_defaults_to_the_time_inside_a_v7_id)
{
    msgpack_pack_map(&pk, 3);
    kv_str("id", "0189d2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d"); /* v7, ms 0x0189d2c45e6f */
    kv_str("user_id", "0189d2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d");
    kv_str("provider", "openai");
    struct buf row;
    buf_init(&row);
    struct rpc_error err;
    CHECK(encode(EVENT_USAGE, done(), &row, &err, 1));
    CHECK_EQ_INT(created_at_us(&row, 10), 0x0189d2c45e6fLL * 1000);
    /* The last millisecond of year 9999 (0xe677d21fdbff) still is one; the next is not, and no
     * default created_at can be made of it, in either kind of event. */
    msgpack_pack_map(&pk, 3);
    kv_str("id", "e677d21f-dbff-7a8b-9c0d-1e2f3a4b5c6d");
    kv_str("user_id", "0189d2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d");
    kv_str("provider", "openai");
    CHECK(encode(EVENT_USAGE, done(), &row, &err, 1));
    CHECK_EQ_INT(created_at_us(&row, 10), 253402300799999LL * 1000);
    for (int kind = 0; kind < 2; kind++) {
        msgpack_pack_map(&pk, 3);
        kv_str("id", "e677d21f-dc00-7a8b-9c0d-1e2f3a4b5c6d");
        kv_str("user_id", "0189d2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d");
        if (kind)
            kv_str("status", "completed");
        else
            kv_str("provider", "openai");
        CHECK(!encode(kind ? EVENT_PROMPT : EVENT_USAGE, done(), &row, &err, 1));
        CHECK_EQ_STR(err.field, "id");
        CHECK(check_contains(err.message, "after year 9999"));
    }
    buf_free(&row);
}

TEST(a_prompt_event_needs_a_known_status_and_defaults_vibe_coding_to_false)
{
    msgpack_pack_map(&pk, 2);
    kv_str("user_id", "0189d2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d");
    kv_str("status", "cancelled");
    struct buf row;
    buf_init(&row);
    struct rpc_error err;
    CHECK(encode(EVENT_PROMPT, done(), &row, &err, 5));
    struct copy_field f[20];
    size_t len;
    CHECK_EQ_INT(copy_row_fields(row.data, row.len, f, 20, &len), 20);
    CHECK_EQ_INT(f[12].len, 1);
    CHECK_EQ_INT(f[12].data[0], 0);

    msgpack_pack_map(&pk, 2);
    kv_str("user_id", "0189d2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d");
    kv_str("status", "Completed");
    CHECK(!encode(EVENT_PROMPT, done(), &row, &err, 5));
    CHECK_EQ_STR(err.field, "status");
    buf_free(&row);
}

TEST(lengths_are_counted_in_characters_not_bytes)
{
    char fifty[50 * 2 + 1] = "";
    for (int i = 0; i < 50; i++)
        strcat(fifty, "\xc3\xa9"); /* 50 characters, 100 bytes */
    msgpack_pack_map(&pk, 2);
    kv_str("user_id", "0189d2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d");
    kv_str("provider", fifty);
    struct buf row;
    buf_init(&row);
    struct rpc_error err;
    CHECK(encode(EVENT_USAGE, done(), &row, &err, 5));
    buf_free(&row);
}

TEST(each_refusal_names_its_field)
{
    struct buf row;
    buf_init(&row);
    struct rpc_error err;

    msgpack_pack_map(&pk, 1);
    kv_str("provider", "openai");
    CHECK(!encode(EVENT_USAGE, done(), &row, &err, 5));
    CHECK_EQ_STR(err.field, "user_id");
    CHECK_EQ_INT(err.code, RPC_INVALID_FIELD);

    msgpack_pack_map(&pk, 3);
    kv_str("user_id", "0189d2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d");
    kv_str("provider", "openai");
    kv_int("status_code", 600);
    CHECK(!encode(EVENT_USAGE, done(), &row, &err, 5));
    CHECK_EQ_STR(err.field, "status_code");

    msgpack_pack_map(&pk, 3);
    kv_str("user_id", "0189d2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d");
    kv_str("provider", "openai");
    kv_str("provider", "again");
    CHECK(!encode(EVENT_USAGE, done(), &row, &err, 5));
    CHECK_EQ_STR(err.field, "provider");
    CHECK(check_contains(err.message, "twice"));

    msgpack_pack_map(&pk, 3);
    kv_str("user_id", "0189d2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d");
    kv_str("status", "pending");
    kv_str("temperatur", "x");
    CHECK(!encode(EVENT_PROMPT, done(), &row, &err, 5));
    CHECK_EQ_STR(err.field, "temperatur");
    buf_free(&row);
}

int main(void)
{
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_unpacked_init(&u);
    int rc = RUN(T(a_minimal_usage_event_gets_a_v7_id_and_the_receive_time),
                 T(created_at_defaults_to_the_time_inside_a_v7_id),
                 T(a_prompt_event_needs_a_known_status_and_defaults_vibe_coding_to_false),
                 T(lengths_are_counted_in_characters_not_bytes), T(each_refusal_names_its_field));
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}
