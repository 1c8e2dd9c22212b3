/* The limiter's pure core: decisions from window counts, and the local fallback windows. */
#include "check.h"
#include "decision.h"
#include "methods_check.h"

#include "rpc.h"
#include "usaged/protocol.h"

#include <msgpack.h>

static const struct rules_resolved five_per_minute = {true, 5, 100};

TEST(an_allowed_check_reports_what_is_left_and_no_retry)
{
    struct check_result r;
    decision_make(&five_per_minute, 0, 3, 40, 1700000000123ULL, &r);
    CHECK(r.allowed);
    CHECK(r.reason == NULL);
    CHECK_EQ_INT(r.remaining_minute, 2);
    CHECK_EQ_INT(r.remaining_day, 60);
    CHECK_EQ_INT(r.retry_after_ms, 0);
    CHECK_EQ_INT(r.reset_minute_ms, 60000 - 1700000000123ULL % 60000);
    CHECK_EQ_INT(r.reset_day_ms, 86400000 - 1700000000123ULL % 86400000);
}

TEST(a_minute_denial_retries_at_the_minute_reset)
{
    struct check_result r;
    decision_make(&five_per_minute, DECISION_DENY_MINUTE, 5, 40, 1700000000123ULL, &r);
    CHECK(!r.allowed);
    CHECK_EQ_STR(r.reason, USAGED_REASON_MINUTE_LIMIT);
    CHECK_EQ_INT(r.retry_after_ms, r.reset_minute_ms);
    CHECK(r.retry_after_ms > 0 && r.retry_after_ms <= 60000);
    CHECK_EQ_INT(r.remaining_minute, 0);
}

TEST(a_day_denial_names_the_day_and_waits_for_the_day_even_when_the_minute_also_denies)
{
    struct check_result r;
    decision_make(&five_per_minute, DECISION_DENY_MINUTE | DECISION_DENY_DAY, 5, 100,
                  1700000000123ULL, &r);
    CHECK_EQ_STR(r.reason, USAGED_REASON_DAY_LIMIT);
    CHECK_EQ_INT(r.retry_after_ms, r.reset_day_ms);
}

TEST(unlimited_windows_report_nil_limits_and_remaining)
{
    struct rules_resolved unlimited = {true, RULES_UNLIMITED, RULES_UNLIMITED};
    struct check_result r;
    decision_make(&unlimited, 0, 0, 0, 0, &r);
    CHECK(r.allowed);
    CHECK_EQ_INT(r.limit_minute, RULES_UNLIMITED);
    CHECK_EQ_INT(r.remaining_day, RULES_UNLIMITED);
}

TEST(a_count_over_a_lowered_limit_reports_zero_left)
{
    struct check_result r;
    decision_make(&five_per_minute, DECISION_DENY_MINUTE, 9, 9, 0, &r);
    CHECK_EQ_INT(r.remaining_minute, 0);
}

TEST(the_local_windows_allow_up_to_the_limit_and_reset_with_the_minute)
{
    struct decision_local w = {0};
    struct check_result r;
    uint64_t t = 1700000000000ULL - 1700000000000ULL % 60000; /* the start of a minute */
    for (int i = 0; i < 5; i++) {
        decision_local_check(&w, &five_per_minute, 1, t + (uint64_t)i, &r);
        CHECK(r.allowed);
        CHECK(r.degraded);
        CHECK_EQ_INT(r.remaining_minute, 4 - i);
    }
    decision_local_check(&w, &five_per_minute, 1, t + 10, &r);
    CHECK(!r.allowed);
    CHECK_EQ_STR(r.reason, USAGED_REASON_MINUTE_LIMIT);
    decision_local_check(&w, &five_per_minute, 1, t + 60000, &r);
    CHECK(r.allowed);
    CHECK_EQ_INT(r.remaining_day, 94);
}

TEST(a_local_denial_spends_nothing_in_either_window)
{
    struct decision_local w = {0};
    struct check_result r;
    decision_local_check(&w, &five_per_minute, 4, 0, &r);
    decision_local_check(&w, &five_per_minute, 2, 1, &r);
    CHECK(!r.allowed);
    CHECK_EQ_INT(w.minute_used, 4);
    CHECK_EQ_INT(w.day_used, 4);
    decision_local_check(&w, &five_per_minute, 1, 2, &r);
    CHECK(r.allowed);
}

/* The answer as msgpack-c packs it, key by key: the reference for the daemon's own encoder. */
static void reference_pack(msgpack_packer *pk, const struct check_result *r)
{
    msgpack_pack_map(pk, 10);
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
}

static bool packs_like_msgpack_c(const struct check_result *r)
{
    msgpack_sbuffer a, b;
    msgpack_sbuffer_init(&a);
    msgpack_sbuffer_init(&b);
    msgpack_packer pa, pb;
    msgpack_packer_init(&pa, &a, msgpack_sbuffer_write);
    msgpack_packer_init(&pb, &b, msgpack_sbuffer_write);
    methods_check_pack_result(&pa, r);
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
        };
        CHECK(packs_like_msgpack_c(&r));
    }
}

int main(void)
{
    return RUN(T(an_allowed_check_reports_what_is_left_and_no_retry),
               T(a_minute_denial_retries_at_the_minute_reset),
               T(a_day_denial_names_the_day_and_waits_for_the_day_even_when_the_minute_also_denies),
               T(unlimited_windows_report_nil_limits_and_remaining),
               T(a_count_over_a_lowered_limit_reports_zero_left),
               T(the_local_windows_allow_up_to_the_limit_and_reset_with_the_minute),
               T(a_local_denial_spends_nothing_in_either_window),
               T(the_answer_is_encoded_byte_for_byte_as_msgpack_c_would));
}
