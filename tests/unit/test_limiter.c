/* The limiter's pure core: decisions from the counts of every rule, the windows' arithmetic, the
 * answer's encoding, and the local fallback. */
#include "check.h"
#include "check_answer.h"
#include "decision.h"
#include "local.h"

#include "rpc.h"
#include "usaged/protocol.h"

#include <msgpack.h>

/* A rule for the provider (every model) of a check. */
static struct rules_applied rule(enum rules_dimension d, enum rules_window w, int64_t limit)
{
    return (struct rules_applied){
        .dimension = d, .window = w, .by_provider = true, .by_model = false, .limit = limit};
}

/* The v1 pair: 5 requests a minute, 100 a day. */
static struct rules_resolved v1_rules(void)
{
    struct rules_resolved r = {
        .enabled = true, .n = 2, .counted = 2, .per_minute = 5, .per_day = 100};
    r.rule[0] = rule(RULES_REQUESTS, RULES_MINUTE, 5);
    r.rule[1] = rule(RULES_REQUESTS, RULES_DAY, 100);
    return r;
}

static const uint64_t now = 1700000000123ULL; /* 2023-11-14 22:13:20.123 UTC */
static const struct check_amounts one = {.cost = 1};

TEST(an_allowed_check_reports_what_is_left_and_no_retry)
{
    struct rules_resolved lim = v1_rules();
    struct check_result r;
    int64_t used[] = {3, 40};
    decision_make(&lim, &one, true, used, now, &r);
    CHECK(r.allowed);
    CHECK(r.reason == NULL);
    CHECK_EQ_INT(r.remaining_minute, 2);
    CHECK_EQ_INT(r.remaining_day, 60);
    CHECK_EQ_INT(r.retry_after_ms, 0);
    CHECK_EQ_INT(r.denied_by, -1);
    CHECK_EQ_INT(r.reset_minute_ms, 60000 - now % 60000);
    CHECK_EQ_INT(r.reset_day_ms, 86400000 - now % 86400000);
}

TEST(a_minute_denial_retries_at_the_minute_reset)
{
    struct rules_resolved lim = v1_rules();
    struct check_result r;
    int64_t used[] = {5, 40};
    decision_make(&lim, &one, false, used, now, &r);
    CHECK(!r.allowed);
    CHECK_EQ_STR(r.reason, USAGED_REASON_MINUTE_LIMIT);
    CHECK_EQ_INT(r.retry_after_ms, r.reset_minute_ms);
    CHECK_EQ_INT(r.denied_by, 0);
    CHECK_EQ_INT(r.remaining_minute, 0);
}

TEST(when_several_rules_deny_the_longest_wait_names_the_reason)
{
    struct rules_resolved lim = v1_rules();
    struct check_result r;
    int64_t used[] = {5, 100};
    decision_make(&lim, &one, false, used, now, &r);
    CHECK_EQ_STR(r.reason, USAGED_REASON_DAY_LIMIT);
    CHECK_EQ_INT(r.denied_by, 1);
    CHECK_EQ_INT(r.retry_after_ms, r.reset_day_ms);
}

TEST(no_rule_of_the_provider_reports_nil_v1_limits)
{
    struct rules_resolved lim = {
        .enabled = true, .per_minute = RULES_UNLIMITED, .per_day = RULES_UNLIMITED};
    struct check_result r;
    decision_uncounted(&lim, true, NULL, now, &r);
    CHECK(r.allowed);
    CHECK_EQ_INT(r.limit_minute, RULES_UNLIMITED);
    CHECK_EQ_INT(r.remaining_day, RULES_UNLIMITED);
}

TEST(a_rule_with_no_room_left_denies_an_amount_of_zero_but_not_a_peek)
{
    CHECK(decision_rule_denies(1000, 1000, 0, false));
    CHECK(!decision_rule_denies(1000, 999, 0, false));
    CHECK(!decision_rule_denies(1000, 1000, 0, true));
    CHECK(decision_rule_denies(1000, 1001, 0, true));
    CHECK(decision_rule_denies(1000, 990, 11, false));
    CHECK(!decision_rule_denies(1000, 990, 10, false));
    CHECK(!decision_rule_denies(RULES_UNLIMITED, 5000, 5000, false));
}

