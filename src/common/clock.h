/* clock: the daemon's one reader of the system clocks.
 *
 * Wall time (CLOCK_REALTIME) is for what leaves the process: timestamps stored in PostgreSQL or
 * the spool, log lines, "last done at" figures in stats, the UTC day of maintenance. It can jump.
 * Monotonic time (CLOCK_MONOTONIC, the clock uv_hrtime reads) is for durations. Timers and
 * deadlines on the loop use the loop's own cached time, uv_now, not this module: every callback
 * of one loop iteration then agrees on "now". */
#ifndef USAGED_CLOCK_H
#define USAGED_CLOCK_H

#include <stdint.h>

/* Milliseconds since 1970-01-01 UTC. */
int64_t clock_wall_ms(void);
/* Monotonic milliseconds and microseconds, from an arbitrary origin. */
uint64_t clock_mono_ms(void);
uint64_t clock_mono_us(void);

#endif
