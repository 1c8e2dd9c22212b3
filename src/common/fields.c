/* fields: see fields.h. */
#include "fields.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "utf8.h"
#include "uuid.h"

#define TS_MIN_MS FIELDS_TS_MIN_MS
#define TS_MAX_MS FIELDS_TS_MAX_MS

bool fields_error(struct rpc_error *err, const char *field, const char *fmt, ...)
{
    err->code = RPC_INVALID_FIELD;
    err->retry_after_ms = 0;
    err->index = -1;
    snprintf(err->field_name, sizeof(err->field_name), "%s", field);
    err->field = err->field_name;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    return false;
}

/* Whether a spec is named key. Names are a few bytes long: compared here rather than by a call
 * to memcmp. */
static bool named(const struct fields_spec *f, const msgpack_object_str *key)
{
    if (f->name_len != key->size)
        return false;
    for (uint32_t i = 0; i < key->size; i++)
        if (f->name[i] != key->ptr[i])
            return false;
    return true;
}

/* The spec named key, looked for from `from` on, round the table: keys mostly come in the
 * table's order, so the one after the last found is tried first. */
static int find_spec(const struct fields_table *t, const msgpack_object_str *key, int from)
{
    if (key->size == 0)
        return -1;
    for (int n = 0, i = from; n < t->nspecs; n++, i = i + 1 < t->nspecs ? i + 1 : 0)
        if (named(&t->specs[i], key))
            return i;
    return -1;
}

/* fields_collect's reading of the keys: values[i] is set for the fields given and not nil, which
 * *present has bit i for; the others are left as they were. */
static bool collect(const struct fields_table *t, const msgpack_object_map *map,
                    const msgpack_object **values, uint32_t *present, struct rpc_error *err)
{
    uint32_t seen = 0, with_value = 0;
    int next = 0;
    for (uint32_t k = 0; k < map->size; k++) {
        const msgpack_object *key = &map->ptr[k].key;
        if (key->type != MSGPACK_OBJECT_STR)
            return fields_error(err, "", "%s",
                                t->unknown ? t->unknown : "field names must be strings");
        int idx = find_spec(t, &key->via.str, next);
        if (idx < 0) {
            char name[64];
            size_t n = key->via.str.size < sizeof(name) - 1 ? key->via.str.size : sizeof(name) - 1;
            memcpy(name, key->via.str.ptr, n);
            name[n] = '\0';
            /* The name goes back to the client as it came, valid UTF-8 or not: cut it to
             * ASCII-safe bytes so that the error itself is valid. */
            for (size_t c = 0; c < n; c++)
                if ((unsigned char)name[c] < 0x20 || (unsigned char)name[c] > 0x7e)
                    name[c] = '?';
            if (t->unknown)
                return fields_error(err, name, "%s", t->unknown);
            return fields_error(err, name, "unknown field %s", name);
        }
        uint32_t bit = 1u << idx;
        if (seen & bit)
            return fields_error(err, t->specs[idx].name, "%s is given twice", t->specs[idx].name);
        seen |= bit;
        next = idx + 1 < t->nspecs ? idx + 1 : 0;
        /* nil is absent: a client may send every key and leave some empty. */
        const msgpack_object *v = &map->ptr[k].val;
        if (v->type != MSGPACK_OBJECT_NIL) {
            values[idx] = v;
            with_value |= bit;
        }
    }
    *present = with_value;
    return true;
}

static bool missing(const struct fields_spec *f, struct rpc_error *err)
{
    return fields_error(err, f->name, "%s is required", f->name);
}

bool fields_collect(const struct fields_table *t, const msgpack_object_map *map,
                    const msgpack_object **values, struct rpc_error *err)
{
    for (int i = 0; i < t->nspecs; i++)
        values[i] = NULL;
    uint32_t present;
    if (!collect(t, map, values, &present, err))
        return false;
    for (int i = 0; i < t->nspecs; i++)
        if (t->specs[i].required && !(present >> i & 1))
            return missing(&t->specs[i], err);
    return true;
}

static bool get_int(const msgpack_object *v, int64_t *out)
{
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (v->via.u64 > INT64_MAX)
            return false;
        *out = (int64_t)v->via.u64;
        return true;
    }
    if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = v->via.i64;
        return true;
    }
    return false;
}

