/* keytable: see keytable.h. */
#include "keytable.h"

#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

#define KEYTABLE_PROBES 16 /* slots looked at per key */

void keytable_init(struct keytable *t, uint32_t capacity)
{
    t->capacity = capacity;
    t->count = 0;
    t->slots = xcalloc(capacity, sizeof(*t->slots));
}

void keytable_free(struct keytable *t)
{
    free(t->slots);
    t->slots = NULL;
    t->capacity = t->count = 0;
}

static uint32_t key_hash(const uint8_t user_id[16], const char *provider, size_t len,
                         const char *model, size_t model_len)
{
    uint32_t h = 2166136261u;
    for (int i = 0; i < 16; i++)
        h = (h ^ user_id[i]) * 16777619u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)provider[i]) * 16777619u;
    h = (h ^ 0xffu) * 16777619u; /* a byte no UTF-8 text has, between the two */
    for (size_t i = 0; i < model_len; i++)
        h = (h ^ (uint8_t)model[i]) * 16777619u;
    return h;
}

static bool key_is(const struct keytable_entry *k, uint32_t h, const uint8_t user_id[16],
                   const char *provider, size_t len, const char *model, size_t model_len)
{
    return k->used && k->hash == h && k->provider_len == len && k->model_len == model_len &&
           memcmp(k->user_id, user_id, 16) == 0 && memcmp(k->provider, provider, len) == 0 &&
           memcmp(k->model, model, model_len) == 0;
}

struct keytable_entry *keytable_get(struct keytable *t, const uint8_t user_id[16],
                                    const char *provider, size_t len, const char *model,
                                    size_t model_len, uint64_t now_ms)
{
    uint32_t h = key_hash(user_id, provider, len, model, model_len);
    uint32_t mask = t->capacity - 1;
    struct keytable_entry *victim = NULL;
    for (uint32_t p = 0; p < KEYTABLE_PROBES; p++) {
        struct keytable_entry *k = &t->slots[(h + p) & mask];
        if (key_is(k, h, user_id, provider, len, model, model_len)) {
            k->last_used_ms = now_ms;
            return k;
        }
        if (!k->used) {
            victim = k;
            t->count++;
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
    victim->model_len = (uint8_t)model_len;
    memcpy(victim->model, model, model_len);
    victim->last_used_ms = now_ms;
    return victim;
}

void keytable_queue(struct keytable_entry *k, struct limiter_check *c)
{
    c->next = NULL;
    if (k->queue_tail)
        k->queue_tail->next = c;
    else
        k->queue = c;
    k->queue_tail = c;
    k->queued++;
}

uint32_t keytable_take(struct keytable_entry *k, uint32_t max, struct limiter_check **head,
                       struct limiter_check **tail)
{
    uint32_t n = 0;
    *head = *tail = NULL;
    while (k->queue && n < max) {
        struct limiter_check *c = k->queue;
        k->queue = c->next;
        c->next = NULL;
        if (*tail)
            (*tail)->next = c;
        else
            *head = c;
        *tail = c;
        n++;
        k->queued--;
    }
    if (!k->queue)
        k->queue_tail = NULL;
    return n;
}
