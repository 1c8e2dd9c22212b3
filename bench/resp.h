/* resp: the little of Redis's protocol (RESP2) that usage-bench needs to drive Redis itself:
 * commands assembled from pieces formatted ahead of the run, and replies skipped or read
 * without allocating.
 *
 * Each reader returns 1 when it read a whole item, 0 when the bytes end first and -1 on bytes
 * that are not RESP. */
#ifndef BENCH_RESP_H
#define BENCH_RESP_H

#include <stddef.h>
#include <stdint.h>

/* Where resp_bulk writes: msgpack_sbuffer_write has this shape. */
typedef int (*resp_write_fn)(void *data, const char *buf, size_t len);

/* Appends one bulk string: a piece of a command whose array header is written apart. */
void resp_bulk(resp_write_fn write, void *data, const char *s, size_t len);

/* Steps over one whole reply (with everything inside it). */
int resp_skip(const uint8_t **pp, const uint8_t *end);

/* Reads an array's header: *n is its element count (-1 for a null array). */
int resp_array(const uint8_t **pp, const uint8_t *end, int64_t *n);

/* Reads an integer reply. */
int resp_integer(const uint8_t **pp, const uint8_t *end, int64_t *v);

#endif
