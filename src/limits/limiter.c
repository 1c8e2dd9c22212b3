/* limiter: see limiter.h.
 *
 * A check's path: limits resolved (unknown, disabled and unlimited are
 * answered at once) -> the key's entry in a fixed-size table (the over-limit cache, the local
 * fallback windows, and the queue behind a call in flight) -> a denial from the cache, or a
 * place in the queue, or a script call of its own. */
#include "limiter.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "utf8.h"
#include "uuid.h"
#include "xalloc.h"

#include "usaged/protocol.h"

/* Answered checks and calls kept for reuse, each. None under AddressSanitizer, which can then
 * still catch a use after free on these paths. */
#if defined(__SANITIZE_ADDRESS__)
#define LIMITER_SPARE 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LIMITER_SPARE 0
#endif
#endif
#ifndef LIMITER_SPARE
#define LIMITER_SPARE 4096
#endif
#define KEY_CAPACITY 16384        /* entries of the key table; a power of two */
#define MAX_COSTS_PER_CALL 512    /* checks of one key in one call */
#define MAX_CHECKS_PER_BATCH 1024 /* checks of all keys in one script call */
#define CACHE_MARGIN_MS 50        /* the cache stops this long before a window ends */

/* ---- the key table ---- */

/* One key's part of a script call: checks of one key (or of no table entry), in arrival order. */
struct limiter_call {
    struct limiter *l;
    struct limiter_call *next; /* in the batch */
    struct keytable_entry *key;
    uint8_t user_id[16];
    char provider[RULES_PROVIDER_BYTES + 1];
    uint8_t provider_len;
    struct rules_resolved lim;
    struct limiter_check *checks, *checks_tail;
    uint32_t n;
    uint64_t sent_ms; /* loop time the script call was sent */
};

/* Checks and calls come from, and go back to, the limiter's spares (at most LIMITER_SPARE
 * each; "+ 1 <=" rather than "<" because LIMITER_SPARE may be 0). */
static struct limiter_check *new_check(struct limiter *l)
{
    struct limiter_check *check = l->spare_checks;
    if (!check)
        return xmalloc(sizeof(*check));
    l->spare_checks = check->next;
    l->nspare_checks--;
    return check;
}

static void free_check(struct limiter *l, struct limiter_check *check)
{
    if (l->nspare_checks + 1 > LIMITER_SPARE) {
        free(check);
        return;
    }
    check->next = l->spare_checks;
    l->spare_checks = check;
    l->nspare_checks++;
}

static struct limiter_call *new_call(struct limiter *l)
{
    struct limiter_call *call = l->spare_calls;
    if (!call)
        return xcalloc(1, sizeof(*call));
    l->spare_calls = call->next;
    l->nspare_calls--;
    memset(call, 0, sizeof(*call));
    return call;
}

static void free_call(struct limiter_call *call)
{
    struct limiter *l = call->l;
    if (l->nspare_calls + 1 > LIMITER_SPARE) {
        free(call);
        return;
    }
    call->next = l->spare_calls;
    l->spare_calls = call;
    l->nspare_calls++;
}

/* ---- answering ---- */

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void answer(struct limiter *l, struct limiter_check *check, const uint8_t user_id[16],
                   const char *provider, size_t len, const struct check_result *r)
{
    if (r->allowed)
        l->stats.allowed++;
    else if (strcmp(r->reason, USAGED_REASON_DAY_LIMIT) == 0)
        l->stats.denied_day++;
    else if (strcmp(r->reason, USAGED_REASON_MINUTE_LIMIT) == 0)
        l->stats.denied_minute++;
    else if (strcmp(r->reason, USAGED_REASON_PROVIDER_DISABLED) == 0)
        l->stats.denied_disabled++;
    if (r->degraded)
        l->stats.degraded++;
    if (!r->allowed && l->log_denied && check->cost > 0 && l->on_denied)
        l->on_denied(l->denied_arg, user_id, provider, len, r->reason, (int64_t)wall_ms());
    /* Back on the free list first: done may submit another check, which can take it. */
    limiter_done_fn done = check->done;
    void *arg = check->arg;
    uint64_t tag = check->tag;
    free_check(l, check);
    done(arg, tag, r);
}

