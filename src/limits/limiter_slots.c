/* limiter_slots: the limiter's script calls on a Redis Cluster, where one call may only hold
 * the keys of one slot: a list of calls (or settles) goes out as one call per slot of its
 * users' bases (redis_send_by_slot), and as one call on any other deployment; and the keys a
 * check's call declares there (routing during a slot migration looks at those alone). */
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
         * sorted set, the hash's name and ":c". */
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
        char *name = p + 4;
        size_t len = limiter_format_base(l, user_id, name, base_cap);
        len += limiter_scope_suffix(rep[sc], provider, plen, model, mlen, name + len);
        if (windowed) {
            p = redis_conn_close_arg(p, len);
            a++;
            name = p - 2 - len; /* where the head left it */
        }
        if (concurrent) { /* the set's name begins as the hash's */
            if (name != p + 4)
                memmove(p + 4, name, len);
            memcpy(p + 4 + len, ":c", 2);
            p = redis_conn_close_arg(p, len + 2);
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