TEST(a_tokens_denial_of_the_hour_says_hour_limit)
{
    struct rules_resolved lim = v1_rules();
    lim.rule[2] = rule(RULES_TOKENS, RULES_HOUR, 1000);
    lim.n = lim.counted = 3;
    struct check_amounts a = {.cost = 1, .tokens = 500};
    int64_t used[] = {1, 1, 600};
    struct check_result r;
    decision_make(&lim, &a, false, used, now, &r);
    CHECK_EQ_STR(r.reason, USAGED_REASON_HOUR_LIMIT);
    CHECK_EQ_INT(r.denied_by, 2);
    CHECK_EQ_INT(r.retry_after_ms, 3600000 - now % 3600000);
}

TEST(windows_are_utc_minutes_hours_days_and_calendar_months)
{
    /* 2024-02-29 23:59:59.500 UTC, a leap day. */
    uint64_t t = 1709251199500ULL;
    CHECK_EQ_INT(decision_window_id(RULES_MONTH, t), 2024 * 12 + 1);
    CHECK_EQ_INT(decision_reset_ms(RULES_MONTH, t), 500);
    CHECK_EQ_INT(decision_window_id(RULES_MONTH, t + 500), 2024 * 12 + 2);
    /* March has 31 days. */
    CHECK_EQ_INT(decision_reset_ms(RULES_MONTH, t + 500), 31ULL * 86400000);
    /* December rolls into January of the next year. */
    uint64_t dec31 = 1704067199000ULL; /* 2023-12-31 23:59:59 */
    CHECK_EQ_INT(decision_window_id(RULES_MONTH, dec31), 2023 * 12 + 11);
    CHECK_EQ_INT(decision_reset_ms(RULES_MONTH, dec31), 1000);
    CHECK_EQ_INT(decision_window_id(RULES_MONTH, dec31 + 1000), 2024 * 12);
    CHECK_EQ_INT(decision_reset_ms(RULES_HOUR, t), 500);
    CHECK_EQ_INT(decision_window_id(RULES_HOUR, t), t / 3600000);
    CHECK_EQ_INT(decision_reset_ms(RULES_DAY, t), 500);
}

/* ---- the answer's encoding ---- */

static void pack_amount(msgpack_packer *pk, int64_t v, bool spend)
{
    if (v == RULES_UNLIMITED) {
        msgpack_pack_nil(pk);
    } else if (spend) {
        char text[32];
        snprintf(text, sizeof(text), "%lld.%06lld", (long long)(v / 1000000),
                 (long long)(v % 1000000));
        rpc_pack_str(pk, text);
    } else {
        msgpack_pack_int64(pk, v);
    }
}

static void reference_rule(msgpack_packer *pk, const struct check_result *r, int i)
{
    static const char *const scopes[] = {"user", "provider", "model", "model"};
    const struct rules_applied *a = &r->rules->rule[i];
    bool spend = a->dimension == RULES_SPEND;
    msgpack_pack_map(pk, a->shadow ? 8 : 7);
    rpc_pack_str(pk, "dimension");
    rpc_pack_str(pk, rules_dimension_name(a->dimension));
    rpc_pack_str(pk, "window");
    if (a->dimension == RULES_CONCURRENT)
        msgpack_pack_nil(pk);
    else
        rpc_pack_str(pk, rules_window_name(a->window));
    rpc_pack_str(pk, "scope");
    rpc_pack_str(pk, scopes[a->by_provider + 2 * a->by_model]);
    rpc_pack_str(pk, "limit");
    pack_amount(pk, a->limit, spend);
    rpc_pack_str(pk, "used");
    pack_amount(pk, r->used[i], spend);
    rpc_pack_str(pk, "remaining");
    int64_t left = a->limit == RULES_UNLIMITED || r->used[i] == RULES_UNLIMITED
                       ? RULES_UNLIMITED
                       : (r->used[i] >= a->limit ? 0 : a->limit - r->used[i]);
    pack_amount(pk, left, spend);
    rpc_pack_str(pk, "reset_ms");
    msgpack_pack_uint64(
        pk, a->dimension == RULES_CONCURRENT ? 0 : decision_reset_ms(a->window, r->now_ms));
    if (a->shadow) {
        rpc_pack_str(pk, "shadow");
        msgpack_pack_true(pk);
    }
}

