/* uuid: see uuid.h. */
#include "uuid.h"

/* Each byte as a hex digit plus 0x10, 0 for anything else: every check parses a user_id, so
 * this is a table, not a chain of comparisons. */
static const uint8_t hex_digit[256] = {
    ['0'] = 0x10, ['1'] = 0x11, ['2'] = 0x12, ['3'] = 0x13, ['4'] = 0x14, ['5'] = 0x15,
    ['6'] = 0x16, ['7'] = 0x17, ['8'] = 0x18, ['9'] = 0x19, ['a'] = 0x1a, ['b'] = 0x1b,
    ['c'] = 0x1c, ['d'] = 0x1d, ['e'] = 0x1e, ['f'] = 0x1f, ['A'] = 0x1a, ['B'] = 0x1b,
    ['C'] = 0x1c, ['D'] = 0x1d, ['E'] = 0x1e, ['F'] = 0x1f,
};

bool uuid_parse(const char *s, size_t len, uint8_t out[16])
{
    /* Where each byte's two digits begin in 8-4-4-4-12. */
    static const uint8_t at[16] = {0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34};
    if (len != UUID_STRING_LEN || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-')
        return false;
    /* The table holds digit + 0x10, so that 0 marks a non-digit: all are digits when every
     * entry has that bit. */
    unsigned all = 0x10;
    for (int i = 0; i < 16; i++) {
        unsigned hi = hex_digit[(unsigned char)s[at[i]]];
        unsigned lo = hex_digit[(unsigned char)s[at[i] + 1]];
        all &= hi & lo;
        out[i] = (uint8_t)((hi & 0xf) << 4 | (lo & 0xf));
    }
    return all != 0;
}

void uuid_format(const uint8_t id[16], char *out)
{
    static const char digits[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = digits[id[i] >> 4];
        out[o++] = digits[id[i] & 15];
    }
    out[o] = '\0';
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
