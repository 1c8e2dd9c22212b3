/* hist: see hist.h. */
#include "hist.h"

#include <string.h>

#define LINEAR (2u << HIST_SUB_BITS) /* values below this have a bucket each */
#define SUB (1u << HIST_SUB_BITS)

void hist_reset(struct hist *h)
{
    memset(h, 0, sizeof(*h));
}

uint32_t hist_index(uint64_t value)
{
    if (value < LINEAR)
        return (uint32_t)value;
    unsigned msb = 63u - (unsigned)__builtin_clzll(value);
    if (msb >= HIST_MAX_BITS)
        return HIST_BUCKETS - 1;
    unsigned shift = msb - HIST_SUB_BITS;
    /* value >> shift is in [SUB, 2 * SUB) */
    return LINEAR + (msb - HIST_SUB_BITS - 1) * SUB + (uint32_t)((value >> shift) - SUB);
}

uint64_t hist_upper(uint32_t index)
{
    if (index < LINEAR)
        return index;
    uint32_t octave = (index - LINEAR) / SUB, sub = (index - LINEAR) % SUB;
    unsigned shift = octave + 1;
    uint64_t lower = (uint64_t)(SUB + sub) << shift;
    return lower + ((uint64_t)1 << shift) - 1;
}

void hist_record(struct hist *h, uint64_t value)
{
    h->counts[hist_index(value)]++;
    if (h->total == 0 || value < h->min)
        h->min = value;
    if (value > h->max)
        h->max = value;
    h->total++;
    h->sum += value;
}

void hist_merge(struct hist *dst, const struct hist *src)
{
    if (src->total == 0)
        return;
    for (uint32_t i = 0; i < HIST_BUCKETS; i++)
        dst->counts[i] += src->counts[i];
    if (dst->total == 0 || src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
    dst->total += src->total;
    dst->sum += src->sum;
}

uint64_t hist_quantile(const struct hist *h, double q)
{
    if (h->total == 0)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)h->total + 0.5);
    if (rank < 1)
        rank = 1;
    if (rank > h->total)
        rank = h->total;
    uint64_t seen = 0;
    for (uint32_t i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t v = hist_upper(i);
            return v > h->max ? h->max : v;
        }
    }
    return h->max;
}

double hist_mean(const struct hist *h)
{
    return h->total ? (double)h->sum / (double)h->total : 0.0;
}