/* Redis could not decide: the configured policy does. */
static void answer_degraded(struct limiter *l, struct keytable_entry *key,
                            struct limiter_check *check, const uint8_t user_id[16],
                            const char *provider, size_t len, const struct rules_resolved *lim)
{
    struct check_result r;
    uint64_t now = wall_ms();
    switch (l->policy) {
    case CONFIG_REDIS_LOCAL:
        if (key) {
            decision_local_check(&key->local, lim, check->cost, now, &r);
            break;
        }
        /* No table slot to count in (every one busy): fall through to allowing. */
        /* fallthrough */
    case CONFIG_REDIS_ALLOW:
        decision_make(lim, 0, 0, 0, now, &r);
        r.remaining_minute = r.remaining_day = RULES_UNLIMITED;
        r.degraded = true;
        break;
    case CONFIG_REDIS_DENY:
        decision_make(lim, 0, 0, 0, now, &r);
        r.allowed = false;
        r.reason = USAGED_REASON_UNAVAILABLE;
        r.remaining_minute = r.remaining_day = RULES_UNLIMITED;
        r.retry_after_ms = l->timeout_ms > 1000 ? l->timeout_ms : 1000;
        r.degraded = true;
        break;
    }
    answer(l, check, user_id, provider, len, &r);
}

/* The cache's verdict on a check of `cost`: a denial when some window has less left than it
 * asks for. Exact: what is left can only shrink within a window (others spend, nobody gives
 * back) until the limits change, which starts a new generation. */
static bool cached_denial(struct limiter *l, struct keytable_entry *key, uint32_t cost,
                          const struct rules_resolved *lim, struct check_result *r)
{
    if (cost == 0 || key->generation != l->rules.generation)
        return false;
    uint64_t now = uv_now(l->loop);
    bool minute_valid = now < key->minute_end, day_valid = now < key->day_end;
    int deny = 0;
    if (minute_valid && lim->per_minute != RULES_UNLIMITED && cost > key->minute_left)
        deny |= DECISION_DENY_MINUTE;
    if (day_valid && lim->per_day != RULES_UNLIMITED && cost > key->day_left)
        deny |= DECISION_DENY_DAY;
    if (!deny)
        return false;
    decision_make(lim, deny, 0, 0, wall_ms(), r);
    r->remaining_minute = lim->per_minute == RULES_UNLIMITED ? RULES_UNLIMITED
                          : minute_valid                     ? key->minute_left
                                                             : lim->per_minute;
    r->remaining_day = lim->per_day == RULES_UNLIMITED ? RULES_UNLIMITED
                       : day_valid                     ? key->day_left
                                                       : lim->per_day;
    /* Times to reset on Redis's clock, as remembered, rather than on this host's. */
    if (minute_valid) {
        r->reset_minute_ms = key->minute_end - now + CACHE_MARGIN_MS;
        if (deny & DECISION_DENY_MINUTE)
            r->retry_after_ms = r->reset_minute_ms;
    }
    if (day_valid) {
        r->reset_day_ms = key->day_end - now + CACHE_MARGIN_MS;
        if ((deny & DECISION_DENY_DAY) && r->reset_day_ms > r->retry_after_ms)
            r->retry_after_ms = r->reset_day_ms;
    }
    return true;
}

/* The window ends are counted from when the call was sent, not when its answer is read: the
 * script ran in between, so the true end is no earlier than this, whatever the reply's delay. */
static void remember(struct limiter *l, struct keytable_entry *key, const struct check_result *r,
                     uint64_t sent_ms)
{
    key->generation = l->rules.generation;
    key->minute_end = sent_ms + r->reset_minute_ms - CACHE_MARGIN_MS;
    key->day_end = sent_ms + r->reset_day_ms - CACHE_MARGIN_MS;
    key->minute_left = r->remaining_minute;
    key->day_left = r->remaining_day;
}

