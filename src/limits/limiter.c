/* limiter: see limiter.h.
 *
 * A check's path: params validated -> limits resolved (unknown, disabled and unlimited are
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

#define MINUTE_MS 60000ULL
#define DAY_MS 86400000ULL

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
#define KEY_PROBES 16             /* slots looked at per key */
#define MAX_COSTS_PER_CALL 512    /* checks of one key in one call */
#define MAX_CHECKS_PER_BATCH 1024 /* checks of all keys in one script call */
#define CACHE_MARGIN_MS 50        /* the cache stops this long before a window ends */

/* KEYS: one hash per (user, provider) key. ARGV, for each key in turn: limit per minute, limit
 * per day (-1: unlimited), the number of checks n, then the cost of each of the n checks, applied
 * in order. Returns {now_ms, then per check of every key in turn: deny bits, minute count, day
 * count}. Each check adds its cost to both windows and takes it back if either is over: the
 * script is atomic, so nobody sees the difference, and the common case (allowed) costs two
 * HINCRBYs instead of reads and writes. The cost goes to HINCRBY as the string it came as, and
 * "1" needs no tonumber: Lua numbers to and from strings (printf, strtod) were a tenth of Redis's
 * work per check.
 * A key's windows are fields of its one hash (m<minute>, d<day>; cm and cd name the current
 * ones, so that a new window deletes the last), and the hash expires with the longest window it
 * holds (plus a margin). One hash, and the only key the script touches is the one it declares:
 * on a Redis Cluster, a slot being migrated moves the whole count at once, and the ASK that
 * sends the call to the importing node comes only once the count is there.
 * Many keys in one call share Redis's per-call cost (most of a short script's); on a Cluster,
 * the keys of one call must share a slot (the limiter groups them).
 * A key that Redis refuses to count (of another type, or not a number: written by someone
 * else) fails that key alone: its checks come back with deny -1 and the error in place of the
 * minute count, the minute increment already made for the check is taken back, and the checks
 * of the other keys in the call are answered as usual. */
const char limiter_script[] = "local t = redis.call('TIME')\n"
                              "local sec = tonumber(t[1])\n"
                              "local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
                              "local fm = 'm' .. math.floor(sec / 60)\n"
                              "local fd = 'd' .. math.floor(sec / 86400)\n"
                              "local em = 120 - sec % 60\n"
                              "local ed = 90000 - sec % 86400\n"
                              "local function fresh(k, mark, f, ttl)\n"
                              "  local old = redis.call('HGET', k, mark)\n"
                              "  if old ~= f then\n"
                              "    if old then redis.call('HDEL', k, old) end\n"
                              "    redis.call('HSET', k, mark, f)\n"
                              "  end\n"
                              "  if redis.call('TTL', k) < ttl then redis.call('EXPIRE', k, ttl) end\n"
                              "end\n"
                              "local out = {now}\n"
                              "local a = 1\n"
                              "for k = 1, #KEYS do\n"
                              "  local lm = tonumber(ARGV[a])\n"
                              "  local ld = tonumber(ARGV[a + 1])\n"
                              "  local last = a + 2 + tonumber(ARGV[a + 2])\n"
                              "  local key = KEYS[k]\n"
                              "  local err = nil\n"
                              "  for i = a + 3, last do\n"
                              "    local s = ARGV[i]\n"
                              "    local c = 1\n"
                              "    if s ~= '1' then c = tonumber(s) end\n"
                              "    local um = 0\n"
                              "    local ud = 0\n"
                              "    local deny = -1\n"
                              "    if not err and lm >= 0 then\n"
                              "      um = redis.pcall('HINCRBY', key, fm, s)\n"
                              "      if type(um) == 'table' then err = um.err\n"
                              "      elseif um == c then fresh(key, 'cm', fm, em) end\n"
                              "    end\n"
                              "    if not err and ld >= 0 then\n"
                              "      ud = redis.pcall('HINCRBY', key, fd, s)\n"
                              "      if type(ud) == 'table' then\n"
                              "        err = ud.err\n"
                              "        if lm >= 0 then redis.call('HINCRBY', key, fm, -c) end\n"
                              "      elseif ud == c then fresh(key, 'cd', fd, ed) end\n"
                              "    end\n"
                              "    if err then\n"
                              "      um = err\n"
                              "      ud = 0\n"
                              "    else\n"
                              "      deny = 0\n"
                              "      if lm >= 0 and um > lm then deny = deny + 1 end\n"
                              "      if ld >= 0 and ud > ld then deny = deny + 2 end\n"
                              "      if deny ~= 0 and c > 0 then\n"
                              "        if lm >= 0 then um = redis.call('HINCRBY', key, fm, -c) end\n"
                              "        if ld >= 0 then ud = redis.call('HINCRBY', key, fd, -c) end\n"
                              "      end\n"
                              "    end\n"
                              "    out[#out + 1] = deny\n"
                              "    out[#out + 1] = um\n"
                              "    out[#out + 1] = ud\n"
                              "  end\n"
                              "  a = last + 1\n"
                              "end\n"
                              "return out\n";

