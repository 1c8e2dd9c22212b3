/* frame: finds where each MessagePack message ends in a byte stream, and refuses a message that
 * is over the size budget or declares an array, map, str, bin or ext that could not fit in what is
 * left of it, before any decoder sees its bytes.
 *
 * msgpack-c allocates room for a container's declared element count as soon as it reads the
 * header, so a 5-byte message declaring 2^30 elements would make it ask for tens of GiB. The
 * scanner walks headers only (no allocation, constant state), resumes where it stopped when more
 * bytes arrive, and lets the caller hand msgpack-c complete messages alone: what msgpack-c then
 * allocates is bounded by bytes actually received. Pure: memory in, verdict out. */
#ifndef USAGED_FRAME_H
#define USAGED_FRAME_H

#include <stddef.h>
#include <stdint.h>

/* msgpack-c's own parser refuses deeper nesting (MSGPACK_EMBED_STACK_SIZE). */
#define FRAME_MAX_DEPTH 32

enum frame_status {
    FRAME_NEED_MORE = 0, /* the message is not complete yet */
    FRAME_COMPLETE,      /* a whole message is data[0 .. frame_length) */
    FRAME_TOO_LARGE,     /* over the budget, or a declared size that cannot fit in it */
    FRAME_INVALID,       /* a byte that starts no MessagePack object (0xc1) */
    FRAME_TOO_DEEP,      /* nested deeper than FRAME_MAX_DEPTH */
};

struct frame_scanner {
    size_t max_bytes;                    /* the budget of one message, in bytes */
    size_t pos;                          /* bytes of the current message scanned so far */
    size_t skip;                         /* payload bytes of a str/bin/ext still to pass over */
    uint32_t depth;                      /* containers open */
    uint64_t remaining[FRAME_MAX_DEPTH]; /* elements still expected in each open container */
};

void frame_init(struct frame_scanner *s, size_t max_bytes);
/* Forgets the current message; the next scan starts a new one. */
void frame_reset(struct frame_scanner *s);
/* Scans data[0 .. len), where data[0] is the first byte of the current message and every byte
 * scanned by earlier calls is unchanged. Resumes after the bytes already scanned. */
enum frame_status frame_scan(struct frame_scanner *s, const uint8_t *data, size_t len);
/* After FRAME_COMPLETE: the message's length in bytes. */
static inline size_t frame_length(const struct frame_scanner *s)
{
    return s->pos;
}

#endif
