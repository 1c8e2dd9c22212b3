/* limiter_internal: what limiter.c and settle.c share inside src/limits/; not an interface. */
#ifndef USAGED_LIMITER_INTERNAL_H
#define USAGED_LIMITER_INTERNAL_H

#include "limiter.h"

uint64_t limiter_wall_ms(void);
/* "prefix{user_id}": the hash tag every key of the user shares. Returns its length. */
size_t limiter_format_base(const struct limiter *l, const uint8_t user_id[16], char *out,
                           size_t cap);
/* limiter_slots.c: sends a list of calls, each of one user, the way the Redis deployment needs: as
 * one run, or, on a Redis Cluster (where a script may only hold the KEYS of one slot), as one run
 * per slot of the users' hash tags, in the list's order within each. The list is linked through the
 * pointer at next_offset in each item; user_of gives an item's user; send gets each run, linked
 * the same way and ended with NULL, and its length. */
void limiter_send_by_slot(struct limiter *l, void *list, size_t n, size_t next_offset,
                          const uint8_t *(*user_of)(const void *item),
                          void (*send)(struct limiter *l, void *run, size_t n));
/* limiter_slots.c: the scopes a call's counted rules count in, at most four, numbered from 1
 * as Lua does: scope_of[i] is rule i's, rep[s] a rule of scope s + 1. Returns how many. */
int limiter_call_scopes(const struct rules_resolved *lim, int scope_of[RULES_APPLY_MAX],
                        const struct rules_applied *rep[4]);
/* limiter_slots.c: appends to the RESP text at *text (advanced, and *argc with it) the keys a
 * check's call touches on a Redis Cluster: its windowed scopes' hashes, its concurrent scopes'
 * sorted sets, the reservations its checks make. At most 8 + one per check. */
void limiter_declare_keys(const struct limiter *l, const uint8_t user_id[16], const char *provider,
                          size_t plen, const char *model, size_t mlen,
                          const struct rules_resolved *lim, const struct limiter_check *checks,
                          char **text, size_t *argc);
/* limiter_slots.c: what a key call's part of the script call begins with (its scopes and rules),
 * which the script reads once for every key call that has the same. */
struct limiter_head {
    const char *provider, *model;
    size_t plen, mlen;
    const struct rules_resolved *lim;
};
/* Numbers the distinct heads among heads[0 .. n-1] from 1, in the order they first come:
 * head_of[i] is heads[i]'s number. Returns how many there are. */
uint32_t limiter_number_heads(const struct limiter_head *heads, size_t n, uint32_t *head_of,
                              uint32_t **table, size_t *table_cap);
size_t limiter_scope_suffix(const struct rules_applied *r, const char *provider, size_t plen,
                            const char *model, size_t mlen, char *out);

/* settle.c: sends the settles gathered in this loop iteration (on_flush). */
void limiter_flush_settles(struct limiter *l);
/* Redis is back: the waiting log_prompt settles go out. */
void limiter_retry_settles(struct limiter *l);
/* At close: what is still waiting is given up (and logged). */
void limiter_drop_settles(struct limiter *l);

#endif
