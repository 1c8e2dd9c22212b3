/* A batch's bookkeeping: bisection of refused ranges, setting aside unknown users' rows, acks,
 * and when waiting batches go to the spool. */
#include <stdlib.h>

#include "batch.h"
#include "check.h"
#include "copy.h"
#include "event.h"

/* A usage row whose user id is all `user` and whose provider is p<index>. */
static void add_row(struct batch *batch, uint8_t user, uint32_t index)
{
    uint8_t id[16];
    memset(id, user, sizeof(id));
    char provider[16];
    int n = snprintf(provider, sizeof(provider), "p%u", index);
    struct uuid_v7_gen ids;
    uuid_v7_init(&ids, index);
    struct event_context ctx = {.now_ms = 1700000000000, .ids = &ids};
    struct event_usage_row row = {.user_id = id,
                                  .provider = provider,
                                  .provider_len = (size_t)n,
                                  .status_code = 200,
                                  .created_at_ms = 1700000000000};
    batch_reserve_row(batch);
    event_encode_usage_row(&row, &ctx, &batch->rows);
    batch_end_row(batch);
}

static struct batch *batch_of(const uint8_t *users, uint32_t n)
{
    struct batch *batch = batch_new(NULL, 2);
    for (uint32_t i = 0; i < n; i++)
        add_row(batch, users[i], i);
    batch_push_range(batch, 0, batch->nrows, false);
    return batch;
}

/* The provider text of row i, as "p<index>" was written: says which row moved where. */
static uint32_t row_index(const struct batch *batch, uint32_t i)
{
    struct copy_field f[16];
    size_t len;
    copy_row_fields(batch->rows.data + batch->row_off[i], batch->row_off[i + 1] - batch->row_off[i],
                    f, 16, &len);
    char text[16] = {0};
    memcpy(text, f[EVENT_USAGE_COL_PROVIDER].data + 1, (size_t)f[EVENT_USAGE_COL_PROVIDER].len - 1);
    return (uint32_t)atoi(text);
}

/* Writes a batch the way a writer does with one bad row: a range holding it is refused and
 * split, a range of it alone is rejected, any other range commits. */
static void write_with_bad_row(uint32_t n, uint32_t bad, uint32_t *statements, uint32_t *written,
                               uint32_t *rejected)
{
    uint8_t users[64];
    memset(users, 1, sizeof(users));
    struct batch *batch = batch_of(users, n);
    bool seen[64] = {0};
    *statements = *written = *rejected = 0;
    while (batch->nranges > 0) {
        struct batch_range *r = batch_top(batch);
        CHECK(r->lo < r->hi);
        (*statements)++;
        bool holds_bad = r->lo <= bad && bad < r->hi;
        if (holds_bad && r->hi - r->lo > 1) {
            batch_split_top(batch);
            continue;
        }
        for (uint32_t i = r->lo; i < r->hi; i++) {
            CHECK(!seen[i]);
            seen[i] = true;
        }
        if (holds_bad)
            *rejected += r->hi - r->lo;
        else
            *written += r->hi - r->lo;
        batch->nranges--;
    }
    batch_free(batch);
}

TEST(a_bad_row_is_isolated_by_halves_and_every_other_row_is_written_once)
{
    for (uint32_t n = 1; n <= 40; n++) {
        for (uint32_t bad = 0; bad < n; bad++) {
            uint32_t statements, written, rejected;
            write_with_bad_row(n, bad, &statements, &written, &rejected);
            CHECK_EQ_INT(rejected, 1);
            CHECK_EQ_INT(written, n - 1);
            /* One statement per level of halving, and one for each half set aside on the way. */
            uint32_t levels = 0;
            while ((1u << levels) < n)
                levels++;
            CHECK(statements <= 2 * levels + 1);
        }
    }
}

TEST(the_first_half_of_a_split_is_written_first)
{
    uint8_t users[5] = {1, 1, 1, 1, 1};
    struct batch *batch = batch_of(users, 5);
    batch_split_top(batch);
    CHECK_EQ_INT(batch->nranges, 2);
    CHECK_EQ_INT(batch_top(batch)->lo, 0);
    CHECK_EQ_INT(batch_top(batch)->hi, 2);
    CHECK_EQ_INT(batch->ranges[0].lo, 2);
    CHECK_EQ_INT(batch->ranges[0].hi, 5);
    CHECK(!batch->ranges[0].reject && !batch->ranges[1].reject);
    batch_free(batch);
}

