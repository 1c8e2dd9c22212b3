/* check_call: the script call usaged's limiter sends Redis for a batch of checks, rebuilt for
 * usage-bench --redis, so that Redis runs the daemon's script (src/limits/check.lua) with the
 * KEYS and ARGV it runs with behind the daemon: the floor beside the daemon's latency.
 *
 * It mirrors src/limits/limiter.c (flush_batch, which lays out the call; limiter_check and
 * send_call, which let a key's checks share one part of it; limiter_format_base and
 * limiter_scope_suffix, which name the keys) for the case usage-bench measures: checks under
 * their provider's two v1 rules alone (requests per minute and per day, from api_providers,
 * counted per user and provider), with no model, tokens or spend, hence no reservation. The
 * daemon's code is not linked in: its limiter comes with the whole core library (hiredis, libpq,
 * the rules' loading), and the load generator must stay small beside what it measures. When
 * the limiter's call changes, this file changes with it: tests/integration/test_bench_smoke.py
 * compares the two calls, as Redis's slow log records them.
 *
 * A call of k checks, each on a key (user, provider), in the order they fell due:
 *   EVALSHA sha 0 (no KEYS: they are for a Redis Cluster's routing only);
 *   ARGV: "c", the reservation TTL, the number of key parts and per key part the user's base
 *   "prefix{user_id}"; the number of heads, one per provider of the call in the order of its
 *   first key part, each: 1 (one scope), its suffix ":p:" provider, the number of rules, per
 *   rule 1 (the scope), its field ("rm", "rd"), limit, "0" (not shadow) and "0" (no alert);
 *   then per key part: its head's number, the number of checks, per check its cost, tokens 0,
 *   spend 0 and "" (no reservation).
 * A key's checks in one call are one key part, placed where its first check came (at most 512
 * of them, the daemon's MAX_COSTS_PER_CALL: the daemon queues the rest behind the call, where
 * here they start a second part). A window whose limit is -1 (unlimited) is no rule.
 *
 * The reply: {now_ms, then per check, key part by key part: 0 allowed or 1 denied, then each
 * rule's count after it}, or for a key Redis cannot count: -1, the error, and zeros. */
#ifndef BENCH_CHECK_CALL_H
#define BENCH_CHECK_CALL_H

#include <stddef.h>
#include <stdint.h>

#include "resp.h"

#define CHECK_CALL_MAX_CHECKS 1024 /* checks in one call: the daemon's MAX_CHECKS_PER_BATCH */
#define CHECK_CALL_TABLE 2048      /* slots of the table of a call's keys; 2 x the above */

struct check_call {
    char sha[41];
    uint32_t users, nproviders;
    uint32_t rules;    /* rules per check (1 or 2) */
    char *bases;       /* per user, its base as a RESP bulk string, base_len bytes each */
    size_t base_len;   /* the same for every user: the prefix and a uuid */
    char *heads;       /* per provider, its head (scope, rules), in RESP */
    size_t *head_off;  /* [nproviders + 1]: provider p's is heads[off[p] .. off[p + 1]) */
    char preamble[64]; /* "c" and the reservation TTL, in RESP */
    size_t preamble_len;
    char check[96]; /* one check's four arguments, in RESP */
    size_t check_len;
    /* A call's key parts: the key and the number of checks of each, in KEYS order, and the
     * table that finds a key's part (a slot is this call's when its stamp is). */
    uint32_t part_key[CHECK_CALL_MAX_CHECKS], part_n[CHECK_CALL_MAX_CHECKS];
    uint32_t part_head[CHECK_CALL_MAX_CHECKS];     /* the number of the part's head */
    uint32_t head_provider[CHECK_CALL_MAX_CHECKS]; /* per head of the call, its provider */
    uint32_t slot_key[CHECK_CALL_TABLE], slot_part[CHECK_CALL_TABLE];
    uint32_t slot_stamp[CHECK_CALL_TABLE];
    uint32_t stamp;
};

/* The calls for checks of users 0 .. users-1 (gen_user_id) and these providers, each check of
 * `cost` under the limits per minute and per day (-1: unlimited), keys under key_prefix.
 * Returns NULL, with a reason in err, when the arguments cannot make a call the daemon makes
 * (both windows unlimited: the daemon asks Redis nothing). */
struct check_call *check_call_new(const char *sha, const char *key_prefix, uint32_t users,
                                  const char *const *providers, uint32_t nproviders,
                                  int64_t per_minute, int64_t per_day, uint64_t cost, char *err,
                                  size_t err_len);
void check_call_free(struct check_call *cc);

/* Writes the whole command (RESP) of one call of k checks (1 .. CHECK_CALL_MAX_CHECKS) on the
 * keys keys[0 .. k-1], key i being user i / nproviders and provider i % nproviders. */
void check_call_write(struct check_call *cc, const uint32_t *keys, uint32_t k, resp_write_fn write,
                      void *data);

#endif
