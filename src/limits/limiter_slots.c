/* limiter_slots: the limiter's script calls on a Redis Cluster, where one call may only hold
 * the keys of one slot: a list of calls (or settles) goes out as one call per slot of its
 * users' bases (redis_send_by_slot), and as one call on any other deployment; the keys a
 * check's call declares there (routing during a slot migration looks at those alone); the
 * scopes' key suffixes; and the heads (scopes and rules) that a call's users share. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "limiter_internal.h"
#include "redis.h"
#include "uuid.h"
#include "xalloc.h"

/* An item's slot is its user's base's. */
struct by_slot {
    struct limiter *l;
    const uint8_t *(*user_of)(const void *item);
    void (*send)(struct limiter *l, void *run, size_t n);
    char *base; /* room for one base */
    size_t base_cap;
};

static uint16_t user_slot(const void *item, void *arg)
{
    struct by_slot *b = arg;
    size_t len = limiter_format_base(b->l, b->user_of(item), b->base, b->base_cap);
    return redis_key_slot(b->base, len);
}

static void send_run(void *arg, void *run, size_t n)
{
    struct by_slot *b = arg;
    b->send(b->l, run, n);
}

void limiter_send_by_slot(struct limiter *l, void *list, size_t n, size_t next_offset,
                          const uint8_t *(*user_of)(const void *item),
                          void (*send)(struct limiter *l, void *run, size_t n))
{
    if (!redis_is_cluster(&l->redis)) {
        send(l, list, n);
        return;
    }
    struct by_slot b = {l, user_of, send, NULL, strlen(l->key_prefix) + UUID_STRING_LEN + 2};
    b.base = xmalloc(b.base_cap);
    redis_send_by_slot(list, n, next_offset, user_slot, send_run, &b);
    free(b.base);
}

/* The suffix of a scope's hash after the user's base: ":a" (every provider, any model),
 * ":p:" provider, ":m:" model, ":pm:" provider length ":" provider model. */
size_t limiter_scope_suffix(const struct rules_applied *r, const char *provider, size_t plen,
                            const char *model, size_t mlen, char *out)
{
    size_t n = 0;
    if (!r->by_provider && !r->by_model) {
        memcpy(out, ":a", 2);
        return 2;
    }
    if (r->by_provider && r->by_model) {
        n = (size_t)sprintf(out, ":pm:%zu:", plen);
    } else {
        memcpy(out, r->by_provider ? ":p:" : ":m:", 3);
        n = 3;
    }
    if (r->by_provider) {
        memcpy(out + n, provider, plen);
        n += plen;
    }
    if (r->by_model) {
        memcpy(out + n, model, mlen);
        n += mlen;
    }
    return n;
}

int limiter_call_scopes(const struct rules_resolved *lim, int scope_of[RULES_APPLY_MAX],
                        const struct rules_applied *rep[4])
{
    int nscopes = 0, scope_kind[4];
    for (int i = 0; i < lim->counted; i++) {
        int kind = lim->rule[i].by_provider + 2 * lim->rule[i].by_model, s = 0;
        while (s < nscopes && scope_kind[s] != kind)
            s++;
        if (s == nscopes) {
            scope_kind[nscopes] = kind;
            rep[nscopes++] = &lim->rule[i];
        }
        scope_of[i] = s + 1;
    }
    return nscopes;
}

