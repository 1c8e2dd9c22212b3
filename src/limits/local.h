/* local: the rules counted in this daemon's memory, for limits.on_redis_error: local (Redis is
 * away). The same rules and the same arithmetic as the script, per daemon: each scope (a user,
 * with the provider and/or model a rule names) keeps its windows' ids and counts, and checks
 * that count tokens or spend get reservations kept here, which settle here. Bounded: a fixed
 * number of scopes (the least recently used gives way, its counts start again) and of
 * reservations (the oldest gives way, and is then unknown). Concurrent rules are not counted
 * here (their use reads as unknown): calls in flight are a count across daemons, which one
 * daemon alone cannot keep. Shadow rules are counted and never deny. Alerts are decided as the
 * script decides them, once per scope, rule and window in this daemon (the alert row's id makes
 * them once in the table whatever the number of daemons). Pure: the time is handed
 * in. */
#ifndef USAGED_LOCAL_H
#define USAGED_LOCAL_H

#include <stdbool.h>
#include <stdint.h>

#include "decision.h"
#include "rules.h"

#define LOCAL_RID_LEN 16
#define LOCAL_ALERTED_LEN                                                                          \
    (RULES_APPLY_MAX * 4 + 1) /* "2,5": the script's list of alerted rules                         \
                               */

struct local_scope {
    uint64_t hash; /* of the scope's user and suffix; 0: free */
    uint64_t last_used_ms;
    int64_t window[RULES_WINDOWS];                  /* ids */
    int64_t count[RULES_DIMENSIONS][RULES_WINDOWS]; /* in those windows */
    /* The window id in which each rule of the scope last alerted ([1]: a shadow rule's), so that
     * it alerts once per window here; -1 none. */
    int64_t alerted[2][RULES_DIMENSIONS][RULES_WINDOWS];
};

struct local_charge {
    uint64_t scope;
    uint8_t dimension, window;
    int64_t window_id;
};

struct local_reservation {
    char rid[LOCAL_RID_LEN + 1];
    uint8_t user_id[16];
    bool settled;
    uint64_t expires_ms;
    struct check_amounts amounts;
    uint8_t n;
    struct local_charge *charges;
};

struct local_limits {
    struct local_scope *scopes;
    uint32_t nscopes;                       /* a power of two */
    struct local_reservation *reservations; /* a ring */
    uint32_t nreservations, next_reservation;
};

enum local_settle { LOCAL_SETTLED = 0, LOCAL_DUPLICATE, LOCAL_UNKNOWN };

void local_init(struct local_limits *ll, uint32_t scopes, uint32_t reservations);
void local_free(struct local_limits *ll);
/* The hash of a scope: the user and the suffix naming its provider and model. Never 0. */
uint64_t local_scope_hash(const uint8_t user_id[16], const char *suffix, size_t len);
/* Checks and, when allowed, charges the counted rules of lim; scope[i] is rule i's scope hash.
 * used[i] gets rule i's use after the check (before it when denied). When allowed and rid is
 * not NULL, the charges are kept as a reservation until now_ms + ttl_ms. alerted gets the rules
 * whose alert_at_percent the charge reached first in their window here, as the script lists them
 * ("2,5", numbers from 1; "" none). */
bool local_check(struct local_limits *ll, const uint8_t user_id[16], const uint64_t *scope,
                 const struct rules_resolved *lim, const struct check_amounts *a, uint64_t now_ms,
                 const char *rid, uint64_t ttl_ms, int64_t *used, char alerted[LOCAL_ALERTED_LEN]);
/* Settles a reservation made here: tokens and spend replace its estimates (has_* false: kept);
 * cancel gives back everything it charged. Windows that have ended keep their counts. */
enum local_settle local_settle(struct local_limits *ll, const uint8_t user_id[16], const char *rid,
                               bool has_tokens, uint64_t tokens, bool has_spend, int64_t spend,
                               bool cancel, uint64_t now_ms);

#endif