/* A timestamp extension (type -1: 32, 64 or 96 bits) or integer ms, to microseconds. */
static bool parse_timestamp(const msgpack_object *v, int64_t *unix_us)
{
    int64_t ms;
    if (get_int(v, &ms)) {
        if (ms < TS_MIN_MS || ms > TS_MAX_MS)
            return false;
        *unix_us = ms * 1000;
        return true;
    }
    if (v->type != MSGPACK_OBJECT_EXT || v->via.ext.type != -1)
        return false;
    const uint8_t *p = (const uint8_t *)v->via.ext.ptr;
    int64_t sec;
    uint32_t nsec;
    switch (v->via.ext.size) {
    case 4:
        sec = (int64_t)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]);
        nsec = 0;
        break;
    case 8: {
        uint64_t d = 0;
        for (int i = 0; i < 8; i++)
            d = d << 8 | p[i];
        nsec = (uint32_t)(d >> 34);
        sec = (int64_t)(d & 0x3ffffffffULL);
        break;
    }
    case 12: {
        nsec = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
        uint64_t s = 0;
        for (int i = 4; i < 12; i++)
            s = s << 8 | p[i];
        sec = (int64_t)s;
        break;
    }
    default:
        return false;
    }
    if (nsec > 999999999u || sec < TS_MIN_MS / 1000 || sec > TS_MAX_MS / 1000)
        return false;
    *unix_us = sec * 1000000 + nsec / 1000;
    return true;
}

size_t fields_double_to_decimal(double d, bool single, char *out, size_t cap)
{
    /* %g drops trailing zeros: the first precision that reads back is the shortest text. */
    for (int prec = single ? 6 : 15; prec <= (single ? 9 : 17); prec++) {
        int n = snprintf(out, cap, "%.*g", prec, d);
        if (n > 0 && (single ? strtof(out, NULL) == (float)d : strtod(out, NULL) == d)) {
            /* %g may use an exponent; expand it so that a numeric reader can take it. */
            if (strchr(out, 'e')) {
                int decimals = 0;
                const char *e = strchr(out, 'e');
                int exp = atoi(e + 1);
                const char *dot = strchr(out, '.');
                int mant_decimals = dot && dot < e ? (int)(e - dot - 1) : 0;
                decimals = mant_decimals - exp;
                if (decimals < 0)
                    decimals = 0;
                if (decimals > 40)
                    return 0;
                n = snprintf(out, cap, "%.*f", decimals, d);
            }
            return n > 0 && (size_t)n < cap ? (size_t)n : 0;
        }
    }
    return 0;
}

/* The kind's own message, or the spec's in its place. */
#define BAD(f, err, ...)                                                                           \
    ((f)->invalid ? fields_error(err, (f)->name, "%s", (f)->invalid)                               \
                  : fields_error(err, (f)->name, __VA_ARGS__))

static bool read_choice(const struct fields_spec *f, const msgpack_object *v,
                        struct fields_value *out, struct rpc_error *err)
{
    if (v->type == MSGPACK_OBJECT_STR) {
        for (uint32_t k = 0; f->choices[k]; k++) {
            size_t len = strlen(f->choices[k]);
            if (v->via.str.size == len && memcmp(v->via.str.ptr, f->choices[k], len) == 0) {
                out->text.ptr = f->choices[k];
                out->text.len = len;
                out->choice = k;
                return true;
            }
        }
    }
    if (f->invalid)
        return fields_error(err, f->name, "%s", f->invalid);
    /* "NAME must be a, b or c" */
    char list[160];
    size_t at = 0;
    for (uint32_t k = 0; f->choices[k] && at < sizeof(list); k++) {
        const char *sep = k == 0 ? "" : f->choices[k + 1] ? ", " : " or ";
        int n = snprintf(list + at, sizeof(list) - at, "%s%s", sep, f->choices[k]);
        if (n < 0)
            break;
        at += (size_t)n;
    }
    return fields_error(err, f->name, "%s must be %s", f->name, list);
}

static bool read_decimal(const struct fields_spec *f, const msgpack_object *v,
                         struct fields_value *out, struct rpc_error *err)
{
    char *text = out->decimal.text;
    size_t cap = sizeof(out->decimal.text);
    int64_t i;
    if (get_int(v, &i)) {
        if (i < 0)
            return BAD(f, err, "%s must be >= 0", f->name);
        out->decimal.len = (size_t)snprintf(text, cap, "%lld", (long long)i);
    } else if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) { /* above INT64_MAX */
        out->decimal.len = (size_t)snprintf(text, cap, "%llu", (unsigned long long)v->via.u64);
    } else if (v->type == MSGPACK_OBJECT_FLOAT32 || v->type == MSGPACK_OBJECT_FLOAT64) {
        if (!isfinite(v->via.f64) || v->via.f64 < 0)
            return BAD(f, err, "%s must be a finite number >= 0", f->name);
        out->decimal.len =
            fields_double_to_decimal(v->via.f64, v->type == MSGPACK_OBJECT_FLOAT32, text, cap);
        if (out->decimal.len == 0)
            return BAD(f, err, "%s cannot be represented", f->name);
    } else if (v->type == MSGPACK_OBJECT_STR) {
        if (v->via.str.size == 0 || v->via.str.size > 64 || v->via.str.ptr[0] == '-')
            return BAD(f, err, "%s must be a decimal string >= 0 of at most 64 characters",
                       f->name);
        memcpy(text, v->via.str.ptr, v->via.str.size);
        text[v->via.str.size] = '\0';
        out->decimal.len = v->via.str.size;
    } else {
        return BAD(f, err, "%s must be a number or a decimal string", f->name);
    }
    return true;
}

