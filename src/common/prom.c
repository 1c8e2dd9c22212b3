/* prom: see prom.h.
 *
 * The walk collects every sample first (family, labels, value, the path it came from) and prints
 * afterwards, family by family in the order each family first appeared. That second pass is what
 * keeps a family's samples together, which the format requires: under a label section the walk
 * meets api_usage_logs' rows_written and prompt_history's rows_written with other figures in
 * between. */
#include "prom.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

#define PROM_MAX_DEPTH 16        /* deeper maps are left out; stats nests three levels */
#define PROM_MAX_LABEL_VALUE 256 /* bytes of a string leaf kept as a label value */

/* Sections whose keys are names (of error codes, tables, views, providers), not figures. */
static const struct prom_label_section {
    const char *key;
    const char *label;
} prom_label_sections[] = {
    {"errors", "code"},          {"dropped_notifications", "code"},
    {"events_rejected", "code"}, {"tables", "table"},
    {"views", "view"},           {"providers", "provider"},
    {"denied", "reason"},        {"shadow_denied_rules", "rule"},
};

struct prom_sample {
    char *family; /* metric name */
    char *labels; /* rendered pairs without the braces; "" when none */
    char *help;   /* the path in the stats map */
    char value[48];
    bool printed;
};

struct prom_walk {
    struct prom_sample *samples;
    size_t count, cap;
    struct buf name;   /* the metric name so far */
    struct buf labels; /* the label pairs so far */
    struct buf path;   /* the dotted path so far */
};

static void append_printf(struct buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void append_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n <= 0)
        return;
    char *p = (char *)buf_reserve(b, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static void append_str(struct buf *b, const char *s)
{
    buf_append(b, s, strlen(s));
}

static bool is_name_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '_';
}

/* Appends a map key as part of a metric or label name. */
static void append_sanitized(struct buf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        buf_put_u8(b, is_name_char(s[i]) ? (uint8_t)s[i] : '_');
}

/* Appends a label value, escaped as the format says, cut at `max` bytes on a UTF-8 boundary. */
static void append_label_value(struct buf *b, const char *s, size_t n, size_t max)
{
    if (n > max) {
        n = max;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\')
            append_str(b, "\\\\");
        else if (s[i] == '"')
            append_str(b, "\\\"");
        else if (s[i] == '\n')
            append_str(b, "\\n");
        else
            buf_put_u8(b, (uint8_t)s[i]);
    }
}

static const char *label_for(const msgpack_object_str *key)
{
    for (size_t i = 0; i < sizeof(prom_label_sections) / sizeof(prom_label_sections[0]); i++) {
        const char *k = prom_label_sections[i].key;
        if (strlen(k) == key->size && memcmp(k, key->ptr, key->size) == 0)
            return prom_label_sections[i].label;
    }
    return NULL;
}

/* True when the labels so far already hold a pair named `name` (len bytes). */
static bool has_label(const struct buf *labels, const char *name, size_t len)
{
    size_t i = 0;
    while (i + len < labels->len) {
        if (memcmp(labels->data + i, name, len) == 0 && labels->data[i + len] == '=')
            return true;
        /* Skip to the next pair: past the closing quote of this value. */
        const uint8_t *q = memchr(labels->data + i, '"', labels->len - i);
        if (!q)
            return false;
        size_t j = (size_t)(q - labels->data) + 1;
        while (j < labels->len && labels->data[j] != '"')
            j += labels->data[j] == '\\' ? 2 : 1;
        i = j + 2; /* the quote and the comma */
    }
    return false;
}

static void add_label(struct buf *labels, const char *name, size_t len, const char *value,
                      size_t vlen)
{
    if (labels->len)
        buf_put_u8(labels, ',');
    buf_append(labels, name, len);
    append_str(labels, "=\"");
    append_label_value(labels, value, vlen, PROM_MAX_LABEL_VALUE);
    buf_put_u8(labels, '"');
}

static char *dup_buf(const struct buf *b)
{
    return xstrndup(b->len ? (const char *)b->data : "", b->len);
}

static void add_sample(struct prom_walk *w, const char *suffix, const char *value)
{
    if (w->count == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 64;
        w->samples = xrealloc(w->samples, w->cap * sizeof(*w->samples));
    }
    struct prom_sample *s = &w->samples[w->count++];
    size_t len = w->name.len;
    append_str(&w->name, suffix);
    s->family = dup_buf(&w->name);
    w->name.len = len;
    s->labels = dup_buf(&w->labels);
    s->help = dup_buf(&w->path);
    snprintf(s->value, sizeof(s->value), "%s", value);
    s->printed = false;
}

static void format_double(char *out, size_t cap, double v)
{
    if (isnan(v))
        snprintf(out, cap, "NaN");
    else if (isinf(v))
        snprintf(out, cap, "%s", v > 0 ? "+Inf" : "-Inf");
    else
        snprintf(out, cap, "%.17g", v);
}

static void walk_map(struct prom_walk *w, const msgpack_object_map *map, int depth);