/* The answer as msgpack-c packs it, key by key: the reference for the daemon's own encoder. */
static void reference_pack(msgpack_packer *pk, const struct check_result *r)
{
    msgpack_pack_map(pk, 14);
    rpc_pack_str(pk, "allowed");
    r->allowed ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    rpc_pack_str(pk, "reason");
    if (r->reason)
        rpc_pack_str(pk, r->reason);
    else
        msgpack_pack_nil(pk);
    const char *names[] = {"limit_minute", "limit_day", "remaining_minute", "remaining_day"};
    const int64_t values[] = {r->limit_minute, r->limit_day, r->remaining_minute, r->remaining_day};
    for (int i = 0; i < 4; i++) {
        rpc_pack_str(pk, names[i]);
        values[i] == RULES_UNLIMITED ? msgpack_pack_nil(pk) : msgpack_pack_int64(pk, values[i]);
    }
    rpc_pack_str(pk, "reset_minute_ms");
    msgpack_pack_uint64(pk, r->reset_minute_ms);
    rpc_pack_str(pk, "reset_day_ms");
    msgpack_pack_uint64(pk, r->reset_day_ms);
    rpc_pack_str(pk, "retry_after_ms");
    msgpack_pack_uint64(pk, r->retry_after_ms);
    rpc_pack_str(pk, "degraded");
    r->degraded ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    rpc_pack_str(pk, "reservation");
    if (r->reservation[0])
        rpc_pack_str(pk, r->reservation);
    else
        msgpack_pack_nil(pk);
    int n = r->rules ? r->rules->n : 0;
    rpc_pack_str(pk, "limits");
    msgpack_pack_array(pk, (size_t)n);
    for (int i = 0; i < n; i++)
        reference_rule(pk, r, i);
    rpc_pack_str(pk, "denied_by");
    if (r->denied_by >= 0)
        reference_rule(pk, r, r->denied_by);
    else
        msgpack_pack_nil(pk);
    rpc_pack_str(pk, "shadow_denied_by");
    if (r->shadow_denied_by >= 0)
        reference_rule(pk, r, r->shadow_denied_by);
    else
        msgpack_pack_nil(pk);
}

static bool packs_like_msgpack_c(const struct check_result *r)
{
    msgpack_sbuffer a, b;
    msgpack_sbuffer_init(&a);
    msgpack_sbuffer_init(&b);
    msgpack_packer pa, pb;
    msgpack_packer_init(&pa, &a, msgpack_sbuffer_write);
    msgpack_packer_init(&pb, &b, msgpack_sbuffer_write);
    check_answer_pack(&pa, r);
    reference_pack(&pb, r);
    bool same = a.size == b.size && memcmp(a.data, b.data, a.size) == 0;
    msgpack_sbuffer_destroy(&a);
    msgpack_sbuffer_destroy(&b);
    return same;
}

