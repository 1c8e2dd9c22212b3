/* limiter_internal: what limiter.c and settle.c share inside src/limits/; not an interface. */
#ifndef USAGED_LIMITER_INTERNAL_H
#define USAGED_LIMITER_INTERNAL_H

#include "limiter.h"

uint64_t limiter_wall_ms(void);
/* "prefix{user_id}": the hash tag every key of the user shares. Returns its length. */
size_t limiter_format_base(const struct limiter *l, const uint8_t user_id[16], char *out,
                           size_t cap);
size_t limiter_scope_suffix(const struct rules_applied *r, const char *provider, size_t plen,
                            const char *model, size_t mlen, char *out);

/* settle.c: sends the settles gathered in this loop iteration (on_flush). */
void limiter_flush_settles(struct limiter *l);
/* Redis is back: the waiting log_prompt settles go out. */
void limiter_retry_settles(struct limiter *l);
/* At close: what is still waiting is given up (and logged). */
void limiter_drop_settles(struct limiter *l);

#endif
