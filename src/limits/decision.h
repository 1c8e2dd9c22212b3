/* decision: a check's verdict and its answer from the counts Redis (or the local fallback)
 * reports. Pure: no I/O, no clock read it was not handed; the limiter calls it, the methods
 * layer packs what it fills. */
#ifndef USAGED_DECISION_H
#define USAGED_DECISION_H

#include <stdbool.h>
#include <stdint.h>

#include "rules.h"

struct check_result {
    bool allowed;
    const char *reason;   /* NULL when allowed */
    int64_t limit_minute; /* RULES_UNLIMITED: nil */
    int64_t limit_day;
    int64_t remaining_minute; /* RULES_UNLIMITED: nil */
    int64_t remaining_day;
    uint64_t reset_minute_ms;
    uint64_t reset_day_ms;
    uint64_t retry_after_ms;
    bool degraded;
};

/* What the script answers per check: which windows refused (bit 1: minute, bit 2: day; 0:
 * allowed) and each window's count after the check. */
#define DECISION_DENY_MINUTE 1
#define DECISION_DENY_DAY 2

#define DECISION_MINUTE_MS 60000ULL
#define DECISION_DAY_MS 86400000ULL

void decision_make(const struct rules_resolved *lim, int deny, int64_t used_minute,
                   int64_t used_day, uint64_t now_ms, struct check_result *out);

/* The in-process fixed windows used when Redis is unreachable (limits.on_redis_error: local). */
struct decision_local {
    int64_t minute; /* window id: unix minutes */
    int64_t minute_used;
    int64_t day; /* window id: unix days */
    int64_t day_used;
};

void decision_local_check(struct decision_local *w, const struct rules_resolved *lim, uint32_t cost,
                          uint64_t now_ms, struct check_result *out);

#endif