/* ---- script calls ---- */

static void send_call(struct limiter *l, struct limiter_call *call);

static void degrade_call(struct limiter *l, struct limiter_call *call)
{
    struct limiter_check *c = call->checks;
    while (c) {
        struct limiter_check *next = c->next;
        answer_degraded(l, call->key, c, call->user_id, call->provider, call->provider_len,
                        &call->lim);
        c = next;
    }
    call->checks = NULL;
}

/* After a call for a key: the checks that queued behind it go out together. */
static void next_call(struct limiter *l, struct keytable_entry *key, bool redis_failed)
{
    key->inflight = false;
    if (!key->queue)
        return;
    struct limiter_call *call = new_call(l);
    call->l = l;
    call->key = key;
    memcpy(call->user_id, key->user_id, 16);
    memcpy(call->provider, key->provider, key->provider_len);
    call->provider_len = key->provider_len;
    /* Up to MAX_COSTS_PER_CALL checks; the rest waits for this call. */
    call->n = keytable_take(key, MAX_COSTS_PER_CALL, &call->checks, &call->checks_tail);
    l->stats.coalesced += call->n > 1 ? call->n - 1 : 0;
    enum rules_lookup found =
        rules_resolve(&l->rules, key->user_id, key->provider, key->provider_len, &call->lim);
    if (found != RULES_FOUND || redis_failed || !redis_is_up(&l->redis)) {
        /* The limits went away while they waited (or Redis is out): the policy decides. An
         * unknown provider is rare enough here to be counted as allowed by the policy. */
        if (found != RULES_FOUND)
            call->lim = (struct rules_resolved){true, RULES_UNLIMITED, RULES_UNLIMITED};
        degrade_call(l, call);
        free_call(call);
        next_call(l, key, redis_failed);
        return;
    }
    send_call(l, call);
}

static bool reply_int(const redisReply *r, size_t i, int64_t *out)
{
    if (i >= r->elements || r->element[i]->type != REDIS_REPLY_INTEGER)
        return false;
    *out = r->element[i]->integer;
    return true;
}

/* Logs a key Redis refused to count (at most every 10 s: a client may hammer it). */
static void key_refused(struct limiter *l, const struct limiter_call *call, const redisReply *reply,
                        size_t i)
{
    uint64_t now = uv_now(l->loop);
    l->stats.key_errors++;
    if (l->key_error_logged_ms && now - l->key_error_logged_ms < 10000)
        return;
    l->key_error_logged_ms = now;
    char uuid[UUID_STRING_LEN + 1];
    uuid_format(call->user_id, uuid);
    const redisReply *e = i < reply->elements ? reply->element[i] : NULL;
    log_error("redis: the counters of user %s, provider %.*s cannot be counted (%s); its checks "
              "are answered by limits.on_redis_error",
              uuid, (int)call->provider_len, call->provider,
              e && e->type == REDIS_REPLY_STRING ? e->str : "error");
}

/* Answers the checks of one key call from its part of the reply, from element *i on. */
static void answer_call(struct limiter *l, struct limiter_call *call, const redisReply *reply,
                        size_t *i)
{
    int64_t now_ms = 0;
    reply_int(reply, 0, &now_ms);
    struct limiter_check *c = call->checks;
    while (c) {
        struct limiter_check *next = c->next;
        int64_t deny = 0, um = 0, ud = 0;
        reply_int(reply, *i, &deny);
        reply_int(reply, *i + 1, &um);
        reply_int(reply, *i + 2, &ud);
        if (deny < 0) {
            /* Redis refused to count this key: the policy answers, as when Redis is away. */
            key_refused(l, call, reply, *i + 1);
            answer_degraded(l, call->key, c, call->user_id, call->provider, call->provider_len,
                            &call->lim);
            *i += 3;
            c = next;
            continue;
        }
        *i += 3;
        struct check_result r;
        decision_make(&call->lim, (int)deny, um, ud, (uint64_t)now_ms, &r);
        if (call->key && !next)
            remember(l, call->key, &r, call->sent_ms); /* the last answer is the freshest */
        answer(l, c, call->user_id, call->provider, call->provider_len, &r);
        c = next;
    }
    call->checks = NULL;
}