/* ---- pure core ---- */

static int64_t left_in(int64_t limit, int64_t used)
{
    if (limit == RULES_UNLIMITED)
        return RULES_UNLIMITED;
    return used >= limit ? 0 : limit - used;
}

static void fill_resets(struct check_result *out, uint64_t now_ms)
{
    out->reset_minute_ms = MINUTE_MS - now_ms % MINUTE_MS;
    out->reset_day_ms = DAY_MS - now_ms % DAY_MS;
}

void limiter_decide(const struct rules_resolved *lim, int deny, int64_t used_minute,
                    int64_t used_day, uint64_t now_ms, struct check_result *out)
{
    memset(out, 0, sizeof(*out));
    fill_resets(out, now_ms);
    out->limit_minute = lim->per_minute;
    out->limit_day = lim->per_day;
    out->remaining_minute = left_in(lim->per_minute, used_minute);
    out->remaining_day = left_in(lim->per_day, used_day);
    out->allowed = deny == 0;
    if (deny & LIMITER_DENY_DAY)
        out->reason = USAGED_REASON_DAY_LIMIT; /* the longer wait names the reason */
    else if (deny & LIMITER_DENY_MINUTE)
        out->reason = USAGED_REASON_MINUTE_LIMIT;
    if (deny & LIMITER_DENY_MINUTE)
        out->retry_after_ms = out->reset_minute_ms;
    if ((deny & LIMITER_DENY_DAY) && out->reset_day_ms > out->retry_after_ms)
        out->retry_after_ms = out->reset_day_ms;
}

void limiter_local_check(struct limiter_local *w, const struct rules_resolved *lim, uint32_t cost,
                         uint64_t now_ms, struct check_result *out)
{
    int64_t minute = (int64_t)(now_ms / MINUTE_MS), day = (int64_t)(now_ms / DAY_MS);
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
        deny |= LIMITER_DENY_MINUTE;
    if (lim->per_day != RULES_UNLIMITED && w->day_used + cost > lim->per_day)
        deny |= LIMITER_DENY_DAY;
    if (deny == 0) {
        w->minute_used += cost;
        w->day_used += cost;
    }
    limiter_decide(lim, deny, w->minute_used, w->day_used, now_ms, out);
    out->degraded = true;
}

/* A check's answer is the daemon's most frequent message, so it is encoded here into one buffer
 * and handed to the packer in one write: ten keys that never change go out as ready-made bytes
 * (fixstr header and text), and the integers take msgpack-c's encodings (the shortest form; a
 * negative one as signed). Through the packer, key by key, it cost 2.5k instructions per check. */
#define KEY(lit) lit, sizeof(lit) - 1

