/* uuid: parsing, formatting and generation of UUIDs (RFC 9562), UUIDv7 above all: usaged gives
 * every event without an id a time-ordered UUIDv7, which keeps index inserts at the right edge of
 * the primary key's B-tree and lets a retry with the same id be recognised. Pure. */
#ifndef USAGED_UUID_H
#define USAGED_UUID_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define UUID_STRING_LEN 36

/* Parses the canonical 8-4-4-4-12 hex form, any case. */
bool uuid_parse(const char *s, size_t len, uint8_t out[16]);
/* Writes the canonical lower-case form and a NUL: out needs UUID_STRING_LEN + 1 bytes. */
void uuid_format(const uint8_t id[16], char *out);

/* A generator of UUIDv7 that stays strictly increasing within one process, even for many ids
 * in one millisecond or a clock that steps back (RFC 9562, method 3: the rand_a field and the
 * top of rand_b as a counter, seeded randomly each millisecond). */
struct uuid_v7_gen {
    uint64_t last_ms;   /* timestamp of the last id */
    uint64_t counter;   /* 42-bit counter within last_ms */
    uint64_t rng_state; /* xorshift state for the random bits */
};

void uuid_v7_init(struct uuid_v7_gen *g, uint64_t seed);
void uuid_v7_next(struct uuid_v7_gen *g, uint64_t now_ms, uint8_t out[16]);
/* The millisecond timestamp inside a UUIDv7; false when id is not a version 7 UUID. */
bool uuid_v7_time(const uint8_t id[16], uint64_t *ms);

#endif