/* The key calls of one script call, in the order of its KEYS. */
struct limiter_batch {
    struct limiter *l;
    struct limiter_call *calls;
    uint32_t nchecks;
};

static void on_script_reply(enum redis_status status, const redisReply *reply, void *arg)
{
    struct limiter_batch *batch = arg;
    struct limiter *l = batch->l;
    bool ok = status == REDIS_CALL_OK && reply->type == REDIS_REPLY_ARRAY &&
              reply->elements == 1 + 3 * (size_t)batch->nchecks;
    if (status == REDIS_CALL_OK && !ok)
        log_error("redis: the check script answered %s",
                  reply->type == REDIS_REPLY_ERROR ? reply->str : "something unexpected");
    size_t i = 1;
    struct limiter_call *call = batch->calls;
    free(batch);
    while (call) {
        struct limiter_call *next = call->next;
        if (ok)
            answer_call(l, call, reply, &i);
        else
            degrade_call(l, call);
        struct keytable_entry *key = call->key;
        free_call(call);
        /* The checks queued behind this key join the next batch. */
        if (key)
            next_call(l, key, !ok);
        call = next;
    }
}

static void append_str(char *dst, size_t *off, size_t cap, const char *s, size_t len)
{
    if (*off + len <= cap) {
        memcpy(dst + *off, s, len);
        *off += len;
    }
}

/* Sends the key calls gathered so far as one script call. */
static void flush_batch(struct limiter *l)
{
    if (!l->batch)
        return;
    struct limiter_batch *batch = xmalloc(sizeof(*batch));
    batch->l = l;
    batch->calls = l->batch;
    batch->nchecks = l->batch_checks;
    uint32_t ncalls = l->batch_calls;
    l->batch = l->batch_tail = NULL;
    l->batch_calls = l->batch_checks = 0;
    for (struct limiter_call *call = batch->calls; call; call = call->next)
        if (call->key)
            call->key->unsent = NULL;

    /* argv: the keys (prefix{user:provider}), then per key: limits, count, costs. */
    size_t prefix_len = strlen(l->key_prefix);
    int argc = (int)(ncalls * 4 + batch->nchecks);
    size_t key_cap = prefix_len + UUID_STRING_LEN + RULES_PROVIDER_BYTES + 3;
    const char **argv = xmalloc((size_t)argc * sizeof(*argv));
    size_t *lens = xmalloc((size_t)argc * sizeof(*lens));
    char *text = xmalloc(ncalls * key_cap + (size_t)(argc - (int)ncalls) * 24);
    char *p = text;
    int a = 0;
    for (struct limiter_call *call = batch->calls; call; call = call->next) {
        char uuid[UUID_STRING_LEN + 1];
        uuid_format(call->user_id, uuid);
        size_t klen = 0;
        append_str(p, &klen, key_cap, l->key_prefix, prefix_len);
        append_str(p, &klen, key_cap, "{", 1);
        append_str(p, &klen, key_cap, uuid, UUID_STRING_LEN);
        append_str(p, &klen, key_cap, ":", 1);
        append_str(p, &klen, key_cap, call->provider, call->provider_len);
        append_str(p, &klen, key_cap, "}", 1);
        argv[a] = p;
        lens[a++] = klen;
        p += klen;
    }
    for (struct limiter_call *call = batch->calls; call; call = call->next) {
        int64_t head[3] = {call->lim.per_minute, call->lim.per_day, call->n};
        for (int h = 0; h < 3; h++) {
            argv[a] = p;
            lens[a++] = fmt_i64(p, head[h]);
            p += 24;
        }
        for (struct limiter_check *c = call->checks; c; c = c->next) {
            argv[a] = p;
            lens[a++] = fmt_u64(p, c->cost);
            p += 24;
        }
    }
    l->stats.script_calls++;
    l->stats.batched += ncalls - 1; /* round trips saved */
    redis_eval(&l->redis, (int)ncalls, argc, argv, lens, l->timeout_ms, on_script_reply, batch);
    free(argv);
    free(lens);
    free(text);
}

