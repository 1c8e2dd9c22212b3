/* buf: see buf.h. */
#include "buf.h"

#include "xalloc.h"

#include <stdlib.h>

void buf_init(struct buf *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void buf_free(struct buf *b)
{
    free(b->data);
    buf_init(b);
}

uint8_t *buf_reserve(struct buf *b, size_t extra)
{
    if (b->cap - b->len < extra) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->len < extra)
            cap *= 2;
        b->data = xrealloc(b->data, cap);
        b->cap = cap;
    }
    return b->data + b->len;
}

void buf_append(struct buf *b, const void *data, size_t len)
{
    if (len == 0)
        return;
    memcpy(buf_reserve(b, len), data, len);
    b->len += len;
}

uint8_t *buf_steal(struct buf *b, size_t *len)
{
    uint8_t *data = b->data;
    *len = b->len;
    buf_init(b);
    return data;
}

void buf_consume(struct buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

int buf_msgpack_write(void *data, const char *bytes, size_t len)
{
    buf_append(data, bytes, len);
    return 0;
}

size_t fmt_u64_digits(char *dst, uint64_t v)
{
    /* Two digits per division, written from the end once the length is known: the check path
     * formats about ten numbers per check. */
    static const char pairs[] = "0001020304050607080910111213141516171819"
                                "2021222324252627282930313233343536373839"
                                "4041424344454647484950515253545556575859"
                                "6061626364656667686970717273747576777879"
                                "8081828384858687888990919293949596979899";
    if (v < 10) {
        dst[0] = (char)('0' + v);
        return 1;
    }
    if (v < 100) {
        dst[0] = pairs[2 * v];
        dst[1] = pairs[2 * v + 1];
        return 2;
    }
    /* The number of digits without a loop: bits * log10(2) (1233 / 4096) is the count of the
     * power of ten at or below 2^bits, one short when v reaches the next power. */
    static const uint64_t powers[20] = {1ULL,
                                        10ULL,
                                        100ULL,
                                        1000ULL,
                                        10000ULL,
                                        100000ULL,
                                        1000000ULL,
                                        10000000ULL,
                                        100000000ULL,
                                        1000000000ULL,
                                        10000000000ULL,
                                        100000000000ULL,
                                        1000000000000ULL,
                                        10000000000000ULL,
                                        100000000000000ULL,
                                        1000000000000000ULL,
                                        10000000000000000ULL,
                                        100000000000000000ULL,
                                        1000000000000000000ULL,
                                        10000000000000000000ULL};
    size_t t = ((size_t)(64 - __builtin_clzll(v)) * 1233) >> 12;
    size_t n = t + (v >= powers[t]);
    char *p = dst + n;
    while (v > UINT32_MAX) {
        const char *d = pairs + 2 * (v % 100);
        v /= 100;
        *--p = d[1];
        *--p = d[0];
    }
    /* The rest in 32 bits, where dividing by 100 is cheaper. */
    uint32_t w = (uint32_t)v;
    while (w >= 100) {
        const char *d = pairs + 2 * (w % 100);
        w /= 100;
        *--p = d[1];
        *--p = d[0];
    }
    if (w >= 10) {
        *--p = pairs[2 * w + 1];
        *--p = pairs[2 * w];
    } else {
        *--p = (char)('0' + w);
    }
    return n;
}

size_t fmt_i64(char *dst, int64_t v)
{
    if (v >= 0)
        return fmt_u64(dst, (uint64_t)v);
    dst[0] = '-';
    return 1 + fmt_u64(dst + 1, (uint64_t)0 - (uint64_t)v);
}
