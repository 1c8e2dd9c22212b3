/* hist: a log-bucketed latency histogram, in the manner of HdrHistogram.
 *
 * Values (nanoseconds) below 128 have a bucket each; above, every power-of-two range is split in
 * 64 equal buckets, so a bucket is at most 1/64 (1.6%) wider than its lower bound. Quantiles are
 * reported as the upper bound of their bucket: never below the true value. Recording is an
 * increment; memory is fixed (about 22 KiB). */
#ifndef BENCH_HIST_H
#define BENCH_HIST_H

#include <stdint.h>

#define HIST_SUB_BITS 6
#define HIST_MAX_BITS 47 /* values up to 2^47 ns (39 hours) */
#define HIST_BUCKETS                                                                               \
    ((2u << HIST_SUB_BITS) + (HIST_MAX_BITS - HIST_SUB_BITS) * (1u << HIST_SUB_BITS))

struct hist {
    uint64_t counts[HIST_BUCKETS];
    uint64_t total;
    uint64_t sum;
    uint64_t min, max;
};

void hist_reset(struct hist *h);
void hist_record(struct hist *h, uint64_t value);
/* Adds every count of src into dst. */
void hist_merge(struct hist *dst, const struct hist *src);
/* The value at quantile q (0..1): the upper bound of the bucket holding it; 0 when empty. */
uint64_t hist_quantile(const struct hist *h, double q);
double hist_mean(const struct hist *h);

/* Exposed for the smoke test of the bucket arithmetic. */
uint32_t hist_index(uint64_t value);
uint64_t hist_upper(uint32_t index);

#endif