/* Adds a key call to the batch that goes before the loop next waits for I/O (on_flush). */
static void send_call(struct limiter *l, struct limiter_call *call)
{
    if (l->batch && l->batch_checks + call->n > MAX_CHECKS_PER_BATCH)
        flush_batch(l);
    if (call->key) {
        call->key->inflight = true;
        call->key->unsent = call;
    }
    call->sent_ms = uv_now(l->loop);
    call->next = NULL;
    if (l->batch_tail)
        l->batch_tail->next = call;
    else
        l->batch = call;
    l->batch_tail = call;
    l->batch_calls++;
    l->batch_checks += call->n;
}

/* A prepare handle runs just before the loop waits for I/O: every check submitted since the last
 * wait (read from sockets, or resumed from a paused connection in the check phase) goes out
 * together, and none waits for a later wake-up. */
static void on_flush(uv_prepare_t *h)
{
    flush_batch(h->data);
}

/* ---- the method ---- */

bool limiter_check(struct limiter *l, const struct limiter_request *req, limiter_done_fn done,
                   void *arg, uint64_t tag, struct rpc_error *e)
{
    const uint8_t *user_id = req->user_id;
    const char *provider = req->provider;
    size_t plen = req->provider_len;
    uint32_t cost = req->cost;
    l->stats.checks++;
    struct rules_resolved lim;
    switch (rules_resolve(&l->rules, user_id, provider, plen, &lim)) {
    case RULES_UNKNOWN_PROVIDER:
        l->stats.unknown_provider++;
        rpc_error_set(e, RPC_UNKNOWN_PROVIDER, "no limits are known for provider %.*s", (int)plen,
                      provider);
        return false;
    case RULES_NOT_LOADED:
        rpc_error_set(e, RPC_UNAVAILABLE,
                      "the providers' limits have not been read from PostgreSQL yet");
        e->retry_after_ms = 1000;
        return false;
    case RULES_FOUND:
        break;
    }

    struct limiter_check *check = new_check(l);
    check->done = done;
    check->arg = arg;
    check->tag = tag;
    check->cost = cost;
    check->next = NULL;

    struct check_result r;
    if (!lim.enabled) {
        decision_make(&lim, 0, 0, 0, wall_ms(), &r);
        r.allowed = false;
        r.reason = USAGED_REASON_PROVIDER_DISABLED;
        r.remaining_minute = r.remaining_day = 0;
        answer(l, check, user_id, provider, plen, &r);
        return true;
    }
    if (lim.per_minute == RULES_UNLIMITED && lim.per_day == RULES_UNLIMITED) {
        l->stats.unlimited++;
        decision_make(&lim, 0, 0, 0, wall_ms(), &r);
        answer(l, check, user_id, provider, plen, &r);
        return true;
    }
    struct keytable_entry *key = keytable_get(&l->keys, user_id, provider, plen, uv_now(l->loop));
    if (key) {
        if (cached_denial(l, key, cost, &lim, &r)) {
            l->stats.cache_hits++;
            answer(l, check, user_id, provider, plen, &r);
            return true;
        }
    }
    if (!redis_is_up(&l->redis)) {
        answer_degraded(l, key, check, user_id, provider, plen, &lim);
        return true;
    }
    if (key && key->unsent && key->unsent->n < MAX_COSTS_PER_CALL &&
        l->batch_checks < MAX_CHECKS_PER_BATCH) {
        /* Its key's call has not gone yet: the check joins it. */
        struct limiter_call *call = key->unsent;
        call->checks_tail->next = check;
        call->checks_tail = check;
        call->n++;
        l->batch_checks++;
        l->stats.coalesced++;
        return true;
    }
    if (key && key->inflight) {
        keytable_queue(key, check);
        return true;
    }
    struct limiter_call *call = new_call(l);
    call->l = l;
    call->key = key;
    memcpy(call->user_id, user_id, 16);
    memcpy(call->provider, provider, plen);
    call->provider_len = (uint8_t)plen;
    call->lim = lim;
    call->checks = call->checks_tail = check;
    call->n = 1;
    send_call(l, call);
    return true;
}

