/* settle: the limiter's settles (see limiter.h). A settle names a reservation made by a check;
 * the script ('s' mode of check.lua) replaces the check's estimates by what the call used, in
 * every window still current, once. Settles gathered in one loop iteration go in one script
 * call. The ones of log_prompt events, which nobody waits for, are kept while Redis is away (at
 * most limits.settle_queue, each for up to limits.reservation_ttl_s) and retried every second
 * and when Redis comes back. Reservations made under on_redis_error: local are settled in the
 * daemon's memory (local.h). A settle whose extra charge takes a rule with alert_at_percent to
 * its share raises the alert as a check would (the script decides it, once per user, rule and
 * window). */
#include "limiter_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "log.h"
#include "uuid.h"
#include "xalloc.h"

#define MAX_SETTLES_PER_CALL 1024
#define RETRY_MS 1000

struct limiter_settle {
    struct limiter_settle *next;
    struct limiter_settle_request req;
    limiter_settle_fn done; /* NULL: a log_prompt's, kept and retried while Redis is away */
    void *arg;
    uint64_t tag;
    uint64_t expires_ms; /* loop time after which a kept one is given up */
};

struct settle_batch {
    struct limiter *l;
    struct limiter_settle *settles;
    size_t n;
};

static void count(struct limiter *l, enum limiter_settled result, const char *rid)
{
    if (result == LIMITER_SETTLED) {
        l->stats.settles++;
        ledger_settle(&l->ledger, rid, limiter_wall_ms() / 1000);
    } else if (result == LIMITER_DUPLICATE)
        l->stats.settles_duplicate++;
    else if (result == LIMITER_UNKNOWN)
        l->stats.settles_unknown++;
}

static void finish(struct limiter *l, struct limiter_settle *s, enum limiter_settled result)
{
    count(l, result, s->req.rid);
    if (s->done)
        s->done(s->arg, s->tag, result);
    free(s);
}

static void give_up(struct limiter *l, struct limiter_settle *s, const char *why)
{
    l->stats.settles_dropped++;
    char uuid[UUID_STRING_LEN + 1];
    uuid_format(s->req.user_id, uuid);
    log_warn("limits: the settle of reservation %s.%s is given up (%s); it keeps its estimate",
             uuid, s->req.rid, why);
    free(s);
}

static void on_retry(uv_timer_t *t)
{
    limiter_retry_settles(t->data);
}

static void keep(struct limiter *l, struct limiter_settle *s)
{
    if (uv_now(l->loop) >= s->expires_ms) {
        give_up(l, s, "past limits.reservation_ttl_s");
        return;
    }
    if (l->nlater >= l->settle_queue_max) {
        struct limiter_settle *oldest = l->later;
        l->later = oldest->next;
        if (!l->later)
            l->later_tail = NULL;
        l->nlater--;
        give_up(l, oldest, "limits.settle_queue is full");
    }
    s->next = NULL;
    if (l->later_tail)
        l->later_tail->next = s;
    else
        l->later = s;
    l->later_tail = s;
    l->nlater++;
    l->stats.settles_queued++;
    if (!uv_is_active((uv_handle_t *)&l->retry_timer))
        uv_timer_start(&l->retry_timer, on_retry, RETRY_MS, RETRY_MS);
}

/* The index of c in s (NULL: not there). */
static int letter(const char *s, char c)
{
    const char *p = c ? strchr(s, c) : NULL;
    return p ? (int)(p - s) : -1;
}

/* Reads one alert of the script's answer, "aEW limit percent use suffix" (a, or A for a shadow
 * rule; the dimension and window letters; the scope's suffix, see limiter_scope_suffix), into
 * al. Returns false when it is not one. */
static bool read_alert(const char *line, size_t len, struct alerts_alert *al)
{
    char text[256], mark, dim, win;
    long long limit, used;
    unsigned percent;
    int at = 0;
    if (len >= sizeof(text))
        return false;
    memcpy(text, line, len);
    text[len] = '\0';
    if (sscanf(text, "%c%c%c %lld %u %lld %n", &mark, &dim, &win, &limit, &percent, &used, &at) !=
            6 ||
        at == 0 || letter("aA", mark) < 0 || letter("rts", dim) < 0 || letter("mhdM", win) < 0)
        return false;
    al->shadow = mark == 'A';
    al->dimension = (uint8_t)letter("rts", dim);
    al->window = (uint8_t)letter("mhdM", win);
    al->limit = limit;
    al->used = used;
    al->percent = (uint8_t)percent;
    const char *sfx = text + at;
    size_t plen = 0;
    if (strncmp(sfx, ":p:", 3) == 0) {
        snprintf(al->provider, sizeof(al->provider), "%s", sfx + 3);
    } else if (strncmp(sfx, ":m:", 3) == 0) {
        snprintf(al->model, sizeof(al->model), "%s", sfx + 3);
    } else if (sscanf(sfx, ":pm:%zu:%n", &plen, &at) == 1 && at > 0 &&
               plen <= RULES_PROVIDER_BYTES && strlen(sfx + at) >= plen) {
        memcpy(al->provider, sfx + at, plen);
        snprintf(al->model, sizeof(al->model), "%s", sfx + at + plen);
    } else if (strcmp(sfx, ":a") != 0) {
        return false;
    }
    return true;
}

