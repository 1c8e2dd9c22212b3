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

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "conn.h"
#include "rules.h"
#include "redis.h"
#include "rpc.h"

/* ---- the pure core: decisions from counts ---- */

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
#define LIMITER_DENY_MINUTE 1
#define LIMITER_DENY_DAY 2

void limiter_decide(const struct rules_resolved *lim, int deny, int64_t used_minute,
                    int64_t used_day, uint64_t now_ms, struct check_result *out);

/* The in-process fixed windows used when Redis is unreachable (limits.on_redis_error: local). */
struct limiter_local {
    int64_t minute; /* window id: unix minutes */
    int64_t minute_used;
    int64_t day; /* window id: unix days */
    int64_t day_used;
};

void limiter_local_check(struct limiter_local *w, const struct rules_resolved *lim, uint32_t cost,
                         uint64_t now_ms, struct check_result *out);

void limiter_pack_result(msgpack_packer *pk, const struct check_result *r);

/* The Lua script, for the benchmark to run the same one. */
extern const char limiter_script[];

/* ---- the module ---- */

struct limiter_key;
struct limiter_check;

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
    struct limiter_key *keys;     /* open addressing, fixed capacity */
    /* Key calls made during this loop iteration, sent as one script call after its I/O. */
    uv_prepare_t flush;
    struct limiter_call *batch, *batch_tail;
    uint32_t batch_calls, batch_checks;
    uint32_t key_capacity;
    uint32_t key_count;
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
enum conn_dispatch_result limiter_submit(struct limiter *l, struct conn *c,
                                         const struct rpc_message *m);
void limiter_close(struct limiter *l, void (*on_closed)(struct limiter *l, void *arg), void *arg);
void limiter_pack_stats(const struct limiter *l, msgpack_packer *pk);

#endif
