/* limiter: the `check` method. Per-user, per-provider limits per UTC minute and per UTC day,
 * counted in Redis by an atomic Lua script (windows from Redis's TIME, both windows checked, both
 * incremented only when both allow), exact across every daemon sharing the Redis.
 *
 * Three ways past Redis's own rate, none giving up exactness:
 *   - batching: the checks of all keys read in one loop iteration go in one script call (up to
 *     MAX_CHECKS_PER_BATCH), which applies them in order: Redis's cost per call is shared;
 *   - coalescing: checks of one key that arrive while a script call for that key is in flight
 *     wait, and then go together in one call that applies them one after the other, exactly as
 *     if sent one by one;
 *   - the over-limit cache: after a denial, a check of the same key that asks for more than was
 *     left is denied from memory until the window resets (limits changing clears it).
 * When Redis is down or slower than redis.timeout_ms, limits.on_redis_error decides (local: an
 * in-process fixed-window limiter with the same limits; allow; deny) and the answer says
 * degraded: true. */
#ifndef USAGED_LIMITER_H
#define USAGED_LIMITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "decision.h"
#include "errors.h"
#include "keytable.h"
#include "redis.h"
#include "rules.h"

/* The Lua script (src/limits/check.lua, embedded at build time), for the benchmark to run the
 * same one. */
extern const char limiter_script[];

/* A check, as the methods layer hands it over: no connection, no message. */
struct limiter_request {
    uint8_t user_id[16];
    const char *provider; /* UTF-8, 1..RULES_PROVIDER_MAX characters; read during the call only */
    size_t provider_len;
    uint32_t cost;
};

/* ---- the module ---- */

struct limiter_stats {
    uint64_t checks;
    uint64_t allowed;
    uint64_t denied_minute;
    uint64_t denied_day;
    uint64_t denied_disabled;
    uint64_t degraded;
    uint64_t unknown_provider;
    uint64_t cache_hits; /* denied from the over-limit cache, no round trip */
    uint64_t coalesced;  /* checks that shared a script call with an earlier one of their key */
    uint64_t batched;    /* key calls sent in another key's script call: round trips saved */
    uint64_t key_errors; /* checks of keys Redis refused to count (wrong type), by the policy */
    uint64_t script_calls;
    uint64_t unlimited; /* allowed without Redis: both windows unlimited */
};

struct limiter {
    uv_loop_t *loop;
    struct rules rules;
    struct redis_client redis;
    char *key_prefix;
    uint32_t timeout_ms;
    enum config_redis_policy policy;
    bool log_denied;
    uint64_t key_error_logged_ms; /* loop time of the last key_refused log line */
    struct keytable keys;
    /* Key calls made during this loop iteration, sent as one script call after its I/O. */
    uv_prepare_t flush;
    struct limiter_call *batch, *batch_tail;
    uint32_t batch_calls, batch_checks;
    /* Checks and calls answered, kept for reuse (at most LIMITER_SPARE each): the check path
     * would otherwise allocate and free both for every check. */
    struct limiter_check *spare_checks;
    struct limiter_call *spare_calls;
    uint32_t nspare_checks, nspare_calls;
    void (*on_denied)(void *arg, const uint8_t user_id[16], const char *provider, size_t len,
                      const char *reason, int64_t now_ms);
    void *denied_arg;
    /* Called when Redis or the limits' connection changes state, so that the daemon can judge
     * its readiness; set by the owner after limiter_init. */
    void (*on_state)(void *arg);
    void *state_arg;
    int closing;
    void (*on_closed)(struct limiter *l, void *arg);
    void *closed_arg;
    struct limiter_stats stats;
};

void limiter_init(struct limiter *l, uv_loop_t *loop, const struct config *config);
void limiter_start(struct limiter *l);
/* Applies the limits, policy and timeout of a reloaded config. */
void limiter_configure(struct limiter *l, const struct config *config);
/* True once Redis has connected or failed a first attempt (the fallback policy then answers),
 * and the providers' limits have been read or their connection has failed a first attempt. */
bool limiter_settled(const struct limiter *l);
/* Checks a request: done(arg, tag, result) runs once with the answer, possibly before this
 * returns. False (and done never runs) when the check cannot be made: e says why
 * (unknown_provider, or unavailable while the limits have not been read yet). */
bool limiter_check(struct limiter *l, const struct limiter_request *req, limiter_done_fn done,
                   void *arg, uint64_t tag, struct rpc_error *e);
void limiter_close(struct limiter *l, void (*on_closed)(struct limiter *l, void *arg), void *arg);

#endif
