/* The limiter's pure core: decisions from window counts, and the local fallback windows. */
#include "check.h"
#include "limiter.h"

#include "usaged/protocol.h"

static const struct rules_resolved five_per_minute = {true, 5, 100};

TEST(an_allowed_check_reports_what_is_left_and_no_retry)
{
    struct check_result r;
    limiter_decide(&five_per_minute, 0, 3, 40, 1700000000123ULL, &r);
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
    limiter_decide(&five_per_minute, LIMITER_DENY_MINUTE, 5, 40, 1700000000123ULL, &r);
    CHECK(!r.allowed);
    CHECK_EQ_STR(r.reason, USAGED_REASON_MINUTE_LIMIT);
    CHECK_EQ_INT(r.retry_after_ms, r.reset_minute_ms);
    CHECK(r.retry_after_ms > 0 && r.retry_after_ms <= 60000);
    CHECK_EQ_INT(r.remaining_minute, 0);
}

TEST(a_day_denial_names_the_day_and_waits_for_the_day_even_when_the_minute_also_denies)
{
    struct check_result r;
    limiter_decide(&five_per_minute, LIMITER_DENY_MINUTE | LIMITER_DENY_DAY, 5, 100,
                   1700000000123ULL, &r);
    CHECK_EQ_STR(r.reason, USAGED_REASON_DAY_LIMIT);
    CHECK_EQ_INT(r.retry_after_ms, r.reset_day_ms);
}

TEST(unlimited_windows_report_nil_limits_and_remaining)
{
    struct rules_resolved unlimited = {true, RULES_UNLIMITED, RULES_UNLIMITED};
    struct check_result r;
    limiter_decide(&unlimited, 0, 0, 0, 0, &r);
    CHECK(r.allowed);
    CHECK_EQ_INT(r.limit_minute, RULES_UNLIMITED);
    CHECK_EQ_INT(r.remaining_day, RULES_UNLIMITED);
}

TEST(a_count_over_a_lowered_limit_reports_zero_left)
{
    struct check_result r;
    limiter_decide(&five_per_minute, LIMITER_DENY_MINUTE, 9, 9, 0, &r);
    CHECK_EQ_INT(r.remaining_minute, 0);
}

TEST(the_local_windows_allow_up_to_the_limit_and_reset_with_the_minute)
{
    struct limiter_local w = {0};
    struct check_result r;
    uint64_t t = 1700000000000ULL - 1700000000000ULL % 60000; /* the start of a minute */
    for (int i = 0; i < 5; i++) {
        limiter_local_check(&w, &five_per_minute, 1, t + (uint64_t)i, &r);
        CHECK(r.allowed);
        CHECK(r.degraded);
        CHECK_EQ_INT(r.remaining_minute, 4 - i);
    }
    limiter_local_check(&w, &five_per_minute, 1, t + 10, &r);
    CHECK(!r.allowed);
    CHECK_EQ_STR(r.reason, USAGED_REASON_MINUTE_LIMIT);
    limiter_local_check(&w, &five_per_minute, 1, t + 60000, &r);
    CHECK(r.allowed);
    CHECK_EQ_INT(r.remaining_day, 94);
}

TEST(a_local_denial_spends_nothing_in_either_window)
{
    struct limiter_local w = {0};
    struct check_result r;
    limiter_local_check(&w, &five_per_minute, 4, 0, &r);
    limiter_local_check(&w, &five_per_minute, 2, 1, &r);
    CHECK(!r.allowed);
    CHECK_EQ_INT(w.minute_used, 4);
    CHECK_EQ_INT(w.day_used, 4);
    limiter_local_check(&w, &five_per_minute, 1, 2, &r);
    CHECK(r.allowed);
}

int main(void)
{
    return RUN(T(an_allowed_check_reports_what_is_left_and_no_retry),
               T(a_minute_denial_retries_at_the_minute_reset),
               T(a_day_denial_names_the_day_and_waits_for_the_day_even_when_the_minute_also_denies),
               T(unlimited_windows_report_nil_limits_and_remaining),
               T(a_count_over_a_lowered_limit_reports_zero_left),
               T(the_local_windows_allow_up_to_the_limit_and_reset_with_the_minute),
               T(a_local_denial_spends_nothing_in_either_window));
}
