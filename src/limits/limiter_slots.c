/* limiter_slots: the limiter's script calls on a Redis Cluster, where one call may only hold
 * the keys of one slot: a list of calls (or settles) goes out as one call per slot of its
 * users' bases (redis_send_by_slot), and as one call on any other deployment. */
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
