/* The ledger of reservations and concurrent slots (ledger.h) and the shadow denials by rule
 * pattern (shadows.h): what each daemon counts, and that the sum over daemons is exact. */
#include "check.h"
#include "ledger.h"
#include "shadows.h"

#include <string.h>

static const uint64_t t0 = 1780000000; /* seconds */

static void rid(unsigned slots, uint64_t now_s, uint64_t unique, char out[LEDGER_RID_LEN + 1])
{
    ledger_rid_format(unique, slots, now_s, out);
}

TEST(issued_reservations_are_open_until_settled_and_expire_after_the_ttl_and_grace)
{
    struct ledger g;
    ledger_init(&g, 900, t0);
    char a[17], b[17], c[17];
    rid(1, t0, 1, a);
    rid(2, t0 + 10, 2, b);
    rid(0, t0 + 20, 3, c);
    ledger_issue(&g, a, t0);
    ledger_issue(&g, b, t0 + 10);
    ledger_issue(&g, c, t0 + 20);
    struct ledger_figures f;
    ledger_read(&g, t0 + 30, &f);
    CHECK_EQ_INT(f.open, 3);
    CHECK_EQ_INT(f.slots, 3);
    CHECK_EQ_INT(f.expired, 0);
    ledger_settle(&g, b, t0 + 40);
    ledger_read(&g, t0 + 40, &f);
    CHECK_EQ_INT(f.open, 2);
    CHECK_EQ_INT(f.slots, 1);
    /* Past the TTL and the grace, what is left of a's and c's buckets has expired. */
    ledger_read(&g, t0 + 20 + 900 + ledger_grace_s(900) + 1, &f);
    CHECK_EQ_INT(f.open, 0);
    CHECK_EQ_INT(f.expired, 2);
    CHECK_EQ_INT(f.slots, 0);
    CHECK_EQ_INT(f.slots_lapsed, 1);
    CHECK_EQ_INT(g.settled, 1);
    CHECK_EQ_INT(g.slots_freed, 2);
    ledger_free(&g);
}

TEST(a_reservation_settled_by_another_daemon_sums_to_zero_over_both)
{
    struct ledger one, two;
    ledger_init(&one, 60, t0);
    ledger_init(&two, 60, t0 + 3); /* its clock is 3 s ahead */
    char a[17];
    rid(1, t0, 7, a);
    ledger_issue(&one, a, t0);
    ledger_settle(&two, a, t0 + 3 + 30);
    struct ledger_figures f1, f2;
    ledger_read(&one, t0 + 30, &f1);
    ledger_read(&two, t0 + 33, &f2);
    CHECK_EQ_INT(f1.open, 1);
    CHECK_EQ_INT(f2.open, -1);
    CHECK_EQ_INT(f1.open + f2.open, 0);
    CHECK_EQ_INT(f1.slots + f2.slots, 0);
    /* And stays so once both have aged the buckets: nothing expired in the sum. */
    ledger_read(&one, t0 + 500, &f1);
    ledger_read(&two, t0 + 503, &f2);
    CHECK_EQ_INT(f1.expired + f2.expired, 0);
    CHECK_EQ_INT(f1.slots_lapsed + f2.slots_lapsed, 0);
    ledger_free(&one);
    ledger_free(&two);
}

TEST(a_long_ttl_keeps_the_ring_bounded_and_a_resize_keeps_the_open_ones)
{
    struct ledger g;
    ledger_init(&g, 604800, t0);
    CHECK(g.n <= LEDGER_BUCKETS);
    char a[17];
    rid(0, t0, 9, a);
    ledger_issue(&g, a, t0);
    ledger_resize(&g, 900, t0 + 100);
    CHECK(g.n <= LEDGER_BUCKETS);
    struct ledger_figures f;
    ledger_read(&g, t0 + 100, &f);
    CHECK_EQ_INT(f.open, 1);
    ledger_settle(&g, a, t0 + 200);
    ledger_read(&g, t0 + 200, &f);
    CHECK_EQ_INT(f.open, 0);
    ledger_free(&g);
}

TEST(a_local_reservation_id_takes_no_slot)
{
    struct ledger g;
    ledger_init(&g, 900, t0);
    char a[17];
    rid(3, t0, 11, a);
    ledger_rid_local(a);
    CHECK(a[0] == 'l');
    ledger_issue(&g, a, t0);
    struct ledger_figures f;
    ledger_read(&g, t0, &f);
    CHECK_EQ_INT(f.open, 1);
    CHECK_EQ_INT(f.slots, 0);
    ledger_free(&g);
}

TEST(shadow_denials_are_counted_by_pattern_and_bounded)
{
    struct shadows s = {0};
    struct rules_applied tokens = {.dimension = RULES_TOKENS,
                                   .window = RULES_MINUTE,
                                   .by_provider = true,
                                   .by_model = true,
                                   .shadow = true};
    struct rules_applied inflight = {.dimension = RULES_CONCURRENT, .shadow = true};
    shadows_count(&s, &tokens, "openai", 6, "gpt-4o", 6);
    shadows_count(&s, &tokens, "openai", 6, "gpt-4o", 6);
    shadows_count(&s, &inflight, "openai", 6, "gpt-4o", 6);
    CHECK_EQ_INT(s.n, 2);
    CHECK_EQ_STR(s.entry[0].pattern, "openai/gpt-4o/tokens/minute");
    CHECK_EQ_INT(s.entry[0].count, 2);
    CHECK_EQ_STR(s.entry[1].pattern, "*/*/concurrent");
    char model[16];
    for (int i = 0; i < SHADOWS_MAX + 5; i++) {
        int n = snprintf(model, sizeof(model), "m%d", i);
        shadows_count(&s, &tokens, "openai", 6, model, (size_t)n);
    }
    CHECK_EQ_INT(s.n, SHADOWS_MAX);
    CHECK_EQ_INT(s.other, 7);
    shadows_free(&s);
}

int main(void)
{
    return RUN(T(issued_reservations_are_open_until_settled_and_expire_after_the_ttl_and_grace),
               T(a_reservation_settled_by_another_daemon_sums_to_zero_over_both),
               T(a_long_ttl_keeps_the_ring_bounded_and_a_resize_keeps_the_open_ones),
               T(a_local_reservation_id_takes_no_slot),
               T(shadow_denials_are_counted_by_pattern_and_bounded));
}