static uint8_t *put_bytes(uint8_t *p, const char *bytes, size_t len)
{
    memcpy(p, bytes, len);
    return p + len;
}

static uint8_t *put_be(uint8_t *p, uint8_t tag, uint64_t v, int len)
{
    *p++ = tag;
    for (int i = len - 1; i >= 0; i--)
        *p++ = (uint8_t)(v >> (8 * i));
    return p;
}

static uint8_t *put_uint(uint8_t *p, uint64_t v)
{
    if (v < 128) {
        *p++ = (uint8_t)v;
        return p;
    }
    if (v <= UINT8_MAX)
        return put_be(p, 0xcc, v, 1);
    if (v <= UINT16_MAX)
        return put_be(p, 0xcd, v, 2);
    if (v <= UINT32_MAX)
        return put_be(p, 0xce, v, 4);
    return put_be(p, 0xcf, v, 8);
}

static uint8_t *put_int(uint8_t *p, int64_t v)
{
    if (v >= 0)
        return put_uint(p, (uint64_t)v);
    if (v >= -32) {
        *p++ = (uint8_t)(int8_t)v;
        return p;
    }
    if (v >= INT8_MIN)
        return put_be(p, 0xd0, (uint64_t)v, 1);
    if (v >= INT16_MIN)
        return put_be(p, 0xd1, (uint64_t)v, 2);
    if (v >= INT32_MIN)
        return put_be(p, 0xd2, (uint64_t)v, 4);
    return put_be(p, 0xd3, (uint64_t)v, 8);
}

static uint8_t *put_optional(uint8_t *p, const char *key, size_t keylen, int64_t v)
{
    p = put_bytes(p, key, keylen);
    if (v == RULES_UNLIMITED) {
        *p++ = 0xc0;
        return p;
    }
    return put_int(p, v);
}

void limiter_pack_result(msgpack_packer *pk, const struct check_result *r)
{
    /* Keys 125 bytes; values at most 2 booleans, 2 + 255 (reason) and 7 integers of 9. */
    uint8_t out[512];
    uint8_t *p = out;
    p = put_bytes(p, KEY("\x8a\xa7"
                         "allowed"));
    *p++ = r->allowed ? 0xc3 : 0xc2;
    p = put_bytes(p, KEY("\xa6"
                         "reason"));
    size_t reason_len = r->reason ? strlen(r->reason) : 0;
    if (!r->reason) {
        *p++ = 0xc0;
    } else {
        /* The reasons are the daemon's own short words. */
        reason_len = reason_len > UINT8_MAX ? UINT8_MAX : reason_len;
        if (reason_len < 32)
            *p++ = (uint8_t)(0xa0 | reason_len);
        else
            p = put_be(p, 0xd9, reason_len, 1);
        p = put_bytes(p, r->reason, reason_len);
    }
    p = put_optional(p,
                     KEY("\xac"
                         "limit_minute"),
                     r->limit_minute);
    p = put_optional(p,
                     KEY("\xa9"
                         "limit_day"),
                     r->limit_day);
    p = put_optional(p,
                     KEY("\xb0"
                         "remaining_minute"),
                     r->remaining_minute);
    p = put_optional(p,
                     KEY("\xad"
                         "remaining_day"),
                     r->remaining_day);
    p = put_bytes(p, KEY("\xaf"
                         "reset_minute_ms"));
    p = put_uint(p, r->reset_minute_ms);
    p = put_bytes(p, KEY("\xac"
                         "reset_day_ms"));
    p = put_uint(p, r->reset_day_ms);
    p = put_bytes(p, KEY("\xae"
                         "retry_after_ms"));
    p = put_uint(p, r->retry_after_ms);
    p = put_bytes(p, KEY("\xa8"
                         "degraded"));
    *p++ = r->degraded ? 0xc3 : 0xc2;
    pk->callback(pk->data, (const char *)out, (size_t)(p - out));
}

/* ---- the key table ---- */

