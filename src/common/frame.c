/* frame: see frame.h. */
#include "frame.h"

#include <stdbool.h>

void frame_init(struct frame_scanner *s, size_t max_bytes)
{
    s->max_bytes = max_bytes;
    frame_reset(s);
}

void frame_reset(struct frame_scanner *s)
{
    s->pos = 0;
    s->skip = 0;
    s->depth = 0;
}

static uint64_t read_be(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* What one header byte says: how many bytes the header takes (including the type byte), how many
 * of them hold a length or count (at the end of the header), and what follows. */
enum item_kind { ITEM_SCALAR, ITEM_PAYLOAD, ITEM_ARRAY, ITEM_MAP, ITEM_INVALID };

struct item_header {
    enum item_kind kind;
    unsigned size;       /* header bytes, type byte included */
    unsigned len_bytes;  /* bytes of the header holding the big-endian length or count */
    unsigned len_offset; /* where they start in the header */
    uint64_t inline_len; /* length or count carried by the type byte itself (fix types) */
};

static struct item_header classify(uint8_t b)
{
    struct item_header h = {ITEM_SCALAR, 1, 0, 0, 0};
    if (b <= 0x7f || b >= 0xe0)
        return h; /* positive and negative fixint */
    if (b >= 0x80 && b <= 0x8f)
        return (struct item_header){ITEM_MAP, 1, 0, 0, b & 0x0fu};
    if (b >= 0x90 && b <= 0x9f)
        return (struct item_header){ITEM_ARRAY, 1, 0, 0, b & 0x0fu};
    if (b >= 0xa0 && b <= 0xbf)
        return (struct item_header){ITEM_PAYLOAD, 1, 0, 0, b & 0x1fu};
    switch (b) {
    case 0xc0: /* nil */
    case 0xc2: /* false */
    case 0xc3: /* true */
        return h;
    case 0xc4: /* bin 8 */
    case 0xd9: /* str 8 */
        return (struct item_header){ITEM_PAYLOAD, 2, 1, 1, 0};
    case 0xc5: /* bin 16 */
    case 0xda: /* str 16 */
        return (struct item_header){ITEM_PAYLOAD, 3, 2, 1, 0};
    case 0xc6: /* bin 32 */
    case 0xdb: /* str 32 */
        return (struct item_header){ITEM_PAYLOAD, 5, 4, 1, 0};
    case 0xc7: /* ext 8: length, then type */
        return (struct item_header){ITEM_PAYLOAD, 3, 1, 1, 0};
    case 0xc8: /* ext 16 */
        return (struct item_header){ITEM_PAYLOAD, 4, 2, 1, 0};
    case 0xc9: /* ext 32 */
        return (struct item_header){ITEM_PAYLOAD, 6, 4, 1, 0};
    case 0xca: /* float 32 */
        return (struct item_header){ITEM_SCALAR, 5, 0, 0, 0};
    case 0xcb: /* float 64 */
        return (struct item_header){ITEM_SCALAR, 9, 0, 0, 0};
    case 0xcc: /* uint 8 */
    case 0xd0: /* int 8 */
        return (struct item_header){ITEM_SCALAR, 2, 0, 0, 0};
    case 0xcd:
    case 0xd1:
        return (struct item_header){ITEM_SCALAR, 3, 0, 0, 0};
    case 0xce:
    case 0xd2:
        return (struct item_header){ITEM_SCALAR, 5, 0, 0, 0};
    case 0xcf:
    case 0xd3:
        return (struct item_header){ITEM_SCALAR, 9, 0, 0, 0};
    case 0xd4: /* fixext 1, 2, 4, 8, 16: type byte and data */
        return (struct item_header){ITEM_SCALAR, 3, 0, 0, 0};
    case 0xd5:
        return (struct item_header){ITEM_SCALAR, 4, 0, 0, 0};
    case 0xd6:
        return (struct item_header){ITEM_SCALAR, 6, 0, 0, 0};
    case 0xd7:
        return (struct item_header){ITEM_SCALAR, 10, 0, 0, 0};
    case 0xd8:
        return (struct item_header){ITEM_SCALAR, 18, 0, 0, 0};
    case 0xdc: /* array 16 */
        return (struct item_header){ITEM_ARRAY, 3, 2, 1, 0};
    case 0xdd: /* array 32 */
        return (struct item_header){ITEM_ARRAY, 5, 4, 1, 0};
    case 0xde: /* map 16 */
        return (struct item_header){ITEM_MAP, 3, 2, 1, 0};
    case 0xdf: /* map 32 */
        return (struct item_header){ITEM_MAP, 5, 4, 1, 0};
    default: /* 0xc1 is never used */
        return (struct item_header){ITEM_INVALID, 1, 0, 0, 0};
    }
}

/* True when `need` more bytes fit in the budget after the first `used` bytes. */
static bool fits(const struct frame_scanner *s, size_t used, uint64_t need)
{
    return used <= s->max_bytes && need <= s->max_bytes - used;
}

/* One item (scalar, or a whole str/bin/ext) is complete: count it in its container and close
 * every container it completes. Returns true when the whole message is complete. */
static bool item_done(struct frame_scanner *s)
{
    while (s->depth > 0) {
        if (--s->remaining[s->depth - 1] > 0)
            return false;
        s->depth--;
    }
    return true;
}

enum frame_status frame_scan(struct frame_scanner *s, const uint8_t *data, size_t len)
{
    for (;;) {
        if (s->skip > 0) {
            size_t avail = len - s->pos;
            if (avail < s->skip) {
                s->pos += avail;
                s->skip -= avail;
                return FRAME_NEED_MORE;
            }
            s->pos += s->skip;
            s->skip = 0;
            if (item_done(s))
                return FRAME_COMPLETE;
        }
        if (s->pos >= len)
            return FRAME_NEED_MORE;

        /* The commonest items, whole in the buffer: a positive fixint, a fixstr. The same checks
         * and steps as below, without the table and the skip. */
        uint8_t b = data[s->pos];
        if (b <= 0x7f || (b >= 0xa0 && b <= 0xbf && (size_t)(b & 0x1fu) < len - s->pos)) {
            size_t size = b <= 0x7f ? 1 : 1 + (size_t)(b & 0x1fu);
            if (!fits(s, s->pos, size))
                return FRAME_TOO_LARGE;
            s->pos += size;
            if (item_done(s))
                return FRAME_COMPLETE;
            continue;
        }
        struct item_header h = classify(b);
        if (h.kind == ITEM_INVALID)
            return FRAME_INVALID;
        if (len - s->pos < h.size)
            return FRAME_NEED_MORE; /* resume at this header when more bytes arrive */
        uint64_t n =
            h.len_bytes ? read_be(data + s->pos + h.len_offset, h.len_bytes) : h.inline_len;
        size_t after = s->pos + h.size;
        if (!fits(s, s->pos, h.size))
            return FRAME_TOO_LARGE;

        switch (h.kind) {
        case ITEM_SCALAR:
            s->pos = after;
            if (item_done(s))
                return FRAME_COMPLETE;
            break;
        case ITEM_PAYLOAD: {
            /* ext 8/16/32 carry a type byte after the length, counted in h.size already */
            if (!fits(s, after, n))
                return FRAME_TOO_LARGE;
            s->pos = after;
            s->skip = (size_t)n;
            if (n == 0 && item_done(s))
                return FRAME_COMPLETE;
            break;
        }
        case ITEM_ARRAY:
        case ITEM_MAP: {
            uint64_t elements = h.kind == ITEM_MAP ? 2 * n : n;
            if (!fits(s, after, elements))
                return FRAME_TOO_LARGE;
            /* msgpack-c counts even an empty container against its nesting limit. */
            if (s->depth == FRAME_MAX_DEPTH)
                return FRAME_TOO_DEEP;
            s->pos = after;
            if (elements == 0) {
                if (item_done(s))
                    return FRAME_COMPLETE;
                break;
            }
            s->remaining[s->depth++] = elements;
            break;
        }
        case ITEM_INVALID:
            return FRAME_INVALID;
        }
    }
}
