/* uuid: see uuid.h. */
#include "uuid.h"

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

bool uuid_parse(const char *s, size_t len, uint8_t out[16])
{
    if (len != UUID_STRING_LEN)
        return false;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
            i++;
            continue;
        }
        int hi = hex_value(s[i]), lo = hex_value(s[i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[o++] = (uint8_t)(hi << 4 | lo);
        i += 2;
    }
    return o == 16;
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