/* Hands the alerts a settle's extra charge raised (one a line) to the alerts queue. */
static void raise_alerts(struct limiter *l, const uint8_t user_id[16], const redisReply *list,
                         uint64_t now_ms)
{
    if (list->type != REDIS_REPLY_STRING)
        return;
    for (const char *p = list->str, *end = list->str + list->len; p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        struct alerts_alert al = {.now_ms = now_ms};
        if (len > 0 && read_alert(p, len, &al)) {
            memcpy(al.user_id, user_id, 16);
            al.window_start_ms = decision_window_start_ms((enum rules_window)al.window, now_ms);
            alerts_push(&l->alerts, &al);
        }
        p += len + 1;
    }
}

static void on_settle_reply(enum redis_status status, const redisReply *reply, void *arg)
{
    struct settle_batch *batch = arg;
    struct limiter *l = batch->l;
    /* {now_ms, then per settle: its result and the alerts it raised} */
    bool ok = status == REDIS_CALL_OK && reply->type == REDIS_REPLY_ARRAY &&
              reply->elements == 1 + 2 * batch->n;
    if (status == REDIS_CALL_OK && !ok)
        log_error("redis: the settle script answered %s",
                  reply->type == REDIS_REPLY_ERROR ? reply->str : "something unexpected");
    struct limiter_settle *s = batch->settles;
    uint64_t now_ms = ok && reply->element[0]->type == REDIS_REPLY_INTEGER
                          ? (uint64_t)reply->element[0]->integer
                          : 0;
    for (size_t i = 1; s; i += 2) {
        struct limiter_settle *next = s->next;
        if (!ok) {
            if (s->done)
                finish(l, s, LIMITER_UNAVAILABLE);
            else
                keep(l, s);
        } else {
            const redisReply *e = reply->element[i];
            long long code = e->type == REDIS_REPLY_INTEGER ? e->integer : 2;
            if (code == 0)
                raise_alerts(l, s->req.user_id, reply->element[i + 1], now_ms);
            finish(l, s,
                   code == 0   ? LIMITER_SETTLED
                   : code == 1 ? LIMITER_DUPLICATE
                               : LIMITER_UNKNOWN);
        }
        s = next;
    }
    free(batch);
}

static void send_settles(struct limiter *l, void *run, size_t n)
{
    struct limiter_settle *list = run;
    struct settle_batch *batch = xmalloc(sizeof(*batch));
    batch->l = l;
    batch->settles = list;
    batch->n = n;
    /* argv: the declared keys (routing only: none on one Redis), then 's', '0', the number of
     * users and their bases, and per settle: its reservation id, tokens, spend and cancel. On a
     * Redis Cluster a settle declares its reservation's key and its user's base, a key never
     * written: which hashes it changes it learns only from the reservation, so it cannot
     * declare them, and while its slot is being migrated those may be on the other node. With
     * a key that is never there among its keys, Redis answers TRYAGAIN (or ASK, then TRYAGAIN)
     * until the slot has moved, and the settle goes again (redis_cluster.c). */
    size_t nkeys = redis_is_cluster(&l->redis) ? 2 * n : 0;
    size_t argc = nkeys + 3 + n + 4 * n, base_cap = strlen(l->key_prefix) + UUID_STRING_LEN + 2;
    const char **argv = xmalloc(argc * sizeof(*argv));
    size_t *lens = xmalloc(argc * sizeof(*lens));
    char *text = xmalloc(n * (2 * base_cap + 3 * 24 + 2 * LOCAL_RID_LEN + 8) + 32);
    char *p = text;
    size_t r = 0, b = nkeys + 3, k = nkeys + 3 + n;
    argv[nkeys] = "s";
    lens[nkeys] = 1;
    argv[nkeys + 1] = "0";
    lens[nkeys + 1] = 1;
    argv[nkeys + 2] = p;
    lens[nkeys + 2] = fmt_u64(p, n);
    p += lens[nkeys + 2];
    for (struct limiter_settle *s = list; s; s = s->next) {
        argv[b] = p;
        lens[b] = limiter_format_base(l, s->req.user_id, p, base_cap);
        p += lens[b++];
        if (nkeys) {
            argv[r] = argv[b - 1];
            lens[r++] = lens[b - 1];
            size_t len = limiter_format_base(l, s->req.user_id, p, base_cap);
            memcpy(p + len, ":r:", 3);
            memcpy(p + len + 3, s->req.rid, LOCAL_RID_LEN);
            argv[r] = p;
            lens[r++] = len + 3 + LOCAL_RID_LEN;
            p += len + 3 + LOCAL_RID_LEN;
        }
        argv[k] = s->req.rid;
        lens[k++] = LOCAL_RID_LEN;
        argv[k] = p;
        lens[k] = s->req.has_tokens ? fmt_u64(p, s->req.tokens) : 0;
        p += lens[k++];
        argv[k] = p;
        lens[k] = s->req.has_spend ? fmt_i64(p, s->req.spend) : 0;
        p += lens[k++];
        argv[k] = s->req.cancel ? "1" : "0";
        lens[k++] = 1;
    }
    l->stats.script_calls++;
    redis_eval(&l->redis, (int)nkeys, (int)argc, argv, lens, l->timeout_ms, on_settle_reply, batch);
    free(argv);
    free(lens);
    free(text);
}

