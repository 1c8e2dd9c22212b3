/* buf: a growable byte buffer, the one piece of memory plumbing the encoders and connections
 * share. Growth doubles, so appending n bytes one at a time costs O(n) in all. Allocation failure
 * is fatal (xalloc.h): the daemon bounds every buffer by configuration instead of recovering from
 * an exhausted heap. */
#ifndef USAGED_BUF_H
#define USAGED_BUF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct buf {
    uint8_t *data;
    size_t len; /* bytes in use */
    size_t cap; /* bytes allocated */
};

void buf_init(struct buf *b);
void buf_free(struct buf *b);
/* Makes room for at least `extra` more bytes; returns a pointer to the first free byte. */
uint8_t *buf_reserve(struct buf *b, size_t extra);
void buf_append(struct buf *b, const void *data, size_t len);
/* Hands the allocation to the caller (who frees it with free()) and leaves b empty. */
uint8_t *buf_steal(struct buf *b, size_t *len);
/* Drops the first n bytes, keeping the rest. */
void buf_consume(struct buf *b, size_t n);

/* Writes v in decimal at dst (up to 20 bytes; 21 for a negative one, no NUL); returns the
 * length. For the hot paths that format numbers by the thousand, where snprintf's generality
 * showed up in the profiles. */
size_t fmt_u64_digits(char *dst, uint64_t v);
/* Most numbers formatted on the check path are one digit: those take no call. */
static inline size_t fmt_u64(char *dst, uint64_t v)
{
    if (v < 10) {
        dst[0] = (char)('0' + v);
        return 1;
    }
    return fmt_u64_digits(dst, v);
}
size_t fmt_i64(char *dst, int64_t v);

static inline void buf_clear(struct buf *b)
{
    b->len = 0;
}

static inline void buf_put_u8(struct buf *b, uint8_t v)
{
    if (b->len == b->cap)
        buf_reserve(b, 1);
    b->data[b->len++] = v;
}

static inline void buf_put_be16(struct buf *b, uint16_t v)
{
    uint8_t *p = buf_reserve(b, 2);
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
    b->len += 2;
}

static inline void buf_put_be32(struct buf *b, uint32_t v)
{
    uint8_t *p = buf_reserve(b, 4);
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
    b->len += 4;
}

static inline void buf_put_be64(struct buf *b, uint64_t v)
{
    buf_put_be32(b, (uint32_t)(v >> 32));
    buf_put_be32(b, (uint32_t)v);
}

/* The msgpack_packer write callback: packs straight into a buf. */
int buf_msgpack_write(void *data, const char *bytes, size_t len);

#endif
