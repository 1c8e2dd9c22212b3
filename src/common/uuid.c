/* uuid: see uuid.h. */
#include "uuid.h"

#include <string.h>

/* Every check parses a user_id, so the 32 hex digits are read eight at a time, as the bytes of
 * one 64-bit word (SWAR: each test and sum below runs on the eight bytes at once). */
#define ONES 0x0101010101010101ULL
#define HIGH 0x8080808080808080ULL

static uint64_t load_le32(const char *s)
{
    const unsigned char *u = (const unsigned char *)s;
    return (uint64_t)u[0] | (uint64_t)u[1] << 8 | (uint64_t)u[2] << 16 | (uint64_t)u[3] << 24;
}

/* Eight hex digits (the first is the most significant) as four bytes in out; adds to *bad the
 * bits that mark a byte that is not one. */
static void hex8(uint64_t x, uint8_t *out, uint64_t *bad)
{
    /* For bytes below 0x80, adding 0x80 - lo sets a byte's high bit when it is >= lo, adding
     * 0x7f - hi when it is > hi; no sum carries into the next byte. */
#define AT_LEAST(v, lo) ((v) + (0x80 - (lo)) * ONES)
#define ABOVE(v, hi) ((v) + (0x7f - (hi)) * ONES)
    uint64_t lower = x | 0x20 * ONES;
    uint64_t digit = AT_LEAST(x, '0') & ~ABOVE(x, '9');
    uint64_t letter = AT_LEAST(lower, 'a') & ~ABOVE(lower, 'f');
#undef AT_LEAST
#undef ABOVE
    *bad |= (x & HIGH) | (((digit | letter) & HIGH) ^ HIGH);
    /* '0'..'9' are 0x30..0x39, 'a'..'f' and 'A'..'F' end in 1..6: a letter's is 9 short. */
    uint64_t v = (x & 0x0f * ONES) + ((letter & HIGH) >> 7) * 9;
    /* Pairs of digits into bytes, then the bytes together. */
    v = ((v & 0x00ff00ff00ff00ffULL) << 4) | ((v >> 8) & 0x00ff00ff00ff00ffULL);
    v = (v | v >> 8) & 0x0000ffff0000ffffULL;
    v = v | v >> 16;
    out[0] = (uint8_t)v;
    out[1] = (uint8_t)(v >> 8);
    out[2] = (uint8_t)(v >> 16);
    out[3] = (uint8_t)(v >> 24);
}

bool uuid_parse(const char *s, size_t len, uint8_t out[16])
{
    if (len != UUID_STRING_LEN || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-')
        return false;
    /* 8-4-4-4-12: the groups of four go in pairs. */
    uint64_t bad = 0;
    hex8(load_le32(s) | load_le32(s + 4) << 32, out, &bad);
    hex8(load_le32(s + 9) | load_le32(s + 14) << 32, out + 4, &bad);
    hex8(load_le32(s + 19) | load_le32(s + 24) << 32, out + 8, &bad);
    hex8(load_le32(s + 28) | load_le32(s + 32) << 32, out + 12, &bad);
    return bad == 0;
}

void uuid_format(const uint8_t id[16], char *out)
{
    /* Each byte's two digits, from one table: the check path formats a user_id per check. */
    static const char pairs[513] =
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
        "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
        "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
        "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
        "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
        "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
        "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
        "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";
    /* Where each byte's digits go in 8-4-4-4-12. */
    static const uint8_t at[16] = {0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34};
    for (int i = 0; i < 16; i++)
        memcpy(out + at[i], pairs + 2 * id[i], 2);
    out[8] = out[13] = out[18] = out[23] = '-';
    out[UUID_STRING_LEN] = '\0';
}

static uint64_t xorshift(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    return x;
}

void uuid_v7_init(struct uuid_v7_gen *g, uint64_t seed)
{
    g->last_ms = 0;
    g->counter = 0;
    g->rng_state = seed ? seed : 0x9e3779b97f4a7c15ULL;
}

void uuid_v7_next(struct uuid_v7_gen *g, uint64_t now_ms, uint8_t out[16])
{
    const uint64_t counter_max = (1ULL << 42) - 1;
    if (now_ms > g->last_ms) {
        g->last_ms = now_ms;
        /* Seed the counter low in its range so that it has room to grow within the ms. */
        g->counter = xorshift(&g->rng_state) & ((1ULL << 41) - 1);
    } else if (++g->counter > counter_max) {
        /* More ids in one ms than the counter holds: borrow the next ms. */
        g->last_ms++;
        g->counter = 0;
    }
    uint64_t ms = g->last_ms, counter = g->counter, rand = xorshift(&g->rng_state);
    out[0] = (uint8_t)(ms >> 40);
    out[1] = (uint8_t)(ms >> 32);
    out[2] = (uint8_t)(ms >> 24);
    out[3] = (uint8_t)(ms >> 16);
    out[4] = (uint8_t)(ms >> 8);
    out[5] = (uint8_t)ms;
    /* version 7, then the top 12 bits of the counter (rand_a) */
    out[6] = (uint8_t)(0x70 | ((counter >> 38) & 0x0f));
    out[7] = (uint8_t)(counter >> 30);
    /* variant 10, then the low 30 bits of the counter, then 32 random bits (rand_b) */
    out[8] = (uint8_t)(0x80 | ((counter >> 24) & 0x3f));
    out[9] = (uint8_t)(counter >> 16);
    out[10] = (uint8_t)(counter >> 8);
    out[11] = (uint8_t)counter;
    out[12] = (uint8_t)(rand >> 24);
    out[13] = (uint8_t)(rand >> 16);
    out[14] = (uint8_t)(rand >> 8);
    out[15] = (uint8_t)rand;
}

bool uuid_v7_time(const uint8_t id[16], uint64_t *ms)
{
    if ((id[6] >> 4) != 7 || (id[8] & 0xc0) != 0x80)
        return false;
    uint64_t v = 0;
    for (int i = 0; i < 6; i++)
        v = (v << 8) | id[i];
    *ms = v;
    return true;
}
