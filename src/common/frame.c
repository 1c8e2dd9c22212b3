/* frame: see frame.h. */
#include "frame.h"

#include <stdbool.h>
#include <string.h>

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

/* ---- decoding a whole message ---- */

struct decoder {
    const uint8_t *p, *end;
    msgpack_zone *zone;
};

/* The next n bytes, or NULL when the message does not hold them. */
static const uint8_t *take(struct decoder *d, size_t n)
{
    if ((size_t)(d->end - d->p) < n)
        return NULL;
    const uint8_t *at = d->p;
    d->p += n;
    return at;
}

static bool decode(struct decoder *d, msgpack_object *o, unsigned depth);

/* A container of n elements (2n for a map), opened with `depth` containers around it. Each
 * element takes a byte at least: a count the bytes left cannot hold is refused before any
 * allocation, so what the zone gives is bounded by the message's length. */
static bool decode_container(struct decoder *d, msgpack_object *o, uint64_t n, bool map,
                             unsigned depth)
{
    if (depth == FRAME_MAX_DEPTH || (map ? 2 * n : n) > (uint64_t)(d->end - d->p))
        return false;
    if (map) {
        msgpack_object_kv *kv = msgpack_zone_malloc(d->zone, (size_t)n * sizeof(*kv));
        if (!kv)
            return false;
        o->type = MSGPACK_OBJECT_MAP;
        o->via.map.size = (uint32_t)n;
        o->via.map.ptr = kv;
        for (uint64_t i = 0; i < n; i++)
            if (!decode(d, &kv[i].key, depth + 1) || !decode(d, &kv[i].val, depth + 1))
                return false;
        return true;
    }
    msgpack_object *e = msgpack_zone_malloc(d->zone, (size_t)n * sizeof(*e));
    if (!e)
        return false;
    o->type = MSGPACK_OBJECT_ARRAY;
    o->via.array.size = (uint32_t)n;
    o->via.array.ptr = e;
    for (uint64_t i = 0; i < n; i++)
        if (!decode(d, &e[i], depth + 1))
            return false;
    return true;
}

/* A str or bin of n bytes, pointing into the message as msgpack-c's does. */
static bool decode_bytes(struct decoder *d, msgpack_object *o, uint64_t n, msgpack_object_type t)
{
    const uint8_t *at = take(d, (size_t)n);
    if (!at)
        return false;
    o->type = t;
    o->via.str.size = (uint32_t)n; /* str and bin share their layout */
    o->via.str.ptr = (const char *)at;
    return true;
}

/* An ext of n data bytes after its type byte. */
static bool decode_ext(struct decoder *d, msgpack_object *o, uint64_t n)
{
    const uint8_t *at = take(d, (size_t)n + 1);
    if (!at)
        return false;
    o->type = MSGPACK_OBJECT_EXT;
    o->via.ext.type = (int8_t)at[0];
    o->via.ext.size = (uint32_t)n;
    o->via.ext.ptr = (const char *)at + 1;
    return true;
}

/* A length or count of n bytes, big-endian. */
static bool decode_count(struct decoder *d, unsigned n, uint64_t *out)
{
    const uint8_t *at = take(d, n);
    if (!at)
        return false;
    *out = read_be(at, n);
    return true;
}

static void set_int(msgpack_object *o, int64_t v)
{
    /* msgpack-c makes a signed encoding of a value >= 0 a positive integer. */
    if (v >= 0) {
        o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        o->via.u64 = (uint64_t)v;
    } else {
        o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
        o->via.i64 = v;
    }
}

static bool decode(struct decoder *d, msgpack_object *o, unsigned depth)
{
    if (d->p == d->end)
        return false;
    uint8_t b = *d->p++;
    if (b <= 0x7f) {
        o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        o->via.u64 = b;
        return true;
    }
    if (b >= 0xe0) {
        o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
        o->via.i64 = (int8_t)b;
        return true;
    }
    if (b >= 0xa0 && b <= 0xbf)
        return decode_bytes(d, o, b & 0x1fu, MSGPACK_OBJECT_STR);
    if (b <= 0x8f)
        return decode_container(d, o, b & 0x0fu, true, depth);
    if (b <= 0x9f)
        return decode_container(d, o, b & 0x0fu, false, depth);
    uint64_t n;
    const uint8_t *at;
    switch (b) {
    case 0xc0:
        o->type = MSGPACK_OBJECT_NIL;
        return true;
    case 0xc2:
    case 0xc3:
        o->type = MSGPACK_OBJECT_BOOLEAN;
        o->via.boolean = b == 0xc3;
        return true;
    case 0xc4: /* bin 8, 16, 32 */
    case 0xc5:
    case 0xc6:
        return decode_count(d, 1u << (b - 0xc4), &n) && decode_bytes(d, o, n, MSGPACK_OBJECT_BIN);
    case 0xc7: /* ext 8, 16, 32 */
    case 0xc8:
    case 0xc9:
        return decode_count(d, 1u << (b - 0xc7), &n) && decode_ext(d, o, n);
    case 0xca: { /* float 32 */
        if (!decode_count(d, 4, &n))
            return false;
        uint32_t bits = (uint32_t)n;
        float f;
        memcpy(&f, &bits, sizeof(f));
        o->type = MSGPACK_OBJECT_FLOAT32;
        o->via.f64 = f;
        return true;
    }
    case 0xcb: /* float 64 */
        if (!decode_count(d, 8, &n))
            return false;
        o->type = MSGPACK_OBJECT_FLOAT64;
        memcpy(&o->via.f64, &n, sizeof(o->via.f64));
        return true;
    case 0xcc: /* uint 8, 16, 32, 64 */
    case 0xcd:
    case 0xce:
    case 0xcf:
        if (!decode_count(d, 1u << (b - 0xcc), &n))
            return false;
        o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        o->via.u64 = n;
        return true;
    case 0xd0: /* int 8, 16, 32, 64 */
        if (!(at = take(d, 1)))
            return false;
        set_int(o, (int8_t)at[0]);
        return true;
    case 0xd1:
        if (!decode_count(d, 2, &n))
            return false;
        set_int(o, (int16_t)(uint16_t)n);
        return true;
    case 0xd2:
        if (!decode_count(d, 4, &n))
            return false;
        set_int(o, (int32_t)(uint32_t)n);
        return true;
    case 0xd3:
        if (!decode_count(d, 8, &n))
            return false;
        set_int(o, (int64_t)n);
        return true;
    case 0xd4: /* fixext 1, 2, 4, 8, 16 */
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8:
        return decode_ext(d, o, 1u << (b - 0xd4));
    case 0xd9: /* str 8, 16, 32 */
    case 0xda:
    case 0xdb:
        return decode_count(d, 1u << (b - 0xd9), &n) && decode_bytes(d, o, n, MSGPACK_OBJECT_STR);
    case 0xdc: /* array 16, 32 */
    case 0xdd:
        return decode_count(d, 2u << (b - 0xdc), &n) && decode_container(d, o, n, false, depth);
    case 0xde: /* map 16, 32 */
    case 0xdf:
        return decode_count(d, 2u << (b - 0xde), &n) && decode_container(d, o, n, true, depth);
    default: /* 0xc1 is never used */
        return false;
    }
}

bool frame_decode(const uint8_t *data, size_t len, msgpack_zone *zone, msgpack_object *out,
                  size_t *used)
{
    struct decoder d = {data, data + len, zone};
    if (!decode(&d, out, 0))
        return false;
    *used = (size_t)(d.p - data);
    return true;
}
