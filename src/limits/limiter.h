/* limiter: the `check` and `settle` methods' work. The rules that apply to a check (rules.h) are
 * counted in Redis by one atomic Lua script (src/limits/check.lua): windows from Redis's TIME,
 * every rule checked, all charged only when all allow, exact across every daemon sharing the
 * Redis. A check that counts tokens or spend, or takes a slot of a concurrent rule, gets a
 * reservation (a Redis string under the user's hash tag) that `settle`, or a log_prompt event
 * naming it, later corrects to what the call really used, freeing its slot. Shadow rules are
 * counted and reported (shadow_denied_by), never deny.
 *
 * Three ways past Redis's own rate, none giving up exactness:
 *   - batching: the checks of all keys read in one loop iteration go in one script call (up to
 *     MAX_CHECKS_PER_BATCH), which applies them in order: Redis's cost per call is shared;
 *   - coalescing: checks of one key (user, provider, model) that arrive while a script call for
 *     that key is in flight wait, and then go together in one call that applies them one after
 *     the other, exactly as if sent one by one;
 *   - the over-limit cache: after a denial, a check of the same key that asks for more than was
 *     left is denied from memory until the window resets (limits changing clears it). Only
 *     under request rules of the provider per minute and day, and only while no reservation
 *     can exist (a cancel gives requests back).
 * When Redis is down or slower than redis.timeout_ms, limits.on_redis_error decides (local: the
 * same rules counted in this daemon (local.h); allow; deny) and the answer says degraded: true.
 * log_prompt settles that find Redis away wait in a bounded queue and are retried. */
#ifndef USAGED_LIMITER_H
#define USAGED_LIMITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "alerts.h"
#include "config.h"
#include "decision.h"
#include "errors.h"
#include "keytable.h"
#include "ledger.h"
#include "local.h"
#include "redis.h"
#include "rules.h"
#include "shadows.h"

/* The Lua script (src/limits/check.lua, embedded at build time), for the benchmark to run the
 * same one. */
extern const char limiter_script[];

/* A check, as the methods layer hands it over: no connection, no message. */
struct limiter_request {
    uint8_t user_id[16];
    const char *provider; /* UTF-8, 1..RULES_PROVIDER_MAX characters; read during the call only */
    size_t provider_len;
    const char *model; /* NULL or model_len 0: none sent */
    size_t model_len;
    struct check_amounts amounts;
};

/* A settle: the reservation's user and id, what the call used, or a cancel. */
struct limiter_settle_request {
    uint8_t user_id[16];
    char rid[LOCAL_RID_LEN + 1];
    bool has_tokens, has_spend, cancel;
    uint64_t tokens;
    int64_t spend; /* micro-dollars */
};

enum limiter_settled {
    LIMITER_SETTLED = 0,
    LIMITER_DUPLICATE,   /* settled before: nothing changed */
    LIMITER_UNKNOWN,     /* no such reservation (never made, or past its TTL) */
    LIMITER_UNAVAILABLE, /* Redis is away: try again */
};

typedef void (*limiter_settle_fn)(void *arg, uint64_t tag, enum limiter_settled result);

/* Parses "<uuid>.<16 hex>" (a local one: 'l' and 15 hex). False when it is not one. */
bool limiter_parse_reservation(const char *s, size_t len, uint8_t user_id[16],
                               char rid[LOCAL_RID_LEN + 1]);

struct limiter_call;
struct limiter_settle;

struct limiter_stats {
    uint64_t checks;
    uint64_t allowed;
    uint64_t denied[RULES_WINDOWS]; /* by the denying rule's window */
    uint64_t denied_concurrency;    /* by a concurrent rule */
    /* Checks a shadow rule would have denied, by its window ([RULES_WINDOWS]: concurrent). */
    uint64_t shadow_denied[RULES_WINDOWS + 1];
    uint64_t denied_disabled;
    uint64_t degraded;
    uint64_t unknown_provider;
    uint64_t cache_hits; /* denied from the over-limit cache, no round trip */
    uint64_t coalesced;  /* checks that shared a script call with an earlier one of their key */
    uint64_t batched;    /* key calls sent in another key's script call: round trips saved */
    uint64_t key_errors; /* checks of keys Redis refused to count (wrong type), by the policy */
    uint64_t script_calls;
    uint64_t unlimited;    /* allowed without Redis: no rule with a limit */
    uint64_t reservations; /* made (in Redis or locally) */
    uint64_t settles;      /* settled (by settle or log_prompt), once each */
    uint64_t settles_duplicate;
    uint64_t settles_unknown;
    uint64_t settles_queued;  /* log_prompt settles that had to wait for Redis */
    uint64_t settles_dropped; /* log_prompt settles given up: queue full, or past the TTL */
};

struct limiter {
    uv_loop_t *loop;
    struct rules rules;
    struct alerts alerts; /* the rows of usage_alerts, on a connection of their own */
    struct redis_client redis;
    char *key_prefix;
    uint32_t timeout_ms;
    uint32_t reservation_ttl_s;
    uint32_t settle_queue_max;
    enum config_redis_policy policy;
    bool log_denied;
    uint64_t key_error_logged_ms; /* loop time of the last key_refused log line */
    uint64_t budgets_until_ms;    /* loop time until which a reservation may exist (cache off) */
    uint64_t rid_seed, rid_next;  /* reservation ids: splitmix64 of a random seed and a count */
    struct keytable keys;
    struct local_limits local;
    /* Key calls made during this loop iteration, sent as one script call after its I/O. */
    uv_prepare_t flush;
    struct limiter_call *batch, *batch_tail;
    uint32_t batch_calls, batch_checks;
    /* Settles waiting for the next script call, and log_prompt's waiting for Redis. */
    struct limiter_settle *settles, *settles_tail;
    uint32_t nsettles;
    struct limiter_settle *later, *later_tail;
    uint32_t nlater;
    uv_timer_t retry_timer; /* retries the waiting settles while Redis is away */
    /* Checks and calls answered, kept for reuse (at most LIMITER_SPARE each): the check path
     * would otherwise allocate and free both for every check. */
    struct limiter_check *spare_checks;
    struct limiter_call *spare_calls;
    uint32_t nspare_checks, nspare_calls;
    /* What checks of users without rules of their own are held to (RULES_CACHE_ENTRIES), so
     * that most checks skip resolving rules. */
    struct rules_cached *resolved;
    /* The script call being built: its arguments in RESP. Kept for the next call (grown as
     * needed, bounded by MAX_CHECKS_PER_BATCH checks a call). */
    char *call_text;
    size_t call_text_cap;
    /* Its users' heads (provider, model, rules), each user's head number and the table that
     * numbers them: kept like call_text. */
    struct limiter_head *heads;
    uint32_t *head_of, *head_table;
    size_t heads_cap, head_table_cap;
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
    struct ledger ledger;   /* reservations open, expired; concurrent slots in use */
    struct shadows shadows; /* shadow denials by rule pattern */
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
/* Settles a reservation: done runs once, possibly before this returns. */
void limiter_settle(struct limiter *l, const struct limiter_settle_request *req,
                    limiter_settle_fn done, void *arg, uint64_t tag);
/* Settles a reservation with nobody waiting for the answer (a log_prompt event): while Redis is
 * away it waits, at most limits.settle_queue of them, for up to limits.reservation_ttl_s. */
void limiter_settle_later(struct limiter *l, const struct limiter_settle_request *req);
void limiter_close(struct limiter *l, void (*on_closed)(struct limiter *l, void *arg), void *arg);

#endif
