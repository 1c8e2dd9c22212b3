/* decision: see decision.h. */
#include "decision.h"

#include <string.h>

#include "usaged/protocol.h"

static int64_t left_in(int64_t limit, int64_t used)
{
    if (limit == RULES_UNLIMITED)
        return RULES_UNLIMITED;
    return used >= limit ? 0 : limit - used;
}

static void fill_resets(struct check_result *out, uint64_t now_ms)
{
    out->reset_minute_ms = DECISION_MINUTE_MS - now_ms % DECISION_MINUTE_MS;
    out->reset_day_ms = DECISION_DAY_MS - now_ms % DECISION_DAY_MS;
}

void decision_make(const struct rules_resolved *lim, int deny, int64_t used_minute,
                   int64_t used_day, uint64_t now_ms, struct check_result *out)
{
    memset(out, 0, sizeof(*out));
    fill_resets(out, now_ms);
    out->limit_minute = lim->per_minute;
    out->limit_day = lim->per_day;
    out->remaining_minute = left_in(lim->per_minute, used_minute);
    out->remaining_day = left_in(lim->per_day, used_day);
    out->allowed = deny == 0;
    if (deny & DECISION_DENY_DAY)
        out->reason = USAGED_REASON_DAY_LIMIT; /* the longer wait names the reason */
    else if (deny & DECISION_DENY_MINUTE)
        out->reason = USAGED_REASON_MINUTE_LIMIT;
    if (deny & DECISION_DENY_MINUTE)
        out->retry_after_ms = out->reset_minute_ms;
    if ((deny & DECISION_DENY_DAY) && out->reset_day_ms > out->retry_after_ms)
        out->retry_after_ms = out->reset_day_ms;
}

void decision_local_check(struct decision_local *w, const struct rules_resolved *lim, uint32_t cost,
                          uint64_t now_ms, struct check_result *out)
{
    int64_t minute = (int64_t)(now_ms / DECISION_MINUTE_MS);
    int64_t day = (int64_t)(now_ms / DECISION_DAY_MS);
    if (w->minute != minute) {
        w->minute = minute;
        w->minute_used = 0;
    }
    if (w->day != day) {
        w->day = day;
        w->day_used = 0;
    }
    int deny = 0;
    if (lim->per_minute != RULES_UNLIMITED && w->minute_used + cost > lim->per_minute)
        deny |= DECISION_DENY_MINUTE;
    if (lim->per_day != RULES_UNLIMITED && w->day_used + cost > lim->per_day)
        deny |= DECISION_DENY_DAY;
    if (deny == 0) {
        w->minute_used += cost;
        w->day_used += cost;
    }
    decision_make(lim, deny, w->minute_used, w->day_used, now_ms, out);
    out->degraded = true;
}
