/* ledger: see ledger.h. */
#include "ledger.h"

#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

#define SECOND_BITS 20 /* of the issuing second in the id: 12 days, past the longest TTL */
#define SECOND_MASK ((1ULL << SECOND_BITS) - 1)

static void shape(struct ledger *g, uint32_t ttl_s)
{
    g->grace_s = ledger_grace_s(ttl_s);
    g->span_s = ttl_s + g->grace_s;
    g->width_s = g->span_s / (LEDGER_BUCKETS - 2) + 1;
    g->n = g->span_s / g->width_s + 2;
    g->ring = xcalloc(g->n, sizeof(*g->ring));
}

/* The number of the oldest bucket that may still hold a reservation at now_s. */
static uint64_t first_live(const struct ledger *g, uint64_t now_s)
{
    uint64_t from = now_s > g->span_s ? now_s - g->span_s : 0;
    return from / g->width_s;
}

void ledger_init(struct ledger *g, uint32_t ttl_s, uint64_t now_s)
{
    memset(g, 0, sizeof(*g));
    shape(g, ttl_s);
    g->oldest = first_live(g, now_s);
}

void ledger_free(struct ledger *g)
{
    free(g->ring);
    g->ring = NULL;
}

static void age(struct ledger *g, uint64_t now_s)
{
    uint64_t live = first_live(g, now_s);
    for (uint32_t k = 0; g->oldest < live && k < g->n; k++, g->oldest++) {
        struct ledger_bucket *b = &g->ring[g->oldest % g->n];
        g->expired += b->open;
        g->slots_lapsed += b->slots;
        memset(b, 0, sizeof(*b));
    }
    if (g->oldest < live)
        g->oldest = live; /* every bucket was aged above: the rest were empty */
}

void ledger_resize(struct ledger *g, uint32_t ttl_s, uint64_t now_s)
{
    age(g, now_s);
    struct ledger old = *g;
    shape(g, ttl_s);
    g->oldest = first_live(g, now_s);
    for (uint64_t b = old.oldest; b < old.oldest + old.n; b++) {
        struct ledger_bucket *from = &old.ring[b % old.n];
        uint64_t to = b * old.width_s / g->width_s;
        if (to < g->oldest) {
            g->expired += from->open; /* the shorter TTL has ended them */
            g->slots_lapsed += from->slots;
            continue;
        }
        if (to >= g->oldest + g->n)
            to = g->oldest + g->n - 1;
        g->ring[to % g->n].open += from->open;
        g->ring[to % g->n].slots += from->slots;
    }
    free(old.ring);
}

void ledger_rid_format(uint64_t unique, unsigned slots, uint64_t now_s,
                       char rid[LEDGER_RID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 10; i++)
        rid[i] = hex[(unique >> (36 - 4 * i)) & 15];
    rid[10] = hex[slots > 15 ? 15 : slots];
    uint64_t s = now_s & SECOND_MASK;
    for (int i = 0; i < 5; i++)
        rid[11 + i] = hex[(s >> (16 - 4 * i)) & 15];
    rid[LEDGER_RID_LEN] = '\0';
}

void ledger_rid_local(char rid[LEDGER_RID_LEN + 1])
{
    rid[0] = 'l';
    rid[10] = '0';
}

static unsigned hex_value(char c)
{
    return c >= '0' && c <= '9'   ? (unsigned)(c - '0')
           : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                                  : 0;
}

/* The bucket of rid's second, on the ring, or NULL when it is not there: older (aged) or later
 * than now (an id not made by this version). *aged says which. */
static struct ledger_bucket *bucket_of(struct ledger *g, const char *rid, uint64_t now_s,
                                       unsigned *slots, bool *aged)
{
    uint64_t s = 0;
    for (int i = 0; i < 5; i++)
        s = (s << 4) | hex_value(rid[11 + i]);
    *slots = hex_value(rid[10]);
    /* The latest second at or before now whose low bits are s (up to the grace ahead, for a
     * settling daemon whose clock is behind the issuer's). */
    uint64_t ahead = now_s + g->grace_s;
    uint64_t sec = ahead - ((ahead - s) & SECOND_MASK);
    uint64_t b = sec / g->width_s;
    *aged = b < g->oldest;
    if (*aged)
        return NULL;
    if (b >= g->oldest + g->n)
        b = g->oldest + g->n - 1;
    return &g->ring[b % g->n];
}

/* Adds sign (+1 made, -1 settled) to the bucket of rid's second, or, when that bucket has aged,
 * to what it left in "expired" (a settle after the grace: it had not expired). Returns the
 * reservation's slots. */
static unsigned apply(struct ledger *g, const char *rid, uint64_t now_s, int sign)
{
    age(g, now_s);
    unsigned slots;
    bool aged;
    struct ledger_bucket *b = bucket_of(g, rid, now_s, &slots, &aged);
    if (b) {
        b->open += sign;
        b->slots += sign * (int64_t)slots;
    } else {
        g->expired += sign;
        g->slots_lapsed += sign * (int64_t)slots;
    }
    return slots;
}

void ledger_issue(struct ledger *g, const char *rid, uint64_t now_s)
{
    g->slots_taken += apply(g, rid, now_s, 1);
    g->issued++;
}

void ledger_settle(struct ledger *g, const char *rid, uint64_t now_s)
{
    g->slots_freed += apply(g, rid, now_s, -1);
    g->settled++;
}

void ledger_read(const struct ledger *g, uint64_t now_s, struct ledger_figures *out)
{
    uint64_t live = first_live(g, now_s);
    *out = (struct ledger_figures){.expired = g->expired, .slots_lapsed = g->slots_lapsed};
    for (uint64_t b = g->oldest; b < g->oldest + g->n; b++) {
        const struct ledger_bucket *k = &g->ring[b % g->n];
        if (b < live) {
            out->expired += k->open;
            out->slots_lapsed += k->slots;
        } else {
            out->open += k->open;
            out->slots += k->slots;
        }
    }
}