/* A string leaf: an info sample that carries it as the label named after its key. */
static void walk_string(struct prom_walk *w, const msgpack_object_str *s, const char *key,
                        size_t klen)
{
    if (s->size == 0 || klen == 0)
        return;
    struct buf name;
    buf_init(&name);
    /* A label name must not start with a digit, and names starting "__" are reserved. */
    if (key[0] >= '0' && key[0] <= '9')
        buf_put_u8(&name, '_');
    append_sanitized(&name, key, klen);
    bool reserved = name.len >= 2 && name.data[0] == '_' && name.data[1] == '_';
    if (!reserved && !has_label(&w->labels, (const char *)name.data, name.len)) {
        size_t labels_len = w->labels.len;
        add_label(&w->labels, (const char *)name.data, name.len, s->ptr, s->size);
        add_sample(w, "_info", "1");
        w->labels.len = labels_len;
    }
    buf_free(&name);
}

static void walk_value(struct prom_walk *w, const msgpack_object *o, const char *key, size_t klen,
                       int depth)
{
    char value[48];
    switch (o->type) {
    case MSGPACK_OBJECT_MAP:
        walk_map(w, &o->via.map, depth + 1);
        return;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        snprintf(value, sizeof(value), "%" PRIu64, o->via.u64);
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        snprintf(value, sizeof(value), "%" PRId64, o->via.i64);
        break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        format_double(value, sizeof(value), o->via.f64);
        break;
    case MSGPACK_OBJECT_BOOLEAN:
        snprintf(value, sizeof(value), "%d", o->via.boolean ? 1 : 0);
        break;
    case MSGPACK_OBJECT_STR:
        walk_string(w, &o->via.str, key, klen);
        return;
    default:
        return; /* nil (e.g. an unlimited limit), arrays, bin, ext: no number to show */
    }
    add_sample(w, "", value);
}

static void walk_map(struct prom_walk *w, const msgpack_object_map *map, int depth)
{
    if (depth > PROM_MAX_DEPTH)
        return;
    for (uint32_t i = 0; i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key, *v = &map->ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR || k->via.str.size == 0)
            continue;
        const char *key = k->via.str.ptr;
        size_t klen = k->via.str.size;
        size_t name_len = w->name.len, path_len = w->path.len;
        buf_put_u8(&w->name, '_');
        append_sanitized(&w->name, key, klen);
        if (w->path.len)
            buf_put_u8(&w->path, '.');
        buf_append(&w->path, key, klen);

        const char *label = label_for(&k->via.str);
        if (label && v->type == MSGPACK_OBJECT_MAP &&
            !has_label(&w->labels, label, strlen(label))) {
            append_printf(&w->path, ".<%s>", label);
            for (uint32_t j = 0; j < v->via.map.size; j++) {
                const msgpack_object *ek = &v->via.map.ptr[j].key;
                if (ek->type != MSGPACK_OBJECT_STR)
                    continue;
                size_t labels_len = w->labels.len;
                add_label(&w->labels, label, strlen(label), ek->via.str.ptr, ek->via.str.size);
                walk_value(w, &v->via.map.ptr[j].val, key, klen, depth + 1);
                w->labels.len = labels_len;
            }
        } else {
            walk_value(w, v, key, klen, depth);
        }
        w->name.len = name_len;
        w->path.len = path_len;
    }
}

/* Escapes a HELP text: backslash and newline. */
static void append_help(struct buf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\')
            append_str(b, "\\\\");
        else if (*s == '\n')
            append_str(b, "\\n");
        else
            buf_put_u8(b, (uint8_t)*s);
    }
}

static void print_sample(struct buf *out, const struct prom_sample *s)
{
    append_str(out, s->family);
    if (s->labels[0])
        append_printf(out, "{%s}", s->labels);
    append_printf(out, " %s\n", s->value);
}

size_t prom_render(const msgpack_object *stats, const char *prefix, struct buf *out)
{
    if (stats->type != MSGPACK_OBJECT_MAP)
        return 0;
    struct prom_walk w = {0};
    buf_init(&w.name);
    buf_init(&w.labels);
    buf_init(&w.path);
    append_str(&w.name, prefix);
    walk_map(&w, &stats->via.map, 0);

    size_t written = 0;
    for (size_t i = 0; i < w.count; i++) {
        if (w.samples[i].printed)
            continue;
        const char *family = w.samples[i].family;
        append_printf(out, "# HELP %s %s stats: ", family, prefix);
        append_help(out, w.samples[i].help);
        append_printf(out, "\n# TYPE %s gauge\n", family);
        for (size_t j = i; j < w.count; j++) {
            struct prom_sample *s = &w.samples[j];
            if (s->printed || strcmp(s->family, family) != 0)
                continue;
            s->printed = true;
            /* Two keys that differ only in characters outside [a-zA-Z0-9_] would make one
             * series twice, which a scraper refuses: the first one stands. */
            bool repeated = false;
            for (size_t k = i; k < j && !repeated; k++)
                repeated = w.samples[k].printed && strcmp(w.samples[k].family, family) == 0 &&
                           strcmp(w.samples[k].labels, s->labels) == 0;
            if (repeated)
                continue;
            print_sample(out, s);
            written++;
        }
    }
    for (size_t i = 0; i < w.count; i++) {
        free(w.samples[i].family);
        free(w.samples[i].labels);
        free(w.samples[i].help);
    }
    free(w.samples);
    buf_free(&w.name);
    buf_free(&w.labels);
    buf_free(&w.path);
    return written;
}
