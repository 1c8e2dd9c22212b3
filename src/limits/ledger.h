/* ledger: what a daemon can honestly say about reservations and concurrent slots, which live in
 * Redis and which any daemon may settle.
 *
 * A reservation id carries the second it was issued (on the issuing daemon's clock, modulo 2^20)
 * and the number of concurrent slots its check took. The issuing daemon adds +1 (and its slots)
 * to the bucket of that second; whichever daemon settles it reads both from the id and takes them
 * off the same second's bucket in its own ledger. A bucket whose every reservation is past the
 * TTL (plus a grace for clocks that differ: LEDGER_GRACE_S, or the TTL when shorter) adds what it
 * still holds to "expired" (and "lapsed" slots); a settle that finds its bucket aged (clocks
 * further apart than the grace) takes it back from "expired". So one daemon's open and in-use
 * figures may be negative (it settled what another issued), but their sum over every daemon sharing
 * the Redis is exact: issued - settled - expired. Bounded: at most LEDGER_BUCKETS buckets, each a
 * second or, for long TTLs, a few. Pure: the time is handed in. */
#ifndef USAGED_LEDGER_H
#define USAGED_LEDGER_H

#include <stdbool.h>
#include <stdint.h>

#define LEDGER_BUCKETS 1024 /* at most, over the TTL and the grace */
#define LEDGER_GRACE_S 60   /* after the TTL, for clocks of daemons and Redis that differ */
#define LEDGER_RID_LEN 16

struct ledger_bucket {
    int64_t open;  /* reservations issued here minus settled anywhere and counted here */
    int64_t slots; /* concurrent slots likewise */
};

struct ledger {
    struct ledger_bucket *ring;
    uint32_t n;       /* buckets in the ring */
    uint32_t width_s; /* seconds per bucket */
    uint32_t grace_s; /* ledger_grace_s of the TTL */
    uint32_t span_s;  /* the TTL plus the grace: how long a reservation can be settled */
    uint64_t oldest;  /* number (second / width_s) of the oldest bucket not yet aged */
    uint64_t issued, settled, slots_taken, slots_freed;
    int64_t expired, slots_lapsed; /* aged buckets' remainders (negative parts possible) */
};

struct ledger_figures {
    int64_t open;         /* reservations open: issued, neither settled nor expired */
    int64_t expired;      /* reservations that reached their TTL unsettled */
    int64_t slots;        /* concurrent slots in use */
    int64_t slots_lapsed; /* concurrent slots freed by the TTL rather than a settle */
};

static inline uint32_t ledger_grace_s(uint32_t ttl_s)
{
    return ttl_s < LEDGER_GRACE_S ? ttl_s : LEDGER_GRACE_S;
}

void ledger_init(struct ledger *g, uint32_t ttl_s, uint64_t now_s);
/* A new TTL (SIGHUP): the buckets move into a ring sized for it. */
void ledger_resize(struct ledger *g, uint32_t ttl_s, uint64_t now_s);
void ledger_free(struct ledger *g);
/* Writes a reservation id: 10 hex digits of `unique`, the slots (0..15) and the issuing second. */
void ledger_rid_format(uint64_t unique, unsigned slots, uint64_t now_s,
                       char rid[LEDGER_RID_LEN + 1]);
/* A reservation kept in this daemon's memory (on_redis_error: local) takes no concurrent slot. */
void ledger_rid_local(char rid[LEDGER_RID_LEN + 1]);
/* A reservation issued at now_s with the id rid (as ledger_rid_format wrote it). */
void ledger_issue(struct ledger *g, const char *rid, uint64_t now_s);
/* A reservation settled (or cancelled), whoever issued it. */
void ledger_settle(struct ledger *g, const char *rid, uint64_t now_s);
void ledger_read(const struct ledger *g, uint64_t now_s, struct ledger_figures *out);

#endif