static const uint8_t *settle_user(const void *item)
{
    return ((const struct limiter_settle *)item)->req.user_id;
}

void limiter_flush_settles(struct limiter *l)
{
    while (l->settles) {
        struct limiter_settle *list = l->settles, *tail = list;
        size_t n = 1;
        while (tail->next && n < MAX_SETTLES_PER_CALL) {
            tail = tail->next;
            n++;
        }
        l->settles = tail->next;
        tail->next = NULL;
        l->nsettles -= (uint32_t)n;
        limiter_send_by_slot(l, list, n, offsetof(struct limiter_settle, next), settle_user,
                             send_settles);
    }
    l->settles_tail = NULL;
}

static void add(struct limiter *l, struct limiter_settle *s)
{
    s->next = NULL;
    if (l->settles_tail)
        l->settles_tail->next = s;
    else
        l->settles = s;
    l->settles_tail = s;
    l->nsettles++;
}

/* A reservation made while Redis was away lives in this daemon's memory. */
static enum limiter_settled settle_local(struct limiter *l, const struct limiter_settle_request *r)
{
    switch (local_settle(&l->local, r->user_id, r->rid, r->has_tokens, r->tokens, r->has_spend,
                         r->spend, r->cancel, limiter_wall_ms())) {
    case LOCAL_SETTLED:
        return LIMITER_SETTLED;
    case LOCAL_DUPLICATE:
        return LIMITER_DUPLICATE;
    case LOCAL_UNKNOWN:
        break;
    }
    return LIMITER_UNKNOWN;
}

static struct limiter_settle *new_settle(const struct limiter_settle_request *req,
                                         limiter_settle_fn done, void *arg, uint64_t tag)
{
    struct limiter_settle *s = xcalloc(1, sizeof(*s));
    s->req = *req;
    s->done = done;
    s->arg = arg;
    s->tag = tag;
    return s;
}

void limiter_settle(struct limiter *l, const struct limiter_settle_request *req,
                    limiter_settle_fn done, void *arg, uint64_t tag)
{
    if (req->rid[0] == 'l') {
        enum limiter_settled result = settle_local(l, req);
        count(l, result, req->rid);
        done(arg, tag, result);
        return;
    }
    if (!redis_is_up(&l->redis)) {
        done(arg, tag, LIMITER_UNAVAILABLE);
        return;
    }
    add(l, new_settle(req, done, arg, tag));
}

void limiter_settle_later(struct limiter *l, const struct limiter_settle_request *req)
{
    if (req->rid[0] == 'l') {
        count(l, settle_local(l, req), req->rid);
        return;
    }
    struct limiter_settle *s = new_settle(req, NULL, NULL, 0);
    s->expires_ms = uv_now(l->loop) + (uint64_t)l->reservation_ttl_s * 1000;
    if (redis_is_up(&l->redis) && !l->later)
        add(l, s);
    else
        keep(l, s);
}

void limiter_retry_settles(struct limiter *l)
{
    if (!redis_is_up(&l->redis) || l->closing) {
        /* Still away: drop the ones past their time, keep the rest. */
        uint64_t now = uv_now(l->loop);
        struct limiter_settle **pp = &l->later;
        l->later_tail = NULL;
        while (*pp) {
            struct limiter_settle *s = *pp;
            if (now >= s->expires_ms) {
                *pp = s->next;
                l->nlater--;
                give_up(l, s, "past limits.reservation_ttl_s");
                continue;
            }
            l->later_tail = s;
            pp = &s->next;
        }
        return;
    }
    uv_timer_stop(&l->retry_timer);
    while (l->later) {
        struct limiter_settle *s = l->later;
        l->later = s->next;
        l->nlater--;
        add(l, s);
    }
    l->later_tail = NULL;
}

void limiter_drop_settles(struct limiter *l)
{
    size_t dropped = l->nlater;
    while (l->later) {
        struct limiter_settle *s = l->later;
        l->later = s->next;
        free(s);
    }
    l->later_tail = NULL;
    l->nlater = 0;
    l->stats.settles_dropped += dropped;
    if (dropped)
        log_warn("limits: %zu settles of log_prompt events were waiting for Redis at exit and "
                 "are given up; their reservations keep their estimates",
                 dropped);
}
