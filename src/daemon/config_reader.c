/* config_reader: see config_reader.h. */
#include "config_reader.h"

#include "xalloc.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool config_fail(struct config_reader *p, const yaml_node_t *node, const char *fmt, ...)
{
    int n = snprintf(p->err, p->errlen, "%s:%zu:%zu: ", p->path,
                     node ? node->start_mark.line + 1 : 1, node ? node->start_mark.column + 1 : 1);
    if (n < 0 || (size_t)n >= p->errlen)
        return false;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return false;
}

yaml_node_t *config_node_at(struct config_reader *p, int index)
{
    return yaml_document_get_node(&p->doc, index);
}

const char *config_scalar(const yaml_node_t *n)
{
    return (const char *)n->data.scalar.value;
}

bool config_is_null(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *s = config_scalar(n);
    return strcmp(s, "") == 0 || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 ||
           strcmp(s, "Null") == 0 || strcmp(s, "NULL") == 0;
}

static bool expect_plain_scalar(struct config_reader *p, const yaml_node_t *n, const char *key,
                                const char *what)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return config_fail(p, n, "%s must be %s", key, what);
    return true;
}

/* Reads an unsigned integer, with an optional binary size suffix (KiB, MiB, GiB) when
 * allow_suffix is set. */
bool config_read_uint(struct config_reader *p, const yaml_node_t *n, const char *key, uint64_t min,
                      uint64_t max, bool allow_suffix, uint64_t *out)
{
    if (!expect_plain_scalar(p, n, key, allow_suffix ? "a size in bytes" : "an integer"))
        return false;
    const char *s = config_scalar(n);
    if (*s < '0' || *s > '9')
        return config_fail(p, n, "%s must be %s, not \"%s\"", key,
                           allow_suffix ? "a size in bytes" : "a non-negative integer", s);
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    uint64_t scale = 1;
    if (allow_suffix && *end) {
        if (strcmp(end, "KiB") == 0)
            scale = 1024ULL;
        else if (strcmp(end, "MiB") == 0)
            scale = 1024ULL * 1024;
        else if (strcmp(end, "GiB") == 0)
            scale = 1024ULL * 1024 * 1024;
        else
            return config_fail(p, n, "%s: unknown size suffix \"%s\" (use KiB, MiB or GiB)", key,
                               end);
        end += strlen(end);
    }
    if (errno || *end || v > UINT64_MAX / scale)
        return config_fail(p, n, "%s must be an integer, not \"%s\"", key, s);
    v *= scale;
    if (v < min || v > max)
        return config_fail(p, n, "%s must be between %llu and %llu", key, (unsigned long long)min,
                           (unsigned long long)max);
    *out = v;
    return true;
}

bool config_read_u32(struct config_reader *p, const yaml_node_t *n, const char *key, uint32_t min,
                     uint32_t max, uint32_t *out)
{
    uint64_t v = 0;
    if (!config_read_uint(p, n, key, min, max, false, &v))
        return false;
    *out = (uint32_t)v;
    return true;
}

bool config_read_bool(struct config_reader *p, const yaml_node_t *n, const char *key, bool *out)
{
    if (!expect_plain_scalar(p, n, key, "true or false"))
        return false;
    const char *s = config_scalar(n);
    if (strcmp(s, "true") == 0 || strcmp(s, "True") == 0 || strcmp(s, "yes") == 0) {
        *out = true;
        return true;
    }
    if (strcmp(s, "false") == 0 || strcmp(s, "False") == 0 || strcmp(s, "no") == 0) {
        *out = false;
        return true;
    }
    return config_fail(p, n, "%s must be true or false, not \"%s\"", key, s);
}

/* A string; when nullable, null gives NULL. An empty string is refused unless allow_empty. */
bool config_read_string(struct config_reader *p, const yaml_node_t *n, const char *key,
                        bool nullable, bool allow_empty, char **out)
{
    if (nullable && config_is_null(n)) {
        free(*out);
        *out = NULL;
        return true;
    }
    if (n->type != YAML_SCALAR_NODE)
        return config_fail(p, n, "%s must be a string", key);
    if (!allow_empty && n->data.scalar.length == 0)
        return config_fail(p, n, "%s must not be empty", key);
    if (strlen(config_scalar(n)) != n->data.scalar.length)
        return config_fail(p, n, "%s must not contain a NUL character", key);
    free(*out);
    *out = xstrdup(config_scalar(n));
    return true;
}

bool config_read_enum(struct config_reader *p, const yaml_node_t *n, const char *key,
                      const char *const *names, size_t count, int *out)
{
    if (n->type == YAML_SCALAR_NODE) {
        for (size_t i = 0; i < count; i++) {
            if (strcmp(config_scalar(n), names[i]) == 0) {
                *out = (int)i;
                return true;
            }
        }
    }
    char choices[256] = "";
    for (size_t i = 0; i < count; i++) {
        strncat(choices, names[i], sizeof(choices) - strlen(choices) - 1);
        if (i + 1 < count)
            strncat(choices, i + 2 == count ? " or " : ", ", sizeof(choices) - strlen(choices) - 1);
    }
    return config_fail(p, n, "%s must be %s", key, choices);
}

bool config_check_host_port(struct config_reader *p, const yaml_node_t *n, const char *key,
                            const char *value)
{
    char host[256];
    uint16_t port;
    if (value && !config_split_host_port(value, host, sizeof(host), &port))
        return config_fail(p, n, "%s must be host:port (e.g. 127.0.0.1:7878), not \"%s\"", key,
                           value);
    return true;
}

/* Walks a mapping's pairs; for each, calls fn with the key name and value node. Refuses
 * non-mapping nodes, non-string keys and duplicate keys. */
typedef bool (*config_pair_fn)(struct config_reader *p, const char *key, yaml_node_t *value,
                               void *ctx);

bool config_each_pair(struct config_reader *p, yaml_node_t *map, const char *what,
                      config_pair_fn fn, void *ctx)
{
    if (config_is_null(map))
        return true; /* an empty section: every key keeps its default */
    if (map->type != YAML_MAPPING_NODE)
        return config_fail(p, map, "%s must be a mapping of keys to values", what);
    for (yaml_node_pair_t *pair = map->data.mapping.pairs.start; pair < map->data.mapping.pairs.top;
         pair++) {
        yaml_node_t *k = config_node_at(p, pair->key);
        yaml_node_t *v = config_node_at(p, pair->value);
        if (k->type != YAML_SCALAR_NODE)
            return config_fail(p, k, "keys of %s must be strings", what);
        for (yaml_node_pair_t *prev = map->data.mapping.pairs.start; prev < pair; prev++) {
            yaml_node_t *pk = config_node_at(p, prev->key);
            if (pk->type == YAML_SCALAR_NODE && strcmp(config_scalar(pk), config_scalar(k)) == 0)
                return config_fail(p, k, "duplicate key %s%s%s", what, what[0] ? "." : "",
                                   config_scalar(k));
        }
        p->key_node = k;
        if (!fn(p, config_scalar(k), v, ctx))
            return false;
    }
    return true;
}

bool config_unknown_key(struct config_reader *p, const char *section, const char *key)
{
    return config_fail(p, p->key_node, "unknown key %s%s%s", section, *section ? "." : "", key);
}