struct limiter_check {
    struct conn *conn;
    bool notification; /* nobody to answer; the connection holds it as pending */
    uint32_t msgid;
    uint32_t cost;
    struct limiter_check *next;
};

struct limiter_key {
    bool used;
    bool inflight; /* a script call for this key is out, or in the batch not yet sent */
    struct limiter_call *unsent; /* its call while in the batch: later checks can join it */
    uint8_t provider_len;
    uint32_t hash;
    uint8_t user_id[16];
    char provider[RULES_PROVIDER_BYTES + 1];
    uint64_t last_used_ms; /* loop time, for eviction */
    /* The over-limit cache: what was left in each window at the last answer from Redis, and
     * until when (loop time) that window lasts. Valid for one limits generation. */
    uint64_t generation;
    uint64_t minute_end, day_end;
    int64_t minute_left, day_left;
    struct limiter_local local;  /* the fallback windows */
    struct limiter_check *queue; /* checks waiting behind the call in flight */
    struct limiter_check *queue_tail;
    uint32_t queued;
};

/* One key's part of a script call: checks of one key (or of no table entry), in arrival order. */
struct limiter_call {
    struct limiter *l;
    struct limiter_call *next; /* in the batch */
    struct limiter_key *key;
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

static uint32_t key_hash(const uint8_t user_id[16], const char *provider, size_t len)
{
    uint32_t h = 2166136261u;
    for (int i = 0; i < 16; i++)
        h = (h ^ user_id[i]) * 16777619u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)provider[i]) * 16777619u;
    return h;
}

static bool key_is(const struct limiter_key *k, uint32_t h, const uint8_t user_id[16],
                   const char *provider, size_t len)
{
    return k->used && k->hash == h && k->provider_len == len &&
           memcmp(k->user_id, user_id, 16) == 0 && memcmp(k->provider, provider, len) == 0;
}

/* Finds or makes the entry of a key; NULL when every slot it could take is busy. */
static struct limiter_key *key_get(struct limiter *l, const uint8_t user_id[16],
                                   const char *provider, size_t len)
{
    uint32_t h = key_hash(user_id, provider, len);
    uint32_t mask = l->key_capacity - 1;
    struct limiter_key *victim = NULL;
    for (uint32_t p = 0; p < KEY_PROBES; p++) {
        struct limiter_key *k = &l->keys[(h + p) & mask];
        if (key_is(k, h, user_id, provider, len))
            return k;
        if (!k->used) {
            victim = k;
            l->key_count++;
            break;
        }
        if (!k->inflight && !k->queue && (!victim || k->last_used_ms < victim->last_used_ms))
            victim = k;
    }
    if (!victim)
        return NULL;
    memset(victim, 0, sizeof(*victim));
    victim->used = true;
    victim->hash = h;
    victim->provider_len = (uint8_t)len;
    memcpy(victim->user_id, user_id, 16);
    memcpy(victim->provider, provider, len);
    return victim;
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
    if (check->notification) {
        conn_release(check->conn);
    } else {
        limiter_pack_result(conn_reply(check->conn, check->msgid), r);
        conn_unref(check->conn);
    }
    free_check(l, check);
}

