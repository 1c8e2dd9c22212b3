/* decision: a check's verdict and its answer from the counts Redis (or the local fallback)
 * reports, and the windows' arithmetic (UTC minute, hour, day, calendar month). Pure: no I/O,
 * no clock read it was not handed; the limiter calls it, the methods layer packs what it
 * fills. */
#ifndef USAGED_DECISION_H
#define USAGED_DECISION_H

#include <stdbool.h>
#include <stdint.h>

#include "rules.h"

/* "<user uuid>.<16 hex digits>": the user's hash tag travels in it, so that any daemon can
 * find the reservation's keys. A reservation made while Redis was away (kept by the daemon
 * that made it) has 'l' for its first hex digit. */
#define DECISION_RESERVATION_LEN 53

/* What a check asks to spend. */
struct check_amounts {
    uint32_t cost;   /* requests */
    uint64_t tokens; /* estimate */
    int64_t spend;   /* estimate, micro-dollars */
};

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
    /* The rules applied (the answer's `limits`; NULL: none to report), the use of each counted
     * one after the check (RULES_UNLIMITED: not known), and the one that denied (-1: none). */
    const struct rules_resolved *rules;
    int64_t used[RULES_APPLY_MAX];
    int denied_by;
    int shadow_denied_by; /* a shadow rule that would have denied (-1: none) */
    uint64_t now_ms;      /* on Redis's clock: the rules' reset_ms are counted from it */
    char reservation[DECISION_RESERVATION_LEN + 1]; /* "": none */
};

#define DECISION_MINUTE_MS 60000ULL
#define DECISION_DAY_MS 86400000ULL

/* Window ids, as the script counts them: unix minutes, hours, days, and months since year 0
 * (year * 12 + month - 1). */
int64_t decision_window_id(enum rules_window w, uint64_t now_ms);
/* Milliseconds from now_ms to the end of its window. */
uint64_t decision_reset_ms(enum rules_window w, uint64_t now_ms);
/* The start of now_ms's window, unix ms. */
uint64_t decision_window_start_ms(enum rules_window w, uint64_t now_ms);
/* A rule's reset_ms: its window's; 0 for a concurrent rule, which has none. */
uint64_t decision_rule_reset_ms(const struct rules_applied *r, uint64_t now_ms);
/* What a check denied by a concurrent rule is told to wait: a slot frees when some call ends,
 * which nobody can know, so this is a short interval to try again after. */
#define DECISION_CONCURRENCY_RETRY_MS 1000

/* The amount of a check a rule of this dimension counts (a concurrent rule: one slot, none for a
 * peek). */
int64_t decision_amount(const struct check_amounts *a, enum rules_dimension d);
/* True when nothing is asked: a peek, which reports and spends nothing. */
bool decision_is_peek(const struct check_amounts *a);
/* Whether a rule with `used` so far denies the check: used + amount > limit, or no room left at
 * all (used >= limit) for an amount of 0 in a check that is not a peek. */
bool decision_rule_denies(int64_t limit, int64_t used, int64_t amount, bool peek);

/* Fills the answer. allowed: what the script (or the local windows) decided; used[i] is the use
 * of counted rule i after the check (before it, when denied). Shadow rules never deny; the one
 * that would have (the longest wait) is shadow_denied_by. */
void decision_make(const struct rules_resolved *rules, const struct check_amounts *a, bool allowed,
                   const int64_t *used, uint64_t now_ms, struct check_result *out);

/* The answer without counting: provider disabled, or every rule unlimited, or a policy that
 * allows or denies everything (used unknown). */
void decision_uncounted(const struct rules_resolved *rules, bool allowed, const char *reason,
                        uint64_t now_ms, struct check_result *out);

#endif
