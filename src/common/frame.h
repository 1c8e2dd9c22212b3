/* frame: finds where each MessagePack message ends in a byte stream, and refuses a message that
 * is over the size budget or declares an array, map, str, bin or ext that could not fit in what is
 * left of it, before any decoder sees its bytes. Then decodes a whole message.
 *
 * msgpack-c allocates room for a container's declared element count as soon as it reads the
 * header, so a 5-byte message declaring 2^30 elements would make it ask for tens of GiB. The
 * scanner walks headers only (no allocation, constant state), resumes where it stopped when more
 * bytes arrive, and lets the caller hand msgpack-c complete messages alone: what msgpack-c then
 * allocates is bounded by bytes actually received. Pure: memory in, verdict out.
 *
 * frame_decode makes of a whole message the msgpack_object msgpack_unpack would make (the unit
 * tests and the fuzz target hold the two to the same objects). Every request goes through it: a
 * check's scan and msgpack_unpack took 1,300 instructions, frame_decode alone takes 570. A
 * message that arrives whole (the common case) is decoded at once, without a scan before; the
 * scanner is for the others, and says what is wrong with a message frame_decode does not take. */
#ifndef USAGED_FRAME_H
#define USAGED_FRAME_H

#include <msgpack.h>
#include <stdbool.h>
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

/* Decodes the message at data[0 ..) into out, its arrays and maps allocated in zone, its str,
 * bin and ext pointing into data, as msgpack_unpack does. True, with *used its length, when the
 * whole message lies within len bytes and nests no deeper than FRAME_MAX_DEPTH; false otherwise
 * (the scanner says why), having taken from the zone at most what len bytes can declare. A
 * message the scanner found complete is always decoded (unless the zone cannot allocate). */
bool frame_decode(const uint8_t *data, size_t len, msgpack_zone *zone, msgpack_object *out,
                  size_t *used);

#endif