void limiter_declare_keys(const struct limiter *l, const uint8_t user_id[16], const char *provider,
                          size_t plen, const char *model, size_t mlen,
                          const struct rules_resolved *lim, const struct limiter_check *checks,
                          char **text, size_t *argc)
{
    char *p = *text;
    size_t a = *argc, base_cap = strlen(l->key_prefix) + UUID_STRING_LEN + 2;
    int scope_of[RULES_APPLY_MAX];
    const struct rules_applied *rep[4];
    int nscopes = limiter_call_scopes(lim, scope_of, rep);
    for (int sc = 0; sc < nscopes; sc++) {
        /* A scope's hash holds its windowed rules' counts; a concurrent rule's slots are a
         * sorted set named by the base, ":c" and the suffix (check.lua). */
        bool windowed = false, concurrent = false;
        for (int i = 0; i < lim->counted; i++) {
            if (scope_of[i] != sc + 1)
                continue;
            if (lim->rule[i].dimension == RULES_CONCURRENT)
                concurrent = true;
            else
                windowed = true;
        }
        /* Each argument's bytes go at its start + 4, then redis_conn_close_arg puts its head. */
        for (int set = 0; set < 2; set++) {
            if (!(set ? concurrent : windowed))
                continue;
            size_t len = limiter_format_base(l, user_id, p + 4, base_cap);
            if (set) {
                memcpy(p + 4 + len, ":c", 2);
                len += 2;
            }
            len += limiter_scope_suffix(rep[sc], provider, plen, model, mlen, p + 4 + len);
            p = redis_conn_close_arg(p, len);
            a++;
        }
    }
    for (const struct limiter_check *c = checks; c; c = c->next) {
        if (!c->rid[0])
            continue;
        size_t len = limiter_format_base(l, user_id, p + 4, base_cap), rlen = strlen(c->rid);
        memcpy(p + 4 + len, ":r:", 3);
        memcpy(p + 4 + len + 3, c->rid, rlen);
        p = redis_conn_close_arg(p, len + 3 + rlen);
        a++;
    }
    *text = p;
    *argc = a;
}

/* Heads are equal when their provider, model and counted rules are: then so are the scopes'
 * suffixes and the rules' arguments. */
static bool same_head(const struct limiter_head *a, const struct limiter_head *b)
{
    if (a->plen != b->plen || a->mlen != b->mlen || a->lim->counted != b->lim->counted ||
        memcmp(a->provider, b->provider, a->plen) != 0 || memcmp(a->model, b->model, a->mlen) != 0)
        return false;
    for (int i = 0; i < a->lim->counted; i++) {
        const struct rules_applied *x = &a->lim->rule[i], *y = &b->lim->rule[i];
        if (x->dimension != y->dimension || x->window != y->window || x->shadow != y->shadow ||
            x->alert_percent != y->alert_percent || x->by_provider != y->by_provider ||
            x->by_model != y->by_model || x->limit != y->limit)
            return false;
    }
    return true;
}

static uint64_t hash_bytes(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 1099511628211u; /* FNV-1a */
    return h;
}

static uint64_t hash_head(const struct limiter_head *hd)
{
    uint64_t h = hash_bytes(14695981039346656037u, hd->provider, hd->plen);
    h = hash_bytes(h, hd->model, hd->mlen);
    for (int i = 0; i < hd->lim->counted; i++)
        h = hash_bytes(h, &hd->lim->rule[i].limit, sizeof(hd->lim->rule[i].limit));
    return h;
}

uint32_t limiter_number_heads(const struct limiter_head *heads, size_t n, uint32_t *head_of,
                              uint32_t **table, size_t *table_cap)
{
    if (n == 1) {
        head_of[0] = 1;
        return 1;
    }
    /* An open-addressing table of the heads seen, at most half full: slot -> index + 1. The
     * table is the caller's, kept from call to call. */
    size_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    if (*table_cap < cap) {
        free(*table);
        *table = xmalloc(cap * sizeof(**table));
        *table_cap = cap;
    }
    uint32_t *slot = *table;
    memset(slot, 0, cap * sizeof(*slot));
    uint32_t distinct = 0;
    for (size_t i = 0; i < n; i++) {
        size_t s = (size_t)hash_head(&heads[i]) & (cap - 1);
        while (slot[s] && !same_head(&heads[slot[s] - 1], &heads[i]))
            s = (s + 1) & (cap - 1);
        if (!slot[s]) {
            slot[s] = (uint32_t)i + 1;
            head_of[i] = ++distinct;
        } else {
            head_of[i] = head_of[slot[s] - 1];
        }
    }
    return distinct;
}
