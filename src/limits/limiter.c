/* limiter: see limiter.h.
 *
 * A check's path: rules resolved (unknown, disabled and unlimited are answered at once) -> the
 * key's entry in a fixed-size table (the over-limit cache, and the queue behind a call in
 * flight) -> a denial from the cache, or a place in the queue, or a script call of its own.
 * Settles go in a script call of their own (the same script, mode 's'); the ones of log_prompt
 * events wait in a queue while Redis is away (settle.c). */
#include "limiter.h"
#include "limiter_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "buf.h"
#include "clock.h"
#include "log.h"
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
#define LOCAL_SCOPES 65536        /* scopes counted under on_redis_error: local */
#define LOCAL_RESERVATIONS 16384  /* reservations kept under on_redis_error: local */

/* One key's part of a script call: checks of one key (or of no table entry), in arrival order. */
struct limiter_call {
    struct limiter *l;
    struct limiter_call *next; /* in the batch */
    struct keytable_entry *key;
    uint8_t user_id[16];
    uint8_t provider_len, model_len;
    char provider[RULES_PROVIDER_BYTES + 1];
    char model[RULES_MODEL_BYTES + 1];
    struct rules_resolved lim;
    struct limiter_check *checks, *checks_tail;
    uint32_t n;
    uint64_t sent_ms;      /* loop time the script call was sent */
    size_t reply_elements; /* the first call of a script call: its reply's, when all is well */
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
    call->next = NULL;
    call->key = NULL;
    call->checks = call->checks_tail = NULL;
    call->n = 0;
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

/* ---- reservations and scopes ---- */

uint64_t limiter_wall_ms(void)
{
    return (uint64_t)clock_wall_ms();
}

/* A new reservation id: 16 hex digits (ledger.h), unique across daemons by their random
 * seeds and within one by its count; it names the concurrent slots it takes, one per scope of
 * the call's concurrent rules (the script's ZADD per scope). */
static void new_rid(struct limiter *l, char rid[LOCAL_RID_LEN + 1],
                    const struct rules_resolved *lim)
{
    unsigned scopes = 0; /* bit 2 * by_provider + by_model of each concurrent rule */
    for (int i = 0; i < lim->counted; i++)
        if (lim->rule[i].dimension == RULES_CONCURRENT)
            scopes |= 1u << (2 * lim->rule[i].by_provider + lim->rule[i].by_model);
    ledger_rid_format(l->rid_seed + l->rid_next++, (unsigned)__builtin_popcount(scopes),
                      limiter_wall_ms() / 1000, rid);
}

bool limiter_parse_reservation(const char *s, size_t len, uint8_t user_id[16],
                               char rid[LOCAL_RID_LEN + 1])
{
    if (len != DECISION_RESERVATION_LEN || s[UUID_STRING_LEN] != '.' ||
        !uuid_parse(s, UUID_STRING_LEN, user_id))
        return false;
    const char *r = s + UUID_STRING_LEN + 1;
    for (int i = 0; i < LOCAL_RID_LEN; i++) {
        char c = r[i];
        bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (i == 0 && c == 'l');
        if (!ok)
            return false;
        rid[i] = c;
    }
    rid[LOCAL_RID_LEN] = '\0';
    return true;
}

static void format_reservation(const uint8_t user_id[16], const char *rid, char *out)
{
    uuid_format(user_id, out);
    out[UUID_STRING_LEN] = '.';
    memcpy(out + UUID_STRING_LEN + 1, rid, LOCAL_RID_LEN);
    out[DECISION_RESERVATION_LEN] = '\0';
}

/* ---- answering ---- */

static void answer(struct limiter *l, struct limiter_check *check, const uint8_t user_id[16],
                   const char *provider, size_t len, struct check_result *r)
{
    if (r->allowed) {
        l->stats.allowed++;
    } else if (r->denied_by >= 0) {
        const struct rules_applied *d = &r->rules->rule[r->denied_by];
        if (d->dimension == RULES_CONCURRENT)
            l->stats.denied_concurrency++;
        else
            l->stats.denied[d->window]++;
    } else if (r->reason && strcmp(r->reason, USAGED_REASON_PROVIDER_DISABLED) == 0) {
        l->stats.denied_disabled++;
    }
    if (r->degraded)
        l->stats.degraded++;
    if (r->shadow_denied_by >= 0) {
        const struct rules_applied *s = &r->rules->rule[r->shadow_denied_by];
        l->stats.shadow_denied[s->dimension == RULES_CONCURRENT ? RULES_WINDOWS : s->window]++;
    }
    if (r->allowed && check->rid[0]) {
        format_reservation(user_id, check->rid, r->reservation);
        l->stats.reservations++;
        ledger_issue(&l->ledger, check->rid, limiter_wall_ms() / 1000);
    }
    if (!r->allowed && l->log_denied && !decision_is_peek(&check->amounts) && l->on_denied)
        l->on_denied(l->denied_arg, user_id, provider, len, r->reason, (int64_t)limiter_wall_ms());
    /* Back on the free list first: done may submit another check, which can take it. */
    limiter_done_fn done = check->done;
    void *arg = check->arg;
    uint64_t tag = check->tag;
    free_check(l, check);
    done(arg, tag, r);
}

/* The pattern of the shadow rule that would have denied the check, if any, is counted. */
static void limiter_count_shadow(struct limiter *l, const struct limiter_call *call,
                                 const struct check_result *r)
{
    if (r->shadow_denied_by >= 0)
        shadows_count(&l->shadows, &r->rules->rule[r->shadow_denied_by], call->provider,
                      call->provider_len, call->model, call->model_len);
}

/* Redis could not decide: the configured policy does. */
static void answer_degraded(struct limiter *l, struct limiter_check *check,
                            const struct limiter_call *call)
{
    struct check_result r;
    uint64_t now = limiter_wall_ms();
    const struct rules_resolved *lim = &call->lim;
    switch (l->policy) {
    case CONFIG_REDIS_LOCAL: {
        uint64_t scope[RULES_APPLY_MAX];
        int64_t used[RULES_APPLY_MAX];
        char suffix[RULES_PROVIDER_BYTES + RULES_MODEL_BYTES + 16];
        for (int i = 0; i < lim->counted; i++) {
            size_t n = limiter_scope_suffix(&lim->rule[i], call->provider, call->provider_len,
                                            call->model, call->model_len, suffix);
            scope[i] = local_scope_hash(call->user_id, suffix, n);
        }
        if (check->rid[0])
            ledger_rid_local(check->rid); /* kept here: settled here; no concurrent slot */
        char alerted[LOCAL_ALERTED_LEN];
        bool allowed = local_check(&l->local, call->user_id, scope, lim, &check->amounts, now,
                                   check->rid[0] ? check->rid : NULL,
                                   (uint64_t)l->reservation_ttl_s * 1000, used, alerted);
        decision_make(lim, &check->amounts, allowed, used, now, &r);
        if (alerted[0])
            alerts_raise(&l->alerts, call->user_id, call->provider, call->provider_len, call->model,
                         call->model_len, lim, alerted, used, now);
        break;
    }
    case CONFIG_REDIS_ALLOW:
        check->rid[0] = '\0'; /* nothing counted: nothing to settle */
        decision_uncounted(lim, true, NULL, now, &r);
        break;
    case CONFIG_REDIS_DENY:
        decision_uncounted(lim, false, USAGED_REASON_UNAVAILABLE, now, &r);
        r.retry_after_ms = l->timeout_ms > 1000 ? l->timeout_ms : 1000;
        break;
    }
    r.degraded = true;
    limiter_count_shadow(l, call, &r);
    answer(l, check, call->user_id, call->provider, call->provider_len, &r);
}

/* The over-limit cache holds for rules of the provider's requests per minute and per day
 * alone, and only while no reservation can exist (a cancel gives requests back). */
static bool cacheable(const struct limiter *l, const struct rules_resolved *lim)
{
    if (l->rules.has_budgets || uv_now(l->loop) < l->budgets_until_ms)
        return false;
    for (int i = 0; i < lim->counted; i++) {
        const struct rules_applied *r = &lim->rule[i];
        if (!r->by_provider || r->by_model || r->dimension != RULES_REQUESTS || r->shadow ||
            (r->window != RULES_MINUTE && r->window != RULES_DAY))
            return false;
    }
    return true;
}

/* The cache's verdict on a check: a denial when some window has less left than it asks for.
 * Exact: what is left can only shrink within a window (others spend, nobody gives back) until
 * the limits change, which starts a new generation. */
static bool cached_denial(struct limiter *l, struct keytable_entry *key,
                          const struct limiter_check *check, const struct rules_resolved *lim,
                          struct check_result *r)
{
    uint32_t cost = check->amounts.cost;
    if (cost == 0 || key->generation != l->rules.generation || !cacheable(l, lim))
        return false;
    uint64_t now = uv_now(l->loop);
    bool minute_valid = now < key->minute_end, day_valid = now < key->day_end;
    int deny = -1;
    int64_t used[RULES_APPLY_MAX];
    for (int i = 0; i < lim->counted; i++) {
        const struct rules_applied *rule = &lim->rule[i];
        bool minute = rule->window == RULES_MINUTE;
        bool valid = minute ? minute_valid : day_valid;
        int64_t left = minute ? key->minute_left : key->day_left;
        used[i] = valid ? rule->limit - left : 0;
        if (valid && cost > left && (deny < 0 || !minute))
            deny = i;
    }
    if (deny < 0)
        return false;
    decision_make(lim, &check->amounts, false, used, limiter_wall_ms(), r);
    /* Times to reset on Redis's clock, as remembered, rather than on this host's. */
    if (minute_valid)
        r->reset_minute_ms = key->minute_end - now + CACHE_MARGIN_MS;
    if (day_valid)
        r->reset_day_ms = key->day_end - now + CACHE_MARGIN_MS;
    r->retry_after_ms =
        lim->rule[r->denied_by].window == RULES_MINUTE ? r->reset_minute_ms : r->reset_day_ms;
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
    key->minute_left = r->remaining_minute == RULES_UNLIMITED ? INT64_MAX : r->remaining_minute;
    key->day_left = r->remaining_day == RULES_UNLIMITED ? INT64_MAX : r->remaining_day;
}

/* ---- script calls ---- */

static void send_call(struct limiter *l, struct limiter_call *call);

static void degrade_call(struct limiter *l, struct limiter_call *call)
{
    struct limiter_check *c = call->checks;
    while (c) {
        struct limiter_check *next = c->next;
        answer_degraded(l, c, call);
        c = next;
    }
    call->checks = NULL;
}

static void resolve_call(struct limiter *l, struct limiter_call *call, enum rules_lookup *found)
{
    *found = rules_resolve_cached(&l->rules, l->resolved, call->user_id, call->provider,
                                  call->provider_len, call->model, call->model_len, &call->lim);
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
    memcpy(call->model, key->model, key->model_len);
    call->model_len = key->model_len;
    /* Up to MAX_COSTS_PER_CALL checks; the rest waits for this call. */
    call->n = keytable_take(key, MAX_COSTS_PER_CALL, &call->checks, &call->checks_tail);
    l->stats.coalesced += call->n > 1 ? call->n - 1 : 0;
    enum rules_lookup found;
    resolve_call(l, call, &found);
    if (found != RULES_FOUND || call->lim.counted == 0 || redis_failed || !redis_is_up(&l->redis)) {
        /* The limits went away while they waited (or Redis is out): the policy decides. An
         * unknown provider is rare enough here to be counted as allowed by the policy. */
        if (found != RULES_FOUND)
            call->lim = (struct rules_resolved){
                .enabled = true, .per_minute = RULES_UNLIMITED, .per_day = RULES_UNLIMITED};
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
    size_t width = 2 + (size_t)call->lim.counted; /* status, each rule's use, the alerts */
    struct limiter_check *c = call->checks;
    while (c) {
        struct limiter_check *next = c->next;
        int64_t status = 0, used[RULES_APPLY_MAX];
        reply_int(reply, *i, &status);
        if (status < 0) {
            /* Redis refused to count this key: the policy answers, as when Redis is away. */
            key_refused(l, call, reply, *i + 1);
            answer_degraded(l, c, call);
            *i += width;
            c = next;
            continue;
        }
        for (int j = 0; j < call->lim.counted; j++) {
            used[j] = 0;
            reply_int(reply, *i + 1 + (size_t)j, &used[j]);
        }
        const redisReply *alerted =
            *i + width - 1 < reply->elements ? reply->element[*i + width - 1] : NULL;
        if (alerted && alerted->type == REDIS_REPLY_STRING && alerted->len > 0)
            alerts_raise(&l->alerts, call->user_id, call->provider, call->provider_len, call->model,
                         call->model_len, &call->lim, alerted->str, used, (uint64_t)now_ms);
        *i += width;
        struct check_result r;
        decision_make(&call->lim, &c->amounts, status == 0, used, (uint64_t)now_ms, &r);
        if (call->key && !next && cacheable(l, &call->lim))
            remember(l, call->key, &r, call->sent_ms); /* the last answer is the freshest */
        limiter_count_shadow(l, call, &r);
        answer(l, c, call->user_id, call->provider, call->provider_len, &r);
        c = next;
    }
    call->checks = NULL;
}

/* arg: the first of the key calls of one script call (in the order of its arguments). */
static void on_script_reply(enum redis_status status, const redisReply *reply, void *arg)
{
    struct limiter_call *call = arg;
    struct limiter *l = call->l;
    bool ok = status == REDIS_CALL_OK && reply->type == REDIS_REPLY_ARRAY &&
              reply->elements == call->reply_elements;
    if (status == REDIS_CALL_OK && !ok)
        log_error("redis: the check script answered %s",
                  reply->type == REDIS_REPLY_ERROR ? reply->str : "something unexpected");
    size_t i = 1;
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

size_t limiter_format_base(const struct limiter *l, const uint8_t user_id[16], char *out,
                           size_t cap)
{
    char uuid[UUID_STRING_LEN + 1];
    uuid_format(user_id, uuid);
    size_t n = 0;
    append_str(out, &n, cap, l->key_prefix, strlen(l->key_prefix));
    append_str(out, &n, cap, "{", 1);
    append_str(out, &n, cap, uuid, UUID_STRING_LEN);
    append_str(out, &n, cap, "}", 1);
    return n;
}

/* A rule's field in the script: dimension letter and window letter; "cc" for concurrent. */
static const char dimension_letters[] = "rtsc";
static const char window_letters[] = "mhdM";

/* Sends key calls (a list of n) as one script call. */
static void send_script_call(struct limiter *l, void *list, size_t n)
{
    struct limiter_call *first = list;
    first->reply_elements = 1;
    uint32_t ncalls = (uint32_t)n;
    /* KEYS are for routing only (check.lua reads the bases from ARGV): none on one Redis; on a
     * Redis Cluster every existing key the script will touch (the scopes' hashes) and the
     * reservations it will make. While a slot migrates, routing looks at the declared keys
     * alone: a key left out would be counted from zero on the importing node. */
    bool declare = redis_is_cluster(&l->redis);

    /* The arguments: the declared keys, then 'c', the reservation TTL, the number of users and
     * their bases, the number of distinct heads and each (its scopes, its rules: users with the
     * same provider, model and rules share one, which the script reads once), then per user:
     * its head's number and its checks. Every piece gets its own slot of the text, sized for
     * the longest it can be. */
    size_t argc = ncalls + 4, text_cap = 96;
    size_t prefix_len = strlen(l->key_prefix), base_cap = prefix_len + UUID_STRING_LEN + 2;
    size_t suffix_cap = RULES_PROVIDER_BYTES + RULES_MODEL_BYTES + 16;
    if (l->heads_cap < ncalls) {
        free(l->heads);
        free(l->head_of);
        l->heads_cap = ncalls;
        l->heads = xmalloc(ncalls * sizeof(*l->heads));
        l->head_of = xmalloc(ncalls * sizeof(*l->head_of));
    }
    struct limiter_head *heads = l->heads;
    uint32_t *head_of = l->head_of, h = 0;
    for (struct limiter_call *call = first; call; call = call->next) {
        heads[h++] = (struct limiter_head){call->provider, call->model, call->provider_len,
                                           call->model_len, &call->lim};
        first->reply_elements += call->n * (2 + (size_t)call->lim.counted);
        argc += 3 + 4 + 5 * (size_t)call->lim.counted + 4 * call->n;
        text_cap +=
            base_cap + 4 * suffix_cap + 24 * (4 + 5 * (size_t)call->lim.counted + 4 * call->n);
        if (declare) {
            argc += 8 + call->n;
            text_cap += 8 * (base_cap + suffix_cap + 2) + call->n * (base_cap + 3 + LOCAL_RID_LEN);
        }
    }
    text_cap += REDIS_ARG_OVERHEAD * argc;
    if (l->call_text_cap < text_cap) {
        l->call_text_cap = text_cap;
        free(l->call_text);
        l->call_text = xmalloc(text_cap);
    }
    /* The arguments are written in RESP, as Redis reads them: each piece at p + 4, then its
     * head ("$" length CRLF) goes before it. The text is reused safely: redis_eval_resp copies
     * it before any callback of its own can build another call here. */
    char *p = l->call_text;
    size_t a = 0;
#define ARG(len_expr)                                                                              \
    do {                                                                                           \
        char *arg_ = p;                                                                            \
        p += 4;                                                                                    \
        size_t len_ = (len_expr);                                                                  \
        p = redis_conn_close_arg(arg_, len_);                                                      \
        a++;                                                                                       \
    } while (0)
    for (struct limiter_call *call = first; declare && call; call = call->next)
        limiter_declare_keys(l, call->user_id, call->provider, call->provider_len, call->model,
                             call->model_len, &call->lim, call->checks, &p, &a);
    size_t nkeys = a;
    ARG((memcpy(p, "c", 1), 1));
    ARG(fmt_u64(p, l->reservation_ttl_s));
    ARG(fmt_u64(p, ncalls));
    for (struct limiter_call *call = first; call; call = call->next)
        ARG(limiter_format_base(l, call->user_id, p, base_cap));
    /* The distinct heads (scopes and rules), once each, then each user's head and checks. */
    uint32_t nheads =
        limiter_number_heads(heads, ncalls, head_of, &l->head_table, &l->head_table_cap);
    ARG(fmt_u64(p, nheads));
    uint32_t written = 0; /* heads are numbered in the order they first come */
    h = 0;
    for (struct limiter_call *call = first; call; call = call->next, h++) {
        if (head_of[h] <= written)
            continue;
        written = head_of[h];
        const struct rules_resolved *lim = &call->lim;
        int scope_of[RULES_APPLY_MAX];
        const struct rules_applied *rep[4];
        int nscopes = limiter_call_scopes(lim, scope_of, rep);
        ARG(fmt_u64(p, (uint64_t)nscopes));
        for (int sc = 0; sc < nscopes; sc++)
            ARG(limiter_scope_suffix(rep[sc], call->provider, call->provider_len, call->model,
                                     call->model_len, p));
        ARG(fmt_u64(p, lim->counted));
        for (int i = 0; i < lim->counted; i++) {
            ARG(fmt_u64(p, (uint64_t)scope_of[i]));
            const struct rules_applied *r = &lim->rule[i];
            ARG((p[0] = dimension_letters[r->dimension],
                 p[1] = r->dimension == RULES_CONCURRENT ? 'c' : window_letters[r->window], 2));
            ARG(fmt_i64(p, r->limit));
            ARG((p[0] = r->shadow ? '1' : '0', 1));
            ARG(fmt_u64(p, r->alert_percent));
        }
    }
    h = 0;
    for (struct limiter_call *call = first; call; call = call->next, h++) {
        ARG(fmt_u64(p, head_of[h]));
        ARG(fmt_u64(p, call->n));
        for (struct limiter_check *c = call->checks; c; c = c->next) {
            ARG(fmt_u64(p, c->amounts.cost));
            ARG(fmt_u64(p, c->amounts.tokens));
            ARG(fmt_i64(p, c->amounts.spend));
            ARG((memcpy(p, c->rid, strlen(c->rid)), strlen(c->rid)));
        }
    }
#undef ARG
    l->stats.script_calls++;
    l->stats.batched += ncalls - 1; /* round trips saved */
    redis_eval_resp(&l->redis, (int)nkeys, (int)a, l->call_text, (size_t)(p - l->call_text),
                    l->timeout_ms, on_script_reply, first);
}

static const uint8_t *call_user(const void *item)
{
    return ((const struct limiter_call *)item)->user_id;
}

/* Sends the key calls gathered so far: one script call (one per slot on a Redis Cluster). */
static void flush_batch(struct limiter *l)
{
    if (!l->batch)
        return;
    struct limiter_call *calls = l->batch;
    uint32_t ncalls = l->batch_calls;
    l->batch = l->batch_tail = NULL;
    l->batch_calls = l->batch_checks = 0;
    for (struct limiter_call *call = calls; call; call = call->next)
        if (call->key)
            call->key->unsent = NULL;
    limiter_send_by_slot(l, calls, ncalls, offsetof(struct limiter_call, next), call_user,
                         send_script_call);
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

/* A prepare handle runs just before the loop waits for I/O: every check and settle submitted
 * since the last wait (read from sockets, or resumed from a paused connection in the check
 * phase) goes out together, and none waits for a later wake-up. */
static void on_flush(uv_prepare_t *h)
{
    flush_batch(h->data);
    limiter_flush_settles(h->data);
}

/* ---- the check ---- */

bool limiter_check(struct limiter *l, const struct limiter_request *req, limiter_done_fn done,
                   void *arg, uint64_t tag, struct rpc_error *e)
{
    const char *model = req->model_len ? req->model : "";
    l->stats.checks++;
    /* The call is where the rules live while the check is answered or sent; most checks
     * need one anyway. */
    struct limiter_call *call = new_call(l);
    call->l = l;
    memcpy(call->user_id, req->user_id, 16);
    memcpy(call->provider, req->provider, req->provider_len);
    call->provider_len = (uint8_t)req->provider_len;
    memcpy(call->model, model, req->model_len);
    call->model_len = (uint8_t)req->model_len;
    enum rules_lookup found;
    resolve_call(l, call, &found);
    switch (found) {
    case RULES_UNKNOWN_PROVIDER:
        l->stats.unknown_provider++;
        rpc_error_set(e, RPC_UNKNOWN_PROVIDER, "no limits are known for provider %.*s",
                      (int)req->provider_len, req->provider);
        free_call(call);
        return false;
    case RULES_NOT_LOADED:
        rpc_error_set(e, RPC_UNAVAILABLE,
                      "the providers' limits have not been read from PostgreSQL yet");
        e->retry_after_ms = 1000;
        free_call(call);
        return false;
    case RULES_FOUND:
        break;
    }
    const struct rules_resolved *lim = &call->lim;
    if (lim->has_budget)
        l->budgets_until_ms = uv_now(l->loop) + (uint64_t)l->reservation_ttl_s * 1000;

    struct limiter_check *check = new_check(l);
    check->done = done;
    check->arg = arg;
    check->tag = tag;
    check->amounts = req->amounts;
    check->rid[0] = '\0';
    check->next = NULL;

    struct check_result r;
    if (!lim->enabled) {
        decision_uncounted(lim, false, USAGED_REASON_PROVIDER_DISABLED, limiter_wall_ms(), &r);
        r.remaining_minute = r.remaining_day = 0;
        answer(l, check, req->user_id, req->provider, req->provider_len, &r);
        free_call(call);
        return true;
    }
    if (lim->counted == 0) {
        l->stats.unlimited++;
        decision_uncounted(lim, true, NULL, limiter_wall_ms(), &r);
        answer(l, check, req->user_id, req->provider, req->provider_len, &r);
        free_call(call);
        return true;
    }
    if (lim->has_budget && !decision_is_peek(&req->amounts))
        new_rid(l, check->rid, lim);
    struct keytable_entry *key =
        keytable_get(&l->keys, req->user_id, req->provider, req->provider_len, model,
                     req->model_len, uv_now(l->loop));
    if (key && cached_denial(l, key, check, lim, &r)) {
        l->stats.cache_hits++;
        answer(l, check, req->user_id, req->provider, req->provider_len, &r);
        free_call(call);
        return true;
    }
    if (!redis_is_up(&l->redis)) {
        answer_degraded(l, check, call);
        free_call(call);
        return true;
    }
    if (key && key->unsent && key->unsent->n < MAX_COSTS_PER_CALL &&
        l->batch_checks < MAX_CHECKS_PER_BATCH) {
        /* Its key's call has not gone yet: the check joins it. */
        struct limiter_call *unsent = key->unsent;
        unsent->checks_tail->next = check;
        unsent->checks_tail = check;
        unsent->n++;
        l->batch_checks++;
        l->stats.coalesced++;
        free_call(call);
        return true;
    }
    if (key && key->inflight) {
        keytable_queue(key, check);
        free_call(call);
        return true;
    }
    call->key = key;
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
    if (!up) {
        flush_batch(l);
        limiter_flush_settles(l);
    } else {
        limiter_retry_settles(l);
    }
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
    l->reservation_ttl_s = config->limits.reservation_ttl_s;
    if (!l->ledger.ring)
        ledger_init(&l->ledger, l->reservation_ttl_s, limiter_wall_ms() / 1000);
    else if (l->ledger.span_s != l->reservation_ttl_s + ledger_grace_s(l->reservation_ttl_s))
        ledger_resize(&l->ledger, l->reservation_ttl_s, limiter_wall_ms() / 1000);
    l->settle_queue_max = config->limits.settle_queue;
    rules_configure(&l->rules, config);
}

void limiter_init(struct limiter *l, uv_loop_t *loop, const struct config *config)
{
    memset(l, 0, sizeof(*l));
    l->loop = loop;
    l->key_prefix = xstrdup(config->redis.key_prefix);
    keytable_init(&l->keys, KEY_CAPACITY);
    l->resolved = xcalloc(RULES_CACHE_ENTRIES, sizeof(*l->resolved));
    local_init(&l->local, LOCAL_SCOPES, LOCAL_RESERVATIONS);
    if (getrandom(&l->rid_seed, sizeof(l->rid_seed), 0) != sizeof(l->rid_seed))
        l->rid_seed = limiter_wall_ms() ^ ((uint64_t)getpid() << 32) ^ (uintptr_t)l;
    rules_init(&l->rules, loop, config, on_rules_state, l);
    alerts_init(&l->alerts, loop, config);
    redis_init(&l->redis, loop, config, limiter_script, on_redis_state, l);
    uv_prepare_init(loop, &l->flush);
    l->flush.data = l;
    uv_prepare_start(&l->flush, on_flush);
    uv_unref((uv_handle_t *)&l->flush);
    uv_timer_init(loop, &l->retry_timer);
    l->retry_timer.data = l;
    uv_unref((uv_handle_t *)&l->retry_timer);
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
    local_free(&l->local);
    ledger_free(&l->ledger);
    shadows_free(&l->shadows);
    limiter_drop_settles(l);
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
    free(l->resolved);
    l->resolved = NULL;
    free(l->call_text);
    l->call_text = NULL;
    l->call_text_cap = 0;
    free(l->heads);
    free(l->head_of);
    free(l->head_table);
    l->heads = NULL;
    l->head_of = l->head_table = NULL;
    l->heads_cap = l->head_table_cap = 0;
    free(l->key_prefix);
    l->key_prefix = NULL;
    if (l->on_closed)
        l->on_closed(l, l->closed_arg);
}

static void on_alerts_closed(struct alerts *a, void *arg)
{
    (void)a;
    part_closed(arg);
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

static void on_handle_closed(uv_handle_t *h)
{
    part_closed(h->data);
}

void limiter_close(struct limiter *l, void (*on_closed)(struct limiter *l, void *arg), void *arg)
{
    l->on_closed = on_closed;
    l->closed_arg = arg;
    l->closing = 5;
    l->on_denied = NULL; /* the ingest queue is closing too */
    flush_batch(l);      /* closing Redis answers it (DOWN: the policy decides) */
    limiter_flush_settles(l);
    uv_close((uv_handle_t *)&l->flush, on_handle_closed);
    uv_close((uv_handle_t *)&l->retry_timer, on_handle_closed);
    rules_close(&l->rules, on_rules_closed, l);
    alerts_close(&l->alerts, on_alerts_closed, l);
    redis_close(&l->redis, on_redis_closed, l);
}