TEST(the_answer_is_encoded_byte_for_byte_as_msgpack_c_would)
{
    static const int64_t ints[] = {RULES_UNLIMITED,
                                   0,
                                   1,
                                   127,
                                   128,
                                   255,
                                   256,
                                   65535,
                                   65536,
                                   4294967295LL,
                                   4294967296LL,
                                   INT64_MAX,
                                   -32,
                                   -33,
                                   -128,
                                   -129,
                                   -32768,
                                   -32769,
                                   INT32_MIN,
                                   (int64_t)INT32_MIN - 1,
                                   INT64_MIN};
    static const uint64_t uints[] = {0,     127,   128,           255,           256,
                                     65535, 65536, 4294967295ULL, 4294967296ULL, UINT64_MAX};
    static const char *const reasons[] = {NULL,
                                          USAGED_REASON_MINUTE_LIMIT,
                                          USAGED_REASON_DAY_LIMIT,
                                          USAGED_REASON_UNAVAILABLE,
                                          USAGED_REASON_PROVIDER_DISABLED,
                                          "a reason of more than thirty-one bytes"};
    /* Rules of every dimension, window and scope, shadow or not; 20 of them, past a fixarray. */
    struct rules_resolved many = {.enabled = true, .n = 20, .counted = 18};
    for (int i = 0; i < 20; i++)
        many.rule[i] = (struct rules_applied){.dimension = (uint8_t)(i % 4),
                                              .window = i % 4 == 3 ? 0 : (uint8_t)(i % 4),
                                              .shadow = i % 7 == 0,
                                              .by_provider = i % 2 == 0,
                                              .by_model = i % 5 == 0,
                                              .limit = i >= 18 ? RULES_UNLIMITED
                                                               : (int64_t)(uints[i % 10] >> 3)};
    size_t n = sizeof(ints) / sizeof(ints[0]), m = sizeof(uints) / sizeof(uints[0]);
    for (size_t i = 0; i < n; i++) {
        struct check_result r = {
            .allowed = i % 2 == 0,
            .reason = reasons[i % 6],
            .limit_minute = ints[i],
            .limit_day = ints[(i + 1) % n],
            .remaining_minute = ints[(i + 2) % n],
            .remaining_day = ints[(i + 3) % n],
            .reset_minute_ms = uints[i % m],
            .reset_day_ms = uints[(i + 1) % m],
            .retry_after_ms = uints[(i + 2) % m],
            .degraded = i % 3 == 0,
            .rules = i % 4 == 0 ? NULL : &many,
            .denied_by = i % 4 == 0 ? -1 : (int)(i % 20),
            .shadow_denied_by = i % 3 == 0 || i % 4 == 0 ? -1 : (int)((i * 7) % 20),
            .now_ms = now + i * 7777777,
        };
        if (i % 2)
            snprintf(r.reservation, sizeof(r.reservation),
                     "0189d2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d.0123456789abcdef");
        for (int j = 0; j < 20; j++)
            r.used[j] = j >= 18 ? RULES_UNLIMITED : (int64_t)(uints[(i + (size_t)j) % m] >> 2);
        CHECK(packs_like_msgpack_c(&r));
    }
}

/* ---- the local fallback ---- */

static const uint8_t alice[16] = {1};

TEST(the_local_windows_allow_up_to_the_limit_and_reset_with_the_minute)
{
    struct local_limits ll;
    local_init(&ll, 64, 8);
    struct rules_resolved lim = v1_rules();
    uint64_t scope[2] = {local_scope_hash(alice, ":p:openai", 9),
                         local_scope_hash(alice, ":p:openai", 9)};
    int64_t used[2];
    char alerted[LOCAL_ALERTED_LEN];
    uint64_t t = now - now % 60000; /* the start of a minute */
    for (int i = 0; i < 5; i++) {
        CHECK(local_check(&ll, alice, scope, &lim, &one, t + (uint64_t)i, NULL, 0, used, alerted));
        CHECK_EQ_INT(used[0], i + 1);
    }
    CHECK(!local_check(&ll, alice, scope, &lim, &one, t + 10, NULL, 0, used, alerted));
    CHECK_EQ_INT(used[0], 5);
    CHECK(local_check(&ll, alice, scope, &lim, &one, t + 60000, NULL, 0, used, alerted));
    CHECK_EQ_INT(used[0], 1);
    CHECK_EQ_INT(used[1], 6);
    local_free(&ll);
}

