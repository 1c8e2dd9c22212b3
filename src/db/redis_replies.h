/* redis_replies: the reply objects hiredis builds for one connection, kept for reuse.
 *
 * hiredis's own functions calloc every object of a reply (a check's script call answers an
 * array with an object per element, each with its own allocation) and free them all right after
 * the callback. These build the same redisReply objects from a list of spares instead, each
 * keeping its string and element room (up to a bound) for the next reply. Callers see plain
 * redisReply trees, valid during their callback only, as before. */
#ifndef USAGED_REDIS_REPLIES_H
#define USAGED_REDIS_REPLIES_H

#include <hiredis/async.h>
#include <stddef.h>

struct redis_reply_node;

struct redis_replies {
    struct redis_reply_node *spare; /* objects given back, for the next replies */
    size_t nspare;
};

void redis_replies_init(struct redis_replies *p);
/* Makes ac's reader build its replies from p, which must outlive the context. */
void redis_replies_attach(struct redis_replies *p, redisAsyncContext *ac);
/* Frees the spares (once no context built from p is left). */
void redis_replies_free(struct redis_replies *p);

#endif
