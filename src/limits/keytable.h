/* keytable: the limiter's memory of the keys (user, provider, model) it has checked
 * recently. A fixed table with open addressing: each entry holds the over-limit cache and the
 * queue of checks waiting behind the key's script call in flight, which the limiter coalesces
 * into its next call. Pure: no I/O; the caller hands it the time. */
#ifndef USAGED_KEYTABLE_H
#define USAGED_KEYTABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "decision.h"
#include "rules.h"

struct check_result;

/* How the limiter answers: arg and tag are the caller's, handed back untouched (the methods
 * layer passes its connection and msgid, and needs no allocation per check). */
typedef void (*limiter_done_fn)(void *arg, uint64_t tag, const struct check_result *r);

/* One check waiting for its answer. */
struct limiter_check {
    limiter_done_fn done;
    void *arg;
    uint64_t tag;
    struct check_amounts amounts;
    char rid[17]; /* the reservation id to make when allowed; "": none */
    struct limiter_check *next;
};

struct limiter_call;

struct keytable_entry {
    bool used;
    bool inflight; /* a script call for this key is out, or in the batch not yet sent */
    struct limiter_call *unsent; /* its call while in the batch: later checks can join it */
    uint8_t provider_len;
    uint8_t model_len; /* 0: no model sent */
    uint32_t hash;
    uint8_t user_id[16];
    char provider[RULES_PROVIDER_BYTES + 1];
    char model[RULES_MODEL_BYTES + 1];
    uint64_t last_used_ms; /* loop time, for eviction */
    /* The over-limit cache: what was left in each window at the last answer from Redis, and
     * until when (loop time) that window lasts. Valid for one limits generation. */
    uint64_t generation;
    uint64_t minute_end, day_end;
    int64_t minute_left, day_left;
    struct limiter_check *queue; /* checks waiting behind the call in flight */
    struct limiter_check *queue_tail;
    uint32_t queued;
};

struct keytable {
    struct keytable_entry *slots;
    uint32_t capacity; /* a power of two */
    uint32_t count;    /* slots ever taken */
};

void keytable_init(struct keytable *t, uint32_t capacity);
/* Frees the table; the queues must be empty. */
void keytable_free(struct keytable *t);
/* Finds or makes the entry of a key, and marks it used at now_ms. A new key takes a free slot
 * among the ones it may probe, else the least recently used one that has nothing in flight or
 * queued; NULL when every slot it could take is busy (the check then goes without an entry). */
struct keytable_entry *keytable_get(struct keytable *t, const uint8_t user_id[16],
                                    const char *provider, size_t len, const char *model,
                                    size_t model_len, uint64_t now_ms);
/* Puts a check at the end of the key's queue. */
void keytable_queue(struct keytable_entry *k, struct limiter_check *c);
/* Takes up to max checks from the head of the key's queue, in order, as a list whose tail is
 * *tail; returns how many. */
uint32_t keytable_take(struct keytable_entry *k, uint32_t max, struct limiter_check **head,
                       struct limiter_check **tail);

#endif