TEST(a_local_reservation_settles_once_and_gives_back_the_difference)
{
    struct local_limits ll;
    local_init(&ll, 64, 8);
    struct rules_resolved lim = {.enabled = true, .n = 1, .counted = 1};
    lim.rule[0] = rule(RULES_TOKENS, RULES_DAY, 1000);
    uint64_t scope[1] = {local_scope_hash(alice, ":p:openai", 9)};
    struct check_amounts a = {.cost = 1, .tokens = 800};
    int64_t used[1];
    char alerted[LOCAL_ALERTED_LEN];
    CHECK(local_check(&ll, alice, scope, &lim, &a, now, "l123456789abcdef", 900000, used, alerted));
    CHECK_EQ_INT(used[0], 800);
    CHECK(!local_check(&ll, alice, scope, &lim, &a, now, NULL, 0, used, alerted));
    CHECK_EQ_INT(local_settle(&ll, alice, "l123456789abcdef", true, 100, false, 0, false, now + 1),
                 LOCAL_SETTLED);
    CHECK_EQ_INT(local_settle(&ll, alice, "l123456789abcdef", true, 100, false, 0, false, now + 2),
                 LOCAL_DUPLICATE);
    CHECK_EQ_INT(local_settle(&ll, alice, "l000000000000000", true, 1, false, 0, false, now + 2),
                 LOCAL_UNKNOWN);
    CHECK(local_check(&ll, alice, scope, &lim, &a, now + 3, NULL, 0, used, alerted));
    CHECK_EQ_INT(used[0], 900);
    local_free(&ll);
}

TEST(a_local_check_alerts_once_per_rule_and_window_when_the_share_is_reached)
{
    struct local_limits ll;
    local_init(&ll, 64, 8);
    struct rules_resolved lim = {.enabled = true, .n = 2, .counted = 2};
    lim.rule[0] = rule(RULES_REQUESTS, RULES_MINUTE, 10);
    lim.rule[0].alert_percent = 50;
    lim.rule[1] = rule(RULES_REQUESTS, RULES_MINUTE, 4);
    lim.rule[1].alert_percent = 100;
    lim.rule[1].shadow = true;
    uint64_t scope[2] = {local_scope_hash(alice, ":p:openai", 9),
                         local_scope_hash(alice, ":p:openai", 9)};
    int64_t used[2];
    char alerted[LOCAL_ALERTED_LEN];
    uint64_t t = now - now % 60000;
    const char *expect[] = {"", "", "", "2", "1", "", ""};
    for (int i = 0; i < 7; i++) {
        CHECK(local_check(&ll, alice, scope, &lim, &one, t + (uint64_t)i, NULL, 0, used, alerted));
        CHECK_EQ_STR(alerted, expect[i]);
    }
    /* A peek charges nothing and raises nothing; the next minute alerts again. */
    struct check_amounts peek = {0};
    CHECK(local_check(&ll, alice, scope, &lim, &peek, t + 10, NULL, 0, used, alerted));
    CHECK_EQ_STR(alerted, "");
    for (int i = 0; i < 4; i++)
        CHECK(local_check(&ll, alice, scope, &lim, &one, t + 60000, NULL, 0, used, alerted));
    CHECK_EQ_STR(alerted, "2");
    local_free(&ll);
}

int main(void)
{
    return RUN(T(an_allowed_check_reports_what_is_left_and_no_retry),
               T(a_minute_denial_retries_at_the_minute_reset),
               T(when_several_rules_deny_the_longest_wait_names_the_reason),
               T(no_rule_of_the_provider_reports_nil_v1_limits),
               T(a_rule_with_no_room_left_denies_an_amount_of_zero_but_not_a_peek),
               T(a_tokens_denial_of_the_hour_says_hour_limit),
               T(windows_are_utc_minutes_hours_days_and_calendar_months),
               T(the_answer_is_encoded_byte_for_byte_as_msgpack_c_would),
               T(the_local_windows_allow_up_to_the_limit_and_reset_with_the_minute),
               T(a_local_reservation_settles_once_and_gives_back_the_difference),
               T(a_local_check_alerts_once_per_rule_and_window_when_the_share_is_reached));
}