/* Redis could not decide: the configured policy does. */
static void answer_degraded(struct limiter *l, struct limiter_key *key, struct limiter_check *check,
                            const uint8_t user_id[16], const char *provider, size_t len,
                            const struct rules_resolved *lim)
{
    struct check_result r;
    uint64_t now = wall_ms();
    switch (l->policy) {
    case CONFIG_REDIS_LOCAL:
        if (key) {
            limiter_local_check(&key->local, lim, check->cost, now, &r);
            break;
        }
        /* No table slot to count in (every one busy): fall through to allowing. */
        /* fallthrough */
    case CONFIG_REDIS_ALLOW:
        limiter_decide(lim, 0, 0, 0, now, &r);
        r.remaining_minute = r.remaining_day = RULES_UNLIMITED;
        r.degraded = true;
        break;
    case CONFIG_REDIS_DENY:
        limiter_decide(lim, 0, 0, 0, now, &r);
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
static bool cached_denial(struct limiter *l, struct limiter_key *key, uint32_t cost,
                          const struct rules_resolved *lim, struct check_result *r)
{
    if (cost == 0 || key->generation != l->rules.generation)
        return false;
    uint64_t now = uv_now(l->loop);
    bool minute_valid = now < key->minute_end, day_valid = now < key->day_end;
    int deny = 0;
    if (minute_valid && lim->per_minute != RULES_UNLIMITED && cost > key->minute_left)
        deny |= LIMITER_DENY_MINUTE;
    if (day_valid && lim->per_day != RULES_UNLIMITED && cost > key->day_left)
        deny |= LIMITER_DENY_DAY;
    if (!deny)
        return false;
    limiter_decide(lim, deny, 0, 0, wall_ms(), r);
    r->remaining_minute = lim->per_minute == RULES_UNLIMITED ? RULES_UNLIMITED
                          : minute_valid                     ? key->minute_left
                                                             : lim->per_minute;
    r->remaining_day = lim->per_day == RULES_UNLIMITED ? RULES_UNLIMITED
                       : day_valid                     ? key->day_left
                                                       : lim->per_day;
    /* Times to reset on Redis's clock, as remembered, rather than on this host's. */
    if (minute_valid) {
        r->reset_minute_ms = key->minute_end - now + CACHE_MARGIN_MS;
        if (deny & LIMITER_DENY_MINUTE)
            r->retry_after_ms = r->reset_minute_ms;
    }
    if (day_valid) {
        r->reset_day_ms = key->day_end - now + CACHE_MARGIN_MS;
        if ((deny & LIMITER_DENY_DAY) && r->reset_day_ms > r->retry_after_ms)
            r->retry_after_ms = r->reset_day_ms;
    }
    return true;
}

/* The window ends are counted from when the call was sent, not when its answer is read: the
 * script ran in between, so the true end is no earlier than this, whatever the reply's delay. */
static void remember(struct limiter *l, struct limiter_key *key, const struct check_result *r,
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
static void next_call(struct limiter *l, struct limiter_key *key, bool redis_failed)
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
    while (key->queue && call->n < MAX_COSTS_PER_CALL) {
        struct limiter_check *c = key->queue;
        key->queue = c->next;
        c->next = NULL;
        if (call->checks_tail)
            call->checks_tail->next = c;
        else
            call->checks = c;
        call->checks_tail = c;
        call->n++;
        key->queued--;
    }
    if (!key->queue)
        key->queue_tail = NULL;
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
        limiter_decide(&call->lim, (int)deny, um, ud, (uint64_t)now_ms, &r);
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
        struct limiter_key *key = call->key;
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

/* A key call's Redis key: prefix{user:provider}; returns its length (at most cap). */
static size_t format_key(const struct limiter *l, const struct limiter_call *call, char *dst,
                         size_t cap)
{
    char uuid[UUID_STRING_LEN + 1];
    uuid_format(call->user_id, uuid);
    size_t klen = 0;
    append_str(dst, &klen, cap, l->key_prefix, strlen(l->key_prefix));
    append_str(dst, &klen, cap, "{", 1);
    append_str(dst, &klen, cap, uuid, UUID_STRING_LEN);
    append_str(dst, &klen, cap, ":", 1);
    append_str(dst, &klen, cap, call->provider, call->provider_len);
    append_str(dst, &klen, cap, "}", 1);
    return klen;
}

/* Sends key calls (a list) as one script call. */
static void send_script_call(struct limiter *l, struct limiter_call *calls, uint32_t ncalls,
                             uint32_t nchecks)
{
    struct limiter_batch *batch = xmalloc(sizeof(*batch));
    batch->l = l;
    batch->calls = calls;
    batch->nchecks = nchecks;

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
        size_t klen = format_key(l, call, p, key_cap);
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

struct slot_call {
    uint16_t slot;
    uint32_t order; /* keeps the batch's order within a slot */
    struct limiter_call *call;
};

static int slot_call_cmp(const void *a, const void *b)
{
    const struct slot_call *x = a, *y = b;
    if (x->slot != y->slot)
        return x->slot < y->slot ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

/* Redis Cluster runs a script only with KEYS of one slot: one script call per slot, each sent
 * to the slot's node (where they are pipelined on its connection). */
static void send_per_slot(struct limiter *l, struct limiter_call *calls, uint32_t ncalls)
{
    struct slot_call *sc = xmalloc(ncalls * sizeof(*sc));
    size_t key_cap = strlen(l->key_prefix) + UUID_STRING_LEN + RULES_PROVIDER_BYTES + 3;
    char *key = xmalloc(key_cap);
    uint32_t n = 0;
    for (struct limiter_call *call = calls; call; call = call->next, n++) {
        size_t klen = format_key(l, call, key, key_cap);
        sc[n] = (struct slot_call){redis_key_slot(key, klen), n, call};
    }
    free(key);
    qsort(sc, n, sizeof(*sc), slot_call_cmp);
    for (uint32_t i = 0; i < n;) {
        uint32_t j = i, nchecks = 0;
        for (; j < n && sc[j].slot == sc[i].slot; j++) {
            sc[j].call->next = j + 1 < n && sc[j + 1].slot == sc[i].slot ? sc[j + 1].call : NULL;
            nchecks += sc[j].call->n;
        }
        send_script_call(l, sc[i].call, j - i, nchecks);
        i = j;
    }
    free(sc);
}

/* Sends the key calls gathered so far: one script call (one per slot on a Redis Cluster). */
static void flush_batch(struct limiter *l)
{
    if (!l->batch)
        return;
    struct limiter_call *calls = l->batch;
    uint32_t ncalls = l->batch_calls, nchecks = l->batch_checks;
    l->batch = l->batch_tail = NULL;
    l->batch_calls = l->batch_checks = 0;
    for (struct limiter_call *call = calls; call; call = call->next)
        if (call->key)
            call->key->unsent = NULL;
    if (redis_is_cluster(&l->redis))
        send_per_slot(l, calls, ncalls);
    else
        send_script_call(l, calls, ncalls, nchecks);
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

/* As in the log methods' events, a field given twice is invalid: no silent "last one wins". */
static bool given_twice(struct rpc_error *e, const char *field)
{
    rpc_error_set(e, RPC_INVALID_FIELD, "%s is given twice", field);
    e->field = field;
    return false;
}

static bool parse_check(const struct rpc_message *m, uint8_t user_id[16], const char **provider,
                        size_t *provider_len, uint32_t *cost, struct rpc_error *e)
{
    if (m->params->size != 1 || m->params->ptr[0].type != MSGPACK_OBJECT_MAP) {
        rpc_error_set(
            e, RPC_BAD_REQUEST,
            "check takes params [{\"user_id\": uuid, \"provider\": str, \"cost\": uint}]");
        return false;
    }
    const msgpack_object_map *map = &m->params->ptr[0].via.map;
    bool has_user = false, has_provider = false, has_cost = false;
    *cost = 1;
    for (uint32_t i = 0; i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key, *v = &map->ptr[i].val;
        if (rpc_str_eq(k, "user_id")) {
            if (has_user)
                return given_twice(e, "user_id");
            bool ok = false;
            if (v->type == MSGPACK_OBJECT_STR) {
                ok = uuid_parse(v->via.str.ptr, v->via.str.size, user_id);
            } else if (v->type == MSGPACK_OBJECT_BIN && v->via.bin.size == 16) {
                memcpy(user_id, v->via.bin.ptr, 16);
                ok = true;
            }
            if (!ok) {
                rpc_error_set(e, RPC_INVALID_FIELD, "user_id must be a uuid");
                e->field = "user_id";
                return false;
            }
            has_user = true;
        } else if (rpc_str_eq(k, "provider")) {
            if (has_provider)
                return given_twice(e, "provider");
            size_t chars;
            if (v->type != MSGPACK_OBJECT_STR || v->via.str.size == 0 ||
                !utf8_valid(v->via.str.ptr, v->via.str.size, &chars) ||
                chars > RULES_PROVIDER_MAX) {
                rpc_error_set(e, RPC_INVALID_FIELD,
                              "provider must be a UTF-8 string of 1 to 50 characters");
                e->field = "provider";
                return false;
            }
            *provider = v->via.str.ptr;
            *provider_len = v->via.str.size;
            has_provider = true;
        } else if (rpc_str_eq(k, "cost")) {
            if (has_cost)
                return given_twice(e, "cost");
            has_cost = true;
            if (v->type == MSGPACK_OBJECT_NIL)
                continue;
            if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 > INT32_MAX) {
                rpc_error_set(e, RPC_INVALID_FIELD, "cost must be an integer from 0 to %d",
                              INT32_MAX);
                e->field = "cost";
                return false;
            }
            *cost = (uint32_t)v->via.u64;
        } else {
            rpc_error_set(e, RPC_INVALID_FIELD,
                          "unknown field; check takes user_id, provider "
                          "and cost");
            if (k->type == MSGPACK_OBJECT_STR) {
                snprintf(e->field_name, sizeof(e->field_name), "%.*s",
                         (int)(k->via.str.size < 60 ? k->via.str.size : 60), k->via.str.ptr);
                for (char *p = e->field_name; *p; p++)
                    if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
                        *p = '?';
                e->field = e->field_name;
            } else {
                e->field = "";
            }
            return false;
        }
    }
    if (!has_user || !has_provider) {
        rpc_error_set(e, RPC_INVALID_FIELD, "%s is required", has_user ? "provider" : "user_id");
        e->field = has_user ? "provider" : "user_id";
        return false;
    }
    return true;
}

static enum conn_dispatch_result refuse(struct conn *c, const struct rpc_message *m,
                                        const struct rpc_error *e)
{
    if (m->kind == RPC_KIND_REQUEST)
        conn_reply_error(c, m->msgid, e);
    else
        conn_drop_notification(c, "check", e);
    return CONN_DISPATCHED;
}

enum conn_dispatch_result limiter_submit(struct limiter *l, struct conn *c,
                                         const struct rpc_message *m)
{
    struct rpc_error e;
    uint8_t user_id[16];
    const char *provider = NULL;
    size_t plen = 0;
    uint32_t cost;
    if (!parse_check(m, user_id, &provider, &plen, &cost, &e))
        return refuse(c, m, &e);
    l->stats.checks++;
    struct rules_resolved lim;
    switch (rules_resolve(&l->rules, user_id, provider, plen, &lim)) {
    case RULES_UNKNOWN_PROVIDER:
        l->stats.unknown_provider++;
        rpc_error_set(&e, RPC_UNKNOWN_PROVIDER, "no limits are known for provider %.*s", (int)plen,
                      provider);
        return refuse(c, m, &e);
    case RULES_NOT_LOADED:
        rpc_error_set(&e, RPC_UNAVAILABLE,
                      "the providers' limits have not been read from PostgreSQL yet");
        e.retry_after_ms = 1000;
        return refuse(c, m, &e);
    case RULES_FOUND:
        break;
    }

    struct limiter_check *check = new_check(l);
    check->conn = c;
    check->notification = m->kind == RPC_KIND_NOTIFICATION;
    check->msgid = m->msgid;
    check->cost = cost;
    check->next = NULL;
    if (check->notification)
        conn_hold(c); /* bounded by listen.max_pending_requests like requests */
    else
        conn_ref(c);

    struct check_result r;
    if (!lim.enabled) {
        limiter_decide(&lim, 0, 0, 0, wall_ms(), &r);
        r.allowed = false;
        r.reason = USAGED_REASON_PROVIDER_DISABLED;
        r.remaining_minute = r.remaining_day = 0;
        answer(l, check, user_id, provider, plen, &r);
        return CONN_DISPATCHED;
    }
    if (lim.per_minute == RULES_UNLIMITED && lim.per_day == RULES_UNLIMITED) {
        l->stats.unlimited++;
        limiter_decide(&lim, 0, 0, 0, wall_ms(), &r);
        answer(l, check, user_id, provider, plen, &r);
        return CONN_DISPATCHED;
    }
    struct limiter_key *key = key_get(l, user_id, provider, plen);
    if (key) {
        key->last_used_ms = uv_now(l->loop);
        if (cached_denial(l, key, cost, &lim, &r)) {
            l->stats.cache_hits++;
            answer(l, check, user_id, provider, plen, &r);
            return CONN_DISPATCHED;
        }
    }
    if (!redis_is_up(&l->redis)) {
        answer_degraded(l, key, check, user_id, provider, plen, &lim);
        return CONN_DISPATCHED;
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
        return CONN_DISPATCHED;
    }
    if (key && key->inflight) {
        if (key->queue_tail)
            key->queue_tail->next = check;
        else
            key->queue = check;
        key->queue_tail = check;
        key->queued++;
        return CONN_DISPATCHED;
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
    return CONN_DISPATCHED;
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
    l->key_capacity = KEY_CAPACITY;
    l->keys = xcalloc(KEY_CAPACITY, sizeof(*l->keys));
    rules_init(&l->rules, loop, config, on_rules_state, l);
    redis_init(&l->redis, loop, config, limiter_script, on_redis_state, l);
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
    for (uint32_t i = 0; i < l->key_capacity; i++) {
        struct limiter_check *c = l->keys[i].queue;
        while (c) {
            struct limiter_check *next = c->next;
            if (c->notification)
                conn_release(c->conn);
            else
                conn_unref(c->conn);
            free(c);
            c = next;
        }
    }
    free(l->keys);
    l->keys = NULL;
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

/* ---- stats ---- */

void limiter_pack_stats(const struct limiter *l, msgpack_packer *pk)
{
    msgpack_pack_map(pk, 16);
    rpc_pack_u64(pk, "checks", l->stats.checks);
    rpc_pack_u64(pk, "allowed", l->stats.allowed);
    rpc_pack_str(pk, "denied");
    msgpack_pack_map(pk, 3);
    rpc_pack_u64(pk, "minute_limit", l->stats.denied_minute);
    rpc_pack_u64(pk, "day_limit", l->stats.denied_day);
    rpc_pack_u64(pk, "provider_disabled", l->stats.denied_disabled);
    rpc_pack_u64(pk, "degraded", l->stats.degraded);
    rpc_pack_u64(pk, "unknown_provider", l->stats.unknown_provider);
    rpc_pack_u64(pk, "unlimited", l->stats.unlimited);
    rpc_pack_u64(pk, "cache_hits", l->stats.cache_hits);
    rpc_pack_u64(pk, "coalesced", l->stats.coalesced);
    rpc_pack_u64(pk, "batched", l->stats.batched);
    rpc_pack_u64(pk, "key_errors", l->stats.key_errors);
    rpc_pack_u64(pk, "redis_round_trips", l->stats.script_calls);
    rpc_pack_u64(pk, "providers_loaded", l->rules.ndb);
    rpc_pack_u64(pk, "limits_loads", l->rules.loads);
    rpc_pack_u64(pk, "limits_notifications", l->rules.notifications);
    rpc_pack_str(pk, "redis");
    redis_pack_stats(&l->redis, pk);
    rpc_pack_str(pk, "postgres");
    rpc_pack_str(pk, pg_state_name(l->rules.pg.state));
}
