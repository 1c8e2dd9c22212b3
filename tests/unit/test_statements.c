/* The writers' SQL text: COPY, the staging path, the api_configurations bump and its literals. */
#include "batch.h"
#include "check.h"
#include "statements.h"

static void add_row(struct batch *batch, uint8_t user, const char *provider, int32_t status)
{
    uint8_t id[16];
    memset(id, user, sizeof(id));
    struct uuid_v7_gen ids;
    uuid_v7_init(&ids, 1);
    struct event_context ctx = {.now_ms = 1700000000000, .ids = &ids};
    struct event_usage_row row = {.user_id = id,
                                  .provider = provider,
                                  .provider_len = strlen(provider),
                                  .status_code = status,
                                  .created_at_ms = 1700000000000};
    batch_reserve_row(batch);
    event_encode_usage_row(&row, &ctx, &batch->rows);
    batch_end_row(batch);
}

static const char *text(const struct buf *b)
{
    return (const char *)b->data;
}

TEST(a_usage_copy_bumps_each_user_and_provider_once_without_rate_limited_rows)
{
    struct batch *batch = batch_new(NULL, 0);
    add_row(batch, 0x11, "openai", 200);
    add_row(batch, 0x11, "openai", 500);
    add_row(batch, 0x11, "openai", 429); /* not a call */
    add_row(batch, 0x22, "anthropic", 200);
    struct buf sql;
    buf_init(&sql);
    statements_copy(&sql, EVENT_USAGE, batch, 0, 4, false);
    CHECK(check_contains(text(&sql), "COPY public.api_usage_logs (id, user_id, provider,"));
    CHECK(strncmp(text(&sql), "SET LOCAL synchronous_commit TO on;\nCOPY", 40) == 0);
    CHECK(check_contains(text(&sql),
                         "FROM STDIN (FORMAT binary);\nUPDATE public.api_configurations"));
    /* Two pairs; 2 calls for the first (the 429 row is not one), 1 for the second, in some
     * order. */
    CHECK(check_contains(text(&sql), "E'{2,1}'::int[]") ||
          check_contains(text(&sql), "E'{1,2}'::int[]"));
    CHECK(check_contains(text(&sql), "11111111-1111-1111-1111-111111111111"));
    CHECK(check_contains(text(&sql), "\"2023-11-14 22:13:20.000000+00\""));
    CHECK_EQ_INT(sql.len, strlen(text(&sql)) + 1);

    /* A range of rate limited rows only bumps nothing. */
    statements_copy(&sql, EVENT_USAGE, batch, 2, 3, false);
    CHECK(!check_contains(text(&sql), "UPDATE"));
    buf_free(&sql);
    batch_free(batch);
}

TEST(a_provider_with_quotes_and_backslashes_is_escaped_twice)
{
    struct batch *batch = batch_new(NULL, 0);
    add_row(batch, 0x11, "it's \"a\\b\"", 200);
    struct buf sql;
    buf_init(&sql);
    statements_copy(&sql, EVENT_USAGE, batch, 0, 1, false);
    /* The array element: "it's \"a\\b\"" ; the literal: ' and \ doubled in E'...'. */
    CHECK(check_contains(text(&sql), "E'{\"it''s \\\\\"a\\\\\\\\b\\\\\"\"}'::text[]"));
    buf_free(&sql);
    batch_free(batch);
}

TEST(an_idempotent_write_goes_through_a_staging_table)
{
    struct batch *batch = batch_new(NULL, 0);
    add_row(batch, 0x11, "openai", 200);
    struct buf sql;
    buf_init(&sql);
    statements_copy(&sql, EVENT_USAGE, batch, 0, 1, true);
    CHECK(
        check_contains(text(&sql), "CREATE TEMP TABLE IF NOT EXISTS usaged_stage_api_usage_logs"));
    CHECK(check_contains(text(&sql), "ON CONFLICT DO NOTHING RETURNING"));
    CHECK(check_contains(text(&sql), "status_code IS DISTINCT FROM 429"));
    statements_copy(&sql, EVENT_PROMPT, batch, 0, 1, true);
    CHECK(check_contains(text(&sql), "INSERT INTO public.prompt_history"));
    CHECK(strncmp(text(&sql), "SET LOCAL synchronous_commit TO on;\n", 36) == 0);
    CHECK(!check_contains(text(&sql), "api_configurations"));
    buf_free(&sql);
    batch_free(batch);
}

TEST(the_user_ids_of_a_range_make_one_uuid_array)
{
    struct batch *batch = batch_new(NULL, 0);
    add_row(batch, 0x11, "a", 200);
    add_row(batch, 0x22, "a", 200);
    add_row(batch, 0x33, "a", 200);
    struct buf ids;
    buf_init(&ids);
    statements_user_ids(&ids, batch, 1, 3);
    CHECK_EQ_STR(text(&ids),
                 "{22222222-2222-2222-2222-222222222222,33333333-3333-3333-3333-333333333333}");
    buf_free(&ids);
    batch_free(batch);
}

int main(void)
{
    return RUN(T(a_usage_copy_bumps_each_user_and_provider_once_without_rate_limited_rows),
               T(a_provider_with_quotes_and_backslashes_is_escaped_twice),
               T(an_idempotent_write_goes_through_a_staging_table),
               T(the_user_ids_of_a_range_make_one_uuid_array));
}