bool fields_value(const struct fields_spec *f, const msgpack_object *v, struct fields_value *out,
                  struct rpc_error *err)
{
    int64_t i;
    size_t chars;
    switch (f->kind) {
    case FIELDS_UUID:
        if (v->type == MSGPACK_OBJECT_STR && uuid_parse(v->via.str.ptr, v->via.str.size, out->uuid))
            return true;
        if (v->type == MSGPACK_OBJECT_BIN && v->via.bin.size == 16) {
            memcpy(out->uuid, v->via.bin.ptr, 16);
            return true;
        }
        return BAD(f, err, "%s must be a uuid (36-char string or 16-byte bin)", f->name);
    case FIELDS_TEXT:
        if (v->type != MSGPACK_OBJECT_STR)
            return BAD(f, err, "%s must be a string", f->name);
        if (!utf8_valid(v->via.str.ptr, v->via.str.size, &chars))
            return BAD(f, err, "%s must be valid UTF-8 without NUL", f->name);
        if (chars < f->min_chars)
            return BAD(f, err, "%s must not be empty", f->name);
        if (f->max_chars && chars > f->max_chars)
            return BAD(f, err, "%s is longer than %u characters", f->name, f->max_chars);
        out->text.ptr = v->via.str.ptr;
        out->text.len = v->via.str.size;
        return true;
    case FIELDS_INT:
        if (!get_int(v, &i))
            return BAD(f, err, "%s must be an integer", f->name);
        if (i < f->min || i > f->max)
            return BAD(f, err, "%s must be between %lld and %lld", f->name, (long long)f->min,
                       (long long)f->max);
        out->i = i;
        return true;
    case FIELDS_FLOAT:
        if (get_int(v, &i))
            out->d = (double)i;
        else if (v->type == MSGPACK_OBJECT_FLOAT32 || v->type == MSGPACK_OBJECT_FLOAT64)
            out->d = v->via.f64;
        else
            return BAD(f, err, "%s must be a number", f->name);
        if (!isfinite(out->d) || out->d < (double)f->min || out->d > (double)f->max)
            return BAD(f, err, "%s must be between %lld and %lld", f->name, (long long)f->min,
                       (long long)f->max);
        return true;
    case FIELDS_DECIMAL:
        return read_decimal(f, v, out, err);
    case FIELDS_BOOL:
        if (v->type != MSGPACK_OBJECT_BOOLEAN)
            return BAD(f, err, "%s must be true or false", f->name);
        out->b = v->via.boolean;
        return true;
    case FIELDS_TIMESTAMP:
        if (parse_timestamp(v, &out->unix_us))
            return true;
        return BAD(f, err, "%s must be a timestamp (ext -1) or integer ms between years 1 and 9999",
                   f->name);
    case FIELDS_CHOICE:
        return read_choice(f, v, out, err);
    }
    return fields_error(err, f->name, "%s: unsupported field", f->name);
}

bool fields_parse(const struct fields_table *t, const msgpack_object_map *map,
                  struct fields_value *out, bool *given, struct rpc_error *err)
{
    /* fields_collect and the reading in one pass over the table: only the values of the fields
     * given are looked at, so they need no clearing first. */
    const msgpack_object *values[FIELDS_MAX];
    uint32_t present;
    if (!collect(t, map, values, &present, err))
        return false;
    for (int i = 0; i < t->nspecs; i++) {
        given[i] = present >> i & 1;
        if (t->specs[i].required && !given[i])
            return missing(&t->specs[i], err);
    }
    for (uint32_t rest = present; rest; rest &= rest - 1) {
        int i = __builtin_ctz(rest);
        if (!fields_value(&t->specs[i], values[i], &out[i], err))
            return false;
    }
    return true;
}