TEST(unknown_users_rows_are_set_aside_under_a_reject_range_and_the_others_kept)
{
    uint8_t users[6] = {1, 2, 1, 3, 1, 2};
    struct batch *batch = batch_of(users, 6);
    size_t bytes = batch->rows.len;
    uint8_t unknown[2][16];
    memset(unknown[0], 2, 16);
    memset(unknown[1], 3, 16);
    CHECK_EQ_INT(batch_set_aside(batch, (const uint8_t(*)[16])unknown, 2), 3);
    CHECK_EQ_INT(batch->nranges, 2);
    CHECK(batch_top(batch)->reject);
    CHECK_EQ_INT(batch_top(batch)->lo, 3);
    CHECK_EQ_INT(batch_top(batch)->hi, 6);
    CHECK(!batch->ranges[0].reject);
    CHECK_EQ_INT(batch->ranges[0].lo, 0);
    CHECK_EQ_INT(batch->ranges[0].hi, 3);
    CHECK_EQ_INT(batch->rows.len, bytes);
    /* Known users' rows first, in their order, then the others, in theirs. */
    static const uint32_t order[6] = {0, 2, 4, 1, 3, 5};
    for (uint32_t i = 0; i < 6; i++) {
        uint8_t id[16];
        CHECK(batch_row_user_id(batch, i, id));
        CHECK_EQ_INT(id[0], users[order[i]]);
        CHECK_EQ_INT(row_index(batch, i), order[i]);
    }
    CHECK_EQ_INT(batch->row_off[6], bytes);
    batch_free(batch);
}

TEST(a_range_of_unknown_users_only_becomes_one_reject_range)
{
    uint8_t users[3] = {7, 7, 7};
    struct batch *batch = batch_of(users, 3);
    uint8_t unknown[1][16];
    memset(unknown[0], 7, 16);
    CHECK_EQ_INT(batch_set_aside(batch, (const uint8_t(*)[16])unknown, 1), 0);
    CHECK_EQ_INT(batch->nranges, 1);
    CHECK(batch_top(batch)->reject);
    CHECK_EQ_INT(batch_top(batch)->hi - batch_top(batch)->lo, 3);
    batch_free(batch);
}

static int kept, refused;
static void on_done(struct batch_ack *ack, const struct rpc_error *err)
{
    (void)ack;
    if (err)
        refused++;
    else
        kept++;
}

TEST(acks_are_answered_once)
{
    struct batch *batch = batch_new(NULL, 0);
    struct batch_ack acks[20];
    for (int i = 0; i < 20; i++) {
        acks[i].done = on_done;
        batch_add_ack(batch, &acks[i]);
    }
    kept = refused = 0;
    batch_answer_acks(batch, NULL);
    batch_answer_acks(batch, NULL);
    CHECK_EQ_INT(kept, 20);
    batch_add_ack(batch, &acks[0]);
    struct rpc_error e;
    rpc_error_set(&e, RPC_SHUTTING_DOWN, "bye");
    batch_answer_acks(batch, &e);
    CHECK_EQ_INT(refused, 1);
    batch_free(batch);
}

TEST(a_truncated_batch_forgets_the_rows_of_a_refused_request)
{
    uint8_t users[2] = {1, 1};
    struct batch *batch = batch_of(users, 2);
    size_t len = batch->rows.len;
    add_row(batch, 1, 9);
    batch_truncate(batch, 2, len);
    CHECK_EQ_INT(batch->nrows, 2);
    CHECK_EQ_INT(batch->rows.len, len);
    CHECK_EQ_INT(batch->row_off[2], len);
    batch_free(batch);
}

TEST(waiting_batches_spill_when_nothing_can_write_them_soon)
{
    struct batch_spill_state up = {.now_ms = 10000, .spill_after_ms = 500, .writers_up = 1};
    CHECK(!batch_spill_due(&up, 0)); /* a writer is up and nothing failed */

    struct batch_spill_state failing = up;
    failing.failing_since = 9600;
    CHECK(!batch_spill_due(&failing, 0)); /* failing for 400 ms of 500 */
    failing.failing_since = 9500;
    CHECK(batch_spill_due(&failing, 0)); /* 500 ms */

    struct batch_spill_state down = {.now_ms = 10000, .spill_after_ms = 500};
    CHECK(batch_spill_due(&down, 9999)); /* no writer up nor connecting: at once */

    struct batch_spill_state connecting = down;
    connecting.writers_connecting = 2;
    CHECK(!batch_spill_due(&connecting, 9801)); /* 199 ms into the 200 ms grace */
    CHECK(batch_spill_due(&connecting, 9800));
    connecting.spill_after_ms = 50; /* the grace is never longer than spill_after_ms */
    CHECK(batch_spill_due(&connecting, 9950));
    CHECK(!batch_spill_due(&connecting, 9951));

    struct batch_spill_state draining = up;
    draining.drain_expired = true;
    CHECK(batch_spill_due(&draining, 10000));
}

int main(void)
{
    return RUN(T(a_bad_row_is_isolated_by_halves_and_every_other_row_is_written_once),
               T(the_first_half_of_a_split_is_written_first),
               T(unknown_users_rows_are_set_aside_under_a_reject_range_and_the_others_kept),
               T(a_range_of_unknown_users_only_becomes_one_reject_range), T(acks_are_answered_once),
               T(a_truncated_batch_forgets_the_rows_of_a_refused_request),
               T(waiting_batches_spill_when_nothing_can_write_them_soon));
}