/* ---- lifecycle ---- */

static void on_redis_state(struct redis_client *r, bool up, void *arg)
{
    (void)r;
    struct limiter *l = arg;
    /* Checks not sent yet are answered now, by the policy, before any check submitted after
     * this (which redis_is_up sends to the policy at once): each key's order holds. */
    if (!up)
        flush_batch(l);
    if (l->on_state)
        l->on_state(l->state_arg);
}

static void on_rules_state(void *arg)
{
    struct limiter *l = arg;
    if (l->on_state)
        l->on_state(l->state_arg);
}

bool limiter_settled(const struct limiter *l)
{
    const struct redis_stats *rs = &l->redis.stats;
    const struct pg_stats *ps = &l->rules.pg.stats;
    return rs->connects + rs->connect_failures > 0 && (l->rules.loaded || ps->connect_failures > 0);
}

void limiter_configure(struct limiter *l, const struct config *config)
{
    l->timeout_ms = config->redis.timeout_ms;
    l->policy = config->limits.on_redis_error;
    l->log_denied = config->limits.log_denied;
    rules_configure(&l->rules, config);
}

void limiter_init(struct limiter *l, uv_loop_t *loop, const struct config *config)
{
    memset(l, 0, sizeof(*l));
    l->loop = loop;
    l->key_prefix = xstrdup(config->redis.key_prefix);
    keytable_init(&l->keys, KEY_CAPACITY);
    rules_init(&l->rules, loop, config, on_rules_state, l);
    uint32_t connect_timeout =
        config->redis.timeout_ms * 4 > 1000 ? config->redis.timeout_ms * 4 : 1000;
    redis_init(&l->redis, loop, config->redis.address, limiter_script, connect_timeout,
               config->redis.reconnect_max_ms, on_redis_state, l);
    uv_prepare_init(loop, &l->flush);
    l->flush.data = l;
    uv_prepare_start(&l->flush, on_flush);
    uv_unref((uv_handle_t *)&l->flush);
    limiter_configure(l, config);
}

void limiter_start(struct limiter *l)
{
    rules_start(&l->rules);
    redis_start(&l->redis);
}

static void part_closed(struct limiter *l)
{
    if (--l->closing > 0)
        return;
    /* Checks still queued behind a call: the call was answered DOWN, which moved them on, so
     * the queues are empty here; free the table. */
    keytable_free(&l->keys);
    while (l->spare_checks) {
        struct limiter_check *next = l->spare_checks->next;
        free(l->spare_checks);
        l->spare_checks = next;
    }
    while (l->spare_calls) {
        struct limiter_call *next = l->spare_calls->next;
        free(l->spare_calls);
        l->spare_calls = next;
    }
    l->nspare_checks = l->nspare_calls = 0;
    free(l->key_prefix);
    l->key_prefix = NULL;
    if (l->on_closed)
        l->on_closed(l, l->closed_arg);
}

static void on_rules_closed(struct rules *lim, void *arg)
{
    (void)lim;
    part_closed(arg);
}

static void on_redis_closed(struct redis_client *r, void *arg)
{
    (void)r;
    part_closed(arg);
}

static void on_flush_closed(uv_handle_t *h)
{
    part_closed(h->data);
}

void limiter_close(struct limiter *l, void (*on_closed)(struct limiter *l, void *arg), void *arg)
{
    l->on_closed = on_closed;
    l->closed_arg = arg;
    l->closing = 3;
    l->on_denied = NULL; /* the ingest queue is closing too */
    flush_batch(l);      /* closing Redis answers it (DOWN: the policy decides) */
    uv_close((uv_handle_t *)&l->flush, on_flush_closed);
    rules_close(&l->rules, on_rules_closed, l);
    redis_close(&l->redis, on_redis_closed, l);
}
