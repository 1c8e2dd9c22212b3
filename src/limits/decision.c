/* decision: see decision.h. */
#include "decision.h"

#include <string.h>

#include "usaged/protocol.h"

/* Days since 1970-01-01 of a civil date, and back (H. Hinnant's algorithms, proleptic
 * Gregorian): the month window needs the calendar, in Lua and here alike. */
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int64_t *m)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = yoe + era * 400 + (*m <= 2);
}

static const uint64_t window_ms[] = {60000ULL, 3600000ULL, 86400000ULL};

int64_t decision_window_id(enum rules_window w, uint64_t now_ms)
{
    if (w != RULES_MONTH)
        return (int64_t)(now_ms / window_ms[w]);
    int64_t y, m;
    civil_from_days((int64_t)(now_ms / DECISION_DAY_MS), &y, &m);
    return y * 12 + m - 1;
}

uint64_t decision_reset_ms(enum rules_window w, uint64_t now_ms)
{
    if (w != RULES_MONTH)
        return window_ms[w] - now_ms % window_ms[w];
    int64_t y, m;
    civil_from_days((int64_t)(now_ms / DECISION_DAY_MS), &y, &m);
    int64_t next = m == 12 ? days_from_civil(y + 1, 1, 1) : days_from_civil(y, m + 1, 1);
    return (uint64_t)next * DECISION_DAY_MS - now_ms;
}

int64_t decision_amount(const struct check_amounts *a, enum rules_dimension d)
{
    switch (d) {
    case RULES_REQUESTS:
        return a->cost;
    case RULES_TOKENS:
        return (int64_t)a->tokens;
    case RULES_CONCURRENT:
        return decision_is_peek(a) ? 0 : 1;
    case RULES_SPEND:
        break;
    }
    return a->spend;
}

bool decision_is_peek(const struct check_amounts *a)
{
    return a->cost == 0 && a->tokens == 0 && a->spend == 0;
}

bool decision_rule_denies(int64_t limit, int64_t used, int64_t amount, bool peek)
{
    if (limit == RULES_UNLIMITED)
        return false;
    if (peek)
        return used > limit; /* as in v1: a peek is refused only past the limit */
    return used + amount > limit || (amount == 0 && used >= limit);
}

uint64_t decision_window_start_ms(enum rules_window w, uint64_t now_ms)
{
    if (w != RULES_MONTH)
        return now_ms - now_ms % window_ms[w];
    int64_t y, m;
    civil_from_days((int64_t)(now_ms / DECISION_DAY_MS), &y, &m);
    return (uint64_t)days_from_civil(y, m, 1) * DECISION_DAY_MS;
}

uint64_t decision_rule_reset_ms(const struct rules_applied *r, uint64_t now_ms)
{
    return r->dimension == RULES_CONCURRENT ? 0 : decision_reset_ms(r->window, now_ms);
}

/* How long the check should wait for this rule to have room. */
static uint64_t wait_of(const struct rules_applied *r, uint64_t now_ms)
{
    return r->dimension == RULES_CONCURRENT ? DECISION_CONCURRENCY_RETRY_MS
                                            : decision_reset_ms(r->window, now_ms);
}

static const char *reason_of(const struct rules_applied *r)
{
    static const char *const reasons[] = {USAGED_REASON_MINUTE_LIMIT, USAGED_REASON_HOUR_LIMIT,
                                          USAGED_REASON_DAY_LIMIT, USAGED_REASON_MONTH_LIMIT};
    return r->dimension == RULES_CONCURRENT ? USAGED_REASON_CONCURRENCY_LIMIT : reasons[r->window];
}

static int64_t left_in(int64_t limit, int64_t used)
{
    if (limit == RULES_UNLIMITED || used == RULES_UNLIMITED)
        return RULES_UNLIMITED;
    return used >= limit ? 0 : limit - used;
}

static void v1_keys(const struct rules_resolved *rules, uint64_t now_ms, struct check_result *out)
{
    out->reset_minute_ms = decision_reset_ms(RULES_MINUTE, now_ms);
    out->reset_day_ms = decision_reset_ms(RULES_DAY, now_ms);
    out->limit_minute = rules->per_minute;
    out->limit_day = rules->per_day;
    out->remaining_minute = out->remaining_day = RULES_UNLIMITED;
}

void decision_uncounted(const struct rules_resolved *rules, bool allowed, const char *reason,
                        uint64_t now_ms, struct check_result *out)
{
    /* Field by field: the whole struct (used[] is RULES_APPLY_MAX long) would be most of the
     * cost, and only the rules' n uses are read. */
    out->rules = rules;
    out->now_ms = now_ms;
    out->denied_by = out->shadow_denied_by = -1;
    out->allowed = allowed;
    out->reason = reason;
    out->retry_after_ms = 0;
    out->degraded = false;
    out->reservation[0] = '\0';
    v1_keys(rules, now_ms, out);
    for (int i = 0; i < rules->n; i++)
        out->used[i] = RULES_UNLIMITED;
}

void decision_make(const struct rules_resolved *rules, const struct check_amounts *a, bool allowed,
                   const int64_t *used, uint64_t now_ms, struct check_result *out)
{
    decision_uncounted(rules, allowed, NULL, now_ms, out);
    bool peek = decision_is_peek(a);
    uint64_t shadow_wait = 0;
    for (int i = 0; i < rules->counted; i++) {
        const struct rules_applied *r = &rules->rule[i];
        out->used[i] = used[i];
        if (r->by_provider && !r->by_model && r->dimension == RULES_REQUESTS && !r->shadow) {
            if (r->window == RULES_MINUTE)
                out->remaining_minute = left_in(r->limit, used[i]);
            else if (r->window == RULES_DAY)
                out->remaining_day = left_in(r->limit, used[i]);
        }
        if (used[i] == RULES_UNLIMITED)
            continue; /* not counted (a concurrent rule under the local fallback) */
        int64_t amount = decision_amount(a, (enum rules_dimension)r->dimension);
        if (r->shadow) {
            /* Charged with the check when it was allowed (not for a peek): judged on the use
             * before it. */
            int64_t before = allowed && !peek ? used[i] - amount : used[i];
            if (!decision_rule_denies(r->limit, before, amount, peek))
                continue;
            uint64_t wait = wait_of(r, now_ms);
            if (out->shadow_denied_by < 0 || wait > shadow_wait) {
                out->shadow_denied_by = i;
                shadow_wait = wait;
            }
            continue;
        }
        if (allowed)
            continue;
        /* Denied: the rules with no room for it; the longest wait names the reason. */
        if (!decision_rule_denies(r->limit, used[i], amount, peek))
            continue;
        uint64_t wait = wait_of(r, now_ms);
        if (out->denied_by < 0 || wait > out->retry_after_ms) {
            out->denied_by = i;
            out->retry_after_ms = wait;
        }
    }
    if (!allowed) {
        if (out->denied_by < 0) /* the counts moved on: say the first enforced rule */
            for (int i = 0; i < rules->counted && out->denied_by < 0; i++)
                if (!rules->rule[i].shadow)
                    out->denied_by = i;
        static const struct rules_applied minute = {.dimension = RULES_REQUESTS};
        const struct rules_applied *r =
            out->denied_by >= 0 ? &rules->rule[out->denied_by] : &minute;
        out->reason = reason_of(r);
        out->retry_after_ms = wait_of(r, now_ms);
    }
}
