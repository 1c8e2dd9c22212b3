/* redis_replies: see redis_replies.h. */
#include "redis_replies.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

/* Spare objects kept, and the room each keeps. None under AddressSanitizer, which can then still
 * catch a reply used after its callback. */
#if defined(__SANITIZE_ADDRESS__)
#define REPLY_SPARE 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define REPLY_SPARE 0
#endif
#endif
#ifndef REPLY_SPARE
#define REPLY_SPARE 1024
#endif
#define KEEP_ELEMENTS 256 /* element room kept by a spare; a larger array's is freed */
#define KEEP_BYTES 64     /* string room kept by a spare */

struct redis_reply_node {
    redisReply reply; /* first: what hiredis and the callers see */
    struct redis_replies *owner;
    struct redis_reply_node *next_spare;
    redisReply **element_room;
    size_t element_cap;
    char *str_room;
    size_t str_cap;
};

static struct redis_reply_node *node_new(const redisReadTask *task, int type)
{
    struct redis_replies *p = task->privdata;
    struct redis_reply_node *n = p->spare;
    if (n) {
        p->spare = n->next_spare;
        p->nspare--;
    } else {
        n = xcalloc(1, sizeof(*n));
        n->owner = p;
    }
    n->reply = (redisReply){.type = type};
    if (task->parent) {
        redisReply *parent = task->parent->obj;
        parent->element[task->idx] = &n->reply;
    }
    return n;
}

static void node_free_room(struct redis_reply_node *n)
{
    free(n->element_room);
    free(n->str_room);
    free(n);
}

static void free_object(void *obj)
{
    struct redis_reply_node *n = obj;
    if (!n)
        return;
    if (n->reply.type == REDIS_REPLY_ARRAY)
        for (size_t i = 0; i < n->reply.elements; i++)
            free_object(n->reply.element[i]);
    struct redis_replies *p = n->owner;
    if (p->nspare + 1 > REPLY_SPARE) {
        node_free_room(n);
        return;
    }
    if (n->element_cap > KEEP_ELEMENTS) {
        free(n->element_room);
        n->element_room = NULL;
        n->element_cap = 0;
    }
    if (n->str_cap > KEEP_BYTES) {
        free(n->str_room);
        n->str_room = NULL;
        n->str_cap = 0;
    }
    n->next_spare = p->spare;
    p->spare = n;
    p->nspare++;
}

static void *create_string(const redisReadTask *task, char *str, size_t len)
{
    struct redis_reply_node *n = node_new(task, task->type);
    if (n->str_cap < len + 1) {
        free(n->str_room);
        n->str_cap = len + 1 > KEEP_BYTES ? len + 1 : KEEP_BYTES;
        n->str_room = xmalloc(n->str_cap);
    }
    memcpy(n->str_room, str, len);
    n->str_room[len] = '\0';
    n->reply.str = n->str_room;
    n->reply.len = len;
    return n;
}

static void *create_array(const redisReadTask *task, int elements)
{
    struct redis_reply_node *n = node_new(task, REDIS_REPLY_ARRAY);
    size_t count = elements > 0 ? (size_t)elements : 0;
    if (n->element_cap < count) {
        free(n->element_room);
        n->element_cap = count;
        n->element_room = xmalloc(count * sizeof(*n->element_room));
    }
    /* Zeroed, as hiredis's own: a reply cut short is freed with its missing elements NULL. */
    if (count)
        memset(n->element_room, 0, count * sizeof(*n->element_room));
    n->reply.element = count ? n->element_room : NULL;
    n->reply.elements = count;
    return n;
}

static void *create_integer(const redisReadTask *task, long long value)
{
    struct redis_reply_node *n = node_new(task, REDIS_REPLY_INTEGER);
    n->reply.integer = value;
    return n;
}

static void *create_nil(const redisReadTask *task)
{
    return node_new(task, REDIS_REPLY_NIL);
}

/* hiredis takes a pointer to a mutable table; it never writes to it. */
static redisReplyObjectFunctions reply_functions = {
    create_string, create_array, create_integer, create_nil, free_object,
};

void redis_replies_init(struct redis_replies *p)
{
    p->spare = NULL;
    p->nspare = 0;
}

void redis_replies_attach(struct redis_replies *p, redisAsyncContext *ac)
{
    ac->c.reader->fn = &reply_functions;
    ac->c.reader->privdata = p;
}

void redis_replies_free(struct redis_replies *p)
{
    while (p->spare) {
        struct redis_reply_node *next = p->spare->next_spare;
        node_free_room(p->spare);
        p->spare = next;
    }
    p->nspare = 0;
}
