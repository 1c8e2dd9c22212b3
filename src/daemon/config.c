/* config: see config.h.
 *
 * libyaml loads the file into a node tree that keeps each node's position; the walkers below
 * check each section against the keys it knows, so that every message can name the line and
 * column a person has to fix. */
#include "config.h"

#include "log.h"
#include "utf8.h"
#include "uuid.h"
#include "xalloc.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

struct parser {
    yaml_document_t doc;
    const char *path;
    char *err;
    size_t errlen;
    yaml_node_t *key_node; /* the key whose value is being read, for "unknown key" messages */
};

static bool fail(struct parser *p, const yaml_node_t *node, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static bool fail(struct parser *p, const yaml_node_t *node, const char *fmt, ...)
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

static yaml_node_t *node_at(struct parser *p, int index)
{
    return yaml_document_get_node(&p->doc, index);
}

static const char *scalar(const yaml_node_t *n)
{
    return (const char *)n->data.scalar.value;
}

static bool is_null(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *s = scalar(n);
    return strcmp(s, "") == 0 || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 ||
           strcmp(s, "Null") == 0 || strcmp(s, "NULL") == 0;
}

static bool expect_plain_scalar(struct parser *p, const yaml_node_t *n, const char *key,
                                const char *what)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return fail(p, n, "%s must be %s", key, what);
    return true;
}

/* Reads an unsigned integer, with an optional binary size suffix (KiB, MiB, GiB) when
 * allow_suffix is set. */
static bool parse_uint(struct parser *p, const yaml_node_t *n, const char *key, uint64_t min,
                       uint64_t max, bool allow_suffix, uint64_t *out)
{
    if (!expect_plain_scalar(p, n, key, allow_suffix ? "a size in bytes" : "an integer"))
        return false;
    const char *s = scalar(n);
    if (*s < '0' || *s > '9')
        return fail(p, n, "%s must be %s, not \"%s\"", key,
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
            return fail(p, n, "%s: unknown size suffix \"%s\" (use KiB, MiB or GiB)", key, end);
        end += strlen(end);
    }
    if (errno || *end || v > UINT64_MAX / scale)
        return fail(p, n, "%s must be an integer, not \"%s\"", key, s);
    v *= scale;
    if (v < min || v > max)
        return fail(p, n, "%s must be between %llu and %llu", key, (unsigned long long)min,
                    (unsigned long long)max);
    *out = v;
    return true;
}

static bool parse_u32(struct parser *p, const yaml_node_t *n, const char *key, uint32_t min,
                      uint32_t max, uint32_t *out)
{
    uint64_t v = 0;
    if (!parse_uint(p, n, key, min, max, false, &v))
        return false;
    *out = (uint32_t)v;
    return true;
}

static bool parse_bool(struct parser *p, const yaml_node_t *n, const char *key, bool *out)
{
    if (!expect_plain_scalar(p, n, key, "true or false"))
        return false;
    const char *s = scalar(n);
    if (strcmp(s, "true") == 0 || strcmp(s, "True") == 0 || strcmp(s, "yes") == 0) {
        *out = true;
        return true;
    }
    if (strcmp(s, "false") == 0 || strcmp(s, "False") == 0 || strcmp(s, "no") == 0) {
        *out = false;
        return true;
    }
    return fail(p, n, "%s must be true or false, not \"%s\"", key, s);
}

/* A string; when nullable, null gives NULL. An empty string is refused unless allow_empty. */
static bool parse_string(struct parser *p, const yaml_node_t *n, const char *key, bool nullable,
                         bool allow_empty, char **out)
{
    if (nullable && is_null(n)) {
        free(*out);
        *out = NULL;
        return true;
    }
    if (n->type != YAML_SCALAR_NODE)
        return fail(p, n, "%s must be a string", key);
    if (!allow_empty && n->data.scalar.length == 0)
        return fail(p, n, "%s must not be empty", key);
    if (strlen(scalar(n)) != n->data.scalar.length)
        return fail(p, n, "%s must not contain a NUL character", key);
    free(*out);
    *out = xstrdup(scalar(n));
    return true;
}

static bool parse_enum(struct parser *p, const yaml_node_t *n, const char *key,
                       const char *const *names, size_t count, int *out)
{
    if (n->type == YAML_SCALAR_NODE) {
        for (size_t i = 0; i < count; i++) {
            if (strcmp(scalar(n), names[i]) == 0) {
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
    return fail(p, n, "%s must be %s", key, choices);
}

static bool parse_limit(struct parser *p, const yaml_node_t *n, const char *key,
                        struct config_limit *out)
{
    if (is_null(n) || (n->type == YAML_SCALAR_NODE && strcmp(scalar(n), "unlimited") == 0)) {
        out->kind = CONFIG_LIMIT_UNLIMITED;
        return true;
    }
    uint64_t v = 0;
    if (!parse_uint(p, n, key, 0, INT32_MAX, false, &v))
        return fail(p, n, "%s must be a number of requests (0 .. %d), or unlimited", key,
                    INT32_MAX);
    out->kind = CONFIG_LIMIT_VALUE;
    out->value = (int64_t)v;
    return true;
}

static bool check_host_port(struct parser *p, const yaml_node_t *n, const char *key,
                            const char *value)
{
    char host[256];
    uint16_t port;
    if (value && !config_split_host_port(value, host, sizeof(host), &port))
        return fail(p, n, "%s must be host:port (e.g. 127.0.0.1:7878), not \"%s\"", key, value);
    return true;
}

/* Walks a mapping's pairs; for each, calls fn with the key name and value node. Refuses
 * non-mapping nodes, non-string keys and duplicate keys. */
typedef bool (*pair_fn)(struct parser *p, const char *key, yaml_node_t *value, void *ctx);

static bool each_pair(struct parser *p, yaml_node_t *map, const char *what, pair_fn fn, void *ctx)
{
    if (is_null(map))
        return true; /* an empty section: every key keeps its default */
    if (map->type != YAML_MAPPING_NODE)
        return fail(p, map, "%s must be a mapping of keys to values", what);
    for (yaml_node_pair_t *pair = map->data.mapping.pairs.start; pair < map->data.mapping.pairs.top;
         pair++) {
        yaml_node_t *k = node_at(p, pair->key);
        yaml_node_t *v = node_at(p, pair->value);
        if (k->type != YAML_SCALAR_NODE)
            return fail(p, k, "keys of %s must be strings", what);
        for (yaml_node_pair_t *prev = map->data.mapping.pairs.start; prev < pair; prev++) {
            yaml_node_t *pk = node_at(p, prev->key);
            if (pk->type == YAML_SCALAR_NODE && strcmp(scalar(pk), scalar(k)) == 0)
                return fail(p, k, "duplicate key %s.%s", what, scalar(k));
        }
        p->key_node = k;
        if (!fn(p, scalar(k), v, ctx))
            return false;
    }
    return true;
}

static bool unknown_key(struct parser *p, const char *section, const char *key)
{
    return fail(p, p->key_node, "unknown key %s%s%s", section, *section ? "." : "", key);
}

static bool listen_pair(struct parser *p, const char *key, yaml_node_t *v, void *ctx)
{
    struct config *c = ctx;
    if (strcmp(key, "unix") == 0)
        return parse_string(p, v, "listen.unix", true, false, &c->listen.unix_path);
    if (strcmp(key, "unix_mode") == 0) {
        if (v->type != YAML_SCALAR_NODE)
            return fail(p, v, "listen.unix_mode must be an octal mode such as 0660");
        char *end;
        errno = 0;
        unsigned long mode = strtoul(scalar(v), &end, 8);
        if (errno || *end || end == scalar(v) || mode > 0777)
            return fail(p, v, "listen.unix_mode must be an octal mode such as 0660, not \"%s\"",
                        scalar(v));
        c->listen.unix_mode = (uint32_t)mode;
        return true;
    }
    if (strcmp(key, "tcp") == 0)
        return parse_string(p, v, "listen.tcp", true, false, &c->listen.tcp) &&
               check_host_port(p, v, "listen.tcp", c->listen.tcp);
    if (strcmp(key, "max_connections") == 0)
        return parse_u32(p, v, "listen.max_connections", 1, 1000000, &c->listen.max_connections);
    if (strcmp(key, "max_message_bytes") == 0) {
        uint64_t n;
        if (!parse_uint(p, v, "listen.max_message_bytes", 1024, 64ULL << 20, true, &n))
            return false;
        c->listen.max_message_bytes = (uint32_t)n;
        return true;
    }
    if (strcmp(key, "idle_timeout_s") == 0)
        return parse_u32(p, v, "listen.idle_timeout_s", 0, 86400 * 7, &c->listen.idle_timeout_s);
    if (strcmp(key, "max_output_bytes") == 0) {
        uint64_t n;
        if (!parse_uint(p, v, "listen.max_output_bytes", 4096, 1ULL << 30, true, &n))
            return false;
        c->listen.max_output_bytes = (uint32_t)n;
        return true;
    }
    if (strcmp(key, "max_pending_requests") == 0)
        return parse_u32(p, v, "listen.max_pending_requests", 1, 1000000,
                         &c->listen.max_pending_requests);
    return unknown_key(p, "listen", key);
}

static bool auth_pair(struct parser *p, const char *key, yaml_node_t *v, void *ctx)
{
    struct config *c = ctx;
    if (strcmp(key, "token_file") == 0)
        return parse_string(p, v, "auth.token_file", true, false, &c->auth.token_file);
    return unknown_key(p, "auth", key);
}

static bool postgres_pair(struct parser *p, const char *key, yaml_node_t *v, void *ctx)
{
    struct config *c = ctx;
    if (strcmp(key, "conninfo") == 0)
        return parse_string(p, v, "postgres.conninfo", false, true, &c->postgres.conninfo);
    if (strcmp(key, "admin_conninfo") == 0)
        return parse_string(p, v, "postgres.admin_conninfo", true, true,
                            &c->postgres.admin_conninfo);
    if (strcmp(key, "connect_timeout_s") == 0)
        return parse_u32(p, v, "postgres.connect_timeout_s", 1, 3600,
                         &c->postgres.connect_timeout_s);
    if (strcmp(key, "reconnect_max_ms") == 0)
        return parse_u32(p, v, "postgres.reconnect_max_ms", 10, 600000,
                         &c->postgres.reconnect_max_ms);
    return unknown_key(p, "postgres", key);
}

static bool redis_pair(struct parser *p, const char *key, yaml_node_t *v, void *ctx)
{
    struct config *c = ctx;
    if (strcmp(key, "address") == 0) {
        if (!parse_string(p, v, "redis.address", false, false, &c->redis.address))
            return false;
        if (strncmp(c->redis.address, "unix:", 5) == 0) {
            if (c->redis.address[5] != '/')
                return fail(p, v, "redis.address: unix: must be followed by an absolute path");
            return true;
        }
        return check_host_port(p, v, "redis.address", c->redis.address);
    }
    if (strcmp(key, "key_prefix") == 0)
        return parse_string(p, v, "redis.key_prefix", false, true, &c->redis.key_prefix);
    if (strcmp(key, "timeout_ms") == 0)
        return parse_u32(p, v, "redis.timeout_ms", 1, 60000, &c->redis.timeout_ms);
    if (strcmp(key, "reconnect_max_ms") == 0)
        return parse_u32(p, v, "redis.reconnect_max_ms", 10, 600000, &c->redis.reconnect_max_ms);
    return unknown_key(p, "redis", key);
}

struct override_ctx {
    struct config_limit *per_minute;
    struct config_limit *per_day;
    int *enabled;     /* NULL where `enabled` is not a key */
    char **provider;  /* NULL where `provider` is not a key */
    uint8_t *user_id; /* NULL where `user_id` is not a key */
    bool has_user_id, has_provider;
    const char *what;
};

static bool override_pair(struct parser *p, const char *key, yaml_node_t *v, void *ctx)
{
    struct override_ctx *o = ctx;
    char name[160];
    snprintf(name, sizeof(name), "%s.%s", o->what, key);
    if (strcmp(key, "per_minute") == 0)
        return parse_limit(p, v, name, o->per_minute);
    if (strcmp(key, "per_day") == 0)
        return parse_limit(p, v, name, o->per_day);
    if (o->enabled && strcmp(key, "enabled") == 0) {
        bool b;
        if (!parse_bool(p, v, name, &b))
            return false;
        *o->enabled = b;
        return true;
    }
    if (o->provider && strcmp(key, "provider") == 0) {
        o->has_provider = true;
        return parse_string(p, v, name, false, false, o->provider);
    }
    if (o->user_id && strcmp(key, "user_id") == 0) {
        o->has_user_id = true;
        if (v->type != YAML_SCALAR_NODE ||
            !uuid_parse(scalar(v), v->data.scalar.length, o->user_id))
            return fail(p, v, "%s must be a UUID", name);
        return true;
    }
    return fail(p, p->key_node, "unknown key %s", name);
}

/* 1 to 50 characters of UTF-8, as api_providers.name (varchar(50)) and the check method take. */
static bool provider_name_ok(const char *name)
{
    size_t chars;
    return name[0] != '\0' && utf8_valid(name, strlen(name), &chars) && chars <= 50;
}

static bool providers_pair(struct parser *p, const char *key, yaml_node_t *v, void *ctx)
{
    struct config *c = ctx;
    if (!provider_name_ok(key))
        return fail(p, v, "limits.providers: a provider name must be 1 to 50 characters");
    c->limits.providers = xrealloc(c->limits.providers,
                                   (c->limits.provider_count + 1) * sizeof(*c->limits.providers));
    struct config_provider_override *o = &c->limits.providers[c->limits.provider_count++];
    memset(o, 0, sizeof(*o));
    o->provider = xstrdup(key);
    o->enabled = -1;
    char what[96];
    snprintf(what, sizeof(what), "limits.providers.%s", key);
    struct override_ctx oc = {
        .per_minute = &o->per_minute, .per_day = &o->per_day, .enabled = &o->enabled, .what = what};
    return each_pair(p, v, what, override_pair, &oc);
}

static bool parse_users(struct parser *p, yaml_node_t *list, struct config *c)
{
    if (is_null(list))
        return true;
    if (list->type != YAML_SEQUENCE_NODE)
        return fail(p, list, "limits.users must be a list");
    for (yaml_node_item_t *it = list->data.sequence.items.start; it < list->data.sequence.items.top;
         it++) {
        yaml_node_t *item = node_at(p, *it);
        size_t i = c->limits.user_count;
        c->limits.users = xrealloc(c->limits.users, (i + 1) * sizeof(*c->limits.users));
        struct config_user_override *u = &c->limits.users[i];
        memset(u, 0, sizeof(*u));
        c->limits.user_count++;
        char what[64];
        snprintf(what, sizeof(what), "limits.users[%zu]", i);
        struct override_ctx oc = {.per_minute = &u->per_minute,
                                  .per_day = &u->per_day,
                                  .provider = &u->provider,
                                  .user_id = u->user_id,
                                  .what = what};
        if (item->type != YAML_MAPPING_NODE)
            return fail(p, item, "%s must be a mapping with user_id, provider, per_minute, per_day",
                        what);
        if (!each_pair(p, item, what, override_pair, &oc))
            return false;
        if (!oc.has_user_id)
            return fail(p, item, "%s needs a user_id", what);
        if (!oc.has_provider)
            return fail(p, item, "%s needs a provider", what);
        if (!provider_name_ok(u->provider))
            return fail(p, item, "%s: a provider name must be 1 to 50 characters", what);
        for (size_t j = 0; j < i; j++)
            if (memcmp(c->limits.users[j].user_id, u->user_id, 16) == 0 &&
                strcmp(c->limits.users[j].provider, u->provider) == 0)
                return fail(p, item, "%s repeats the user_id and provider of limits.users[%zu]",
                            what, j);
    }
    return true;
}

static bool limits_pair(struct parser *p, const char *key, yaml_node_t *v, void *ctx)
{
    struct config *c = ctx;
    if (strcmp(key, "on_redis_error") == 0) {
        static const char *const names[] = {"local", "allow", "deny"};
        int e = 0;
        if (!parse_enum(p, v, "limits.on_redis_error", names, 3, &e))
            return false;
        c->limits.on_redis_error = (enum config_redis_policy)e;
        return true;
    }
    if (strcmp(key, "log_denied") == 0)
        return parse_bool(p, v, "limits.log_denied", &c->limits.log_denied);
    if (strcmp(key, "resync_s") == 0)
        return parse_u32(p, v, "limits.resync_s", 1, 86400, &c->limits.resync_s);
    if (strcmp(key, "reservation_ttl_s") == 0)
        return parse_u32(p, v, "limits.reservation_ttl_s", 1, 604800, &c->limits.reservation_ttl_s);
    if (strcmp(key, "settle_queue") == 0)
        return parse_u32(p, v, "limits.settle_queue", 1, 10000000, &c->limits.settle_queue);
    if (strcmp(key, "providers") == 0)
        return each_pair(p, v, "limits.providers", providers_pair, c);
    if (strcmp(key, "users") == 0)
        return parse_users(p, v, c);
    return unknown_key(p, "limits", key);
}

static bool ingest_pair(struct parser *p, const char *key, yaml_node_t *v, void *ctx)
{
    struct config *c = ctx;
    if (strcmp(key, "batch_rows") == 0)
        return parse_u32(p, v, "ingest.batch_rows", 1, 1000000, &c->ingest.batch_rows);
    if (strcmp(key, "batch_ms") == 0)
        return parse_u32(p, v, "ingest.batch_ms", 1, 600000, &c->ingest.batch_ms);
    if (strcmp(key, "queue_rows") == 0)
        return parse_u32(p, v, "ingest.queue_rows", 1, 100000000, &c->ingest.queue_rows);
    if (strcmp(key, "connections") == 0)
        return parse_u32(p, v, "ingest.connections", 1, 8, &c->ingest.connections);
    if (strcmp(key, "queue_bytes") == 0)
        return parse_uint(p, v, "ingest.queue_bytes", 1ULL << 20, 1ULL << 40, true,
                          &c->ingest.queue_bytes);
    if (strcmp(key, "batch_bytes") == 0)
        return parse_uint(p, v, "ingest.batch_bytes", 64ULL << 10, 512ULL << 20, true,
                          &c->ingest.batch_bytes);
    if (strcmp(key, "ack") == 0) {
        static const char *const names[] = {"queued", "durable"};
        int e = 0;
        if (!parse_enum(p, v, "ingest.ack", names, 2, &e))
            return false;
        c->ingest.ack = (enum config_ack)e;
        return true;
    }
    if (strcmp(key, "spill_after_ms") == 0)
        return parse_u32(p, v, "ingest.spill_after_ms", 0, 3600000, &c->ingest.spill_after_ms);
    if (strcmp(key, "drain_timeout_s") == 0)
        return parse_u32(p, v, "ingest.drain_timeout_s", 0, 3600, &c->ingest.drain_timeout_s);
    return unknown_key(p, "ingest", key);
}

static bool spool_pair(struct parser *p, const char *key, yaml_node_t *v, void *ctx)
{
    struct config *c = ctx;
    if (strcmp(key, "dir") == 0)
        return parse_string(p, v, "spool.dir", false, false, &c->spool.dir);
    if (strcmp(key, "max_bytes") == 0)
        return parse_uint(p, v, "spool.max_bytes", 1ULL << 20, 1ULL << 50, true,
                          &c->spool.max_bytes);
    if (strcmp(key, "segment_bytes") == 0)
        return parse_uint(p, v, "spool.segment_bytes", 64ULL << 10, 1ULL << 32, true,
                          &c->spool.segment_bytes);
    if (strcmp(key, "commit_ms") == 0)
        return parse_u32(p, v, "spool.commit_ms", 0, 10000, &c->spool.commit_ms);
    return unknown_key(p, "spool", key);
}

static bool refresh_pair(struct parser *p, const char *key, yaml_node_t *v, void *ctx)
{
    struct config_refresh *r = ctx;
    if (strcmp(key, "view") == 0) {
        if (!parse_string(p, v, "refresh[].view", false, false, &r->view))
            return false;
        const char *dot = strchr(r->view, '.');
        if (!dot || dot == r->view || dot[1] == '\0' || strchr(dot + 1, '.'))
            return fail(p, v, "refresh[].view must be schema.view, not \"%s\"", r->view);
        return true;
    }
    if (strcmp(key, "every_s") == 0)
        return parse_u32(p, v, "refresh[].every_s", 1, 86400 * 7, &r->every_s);
    if (strcmp(key, "timeout_s") == 0)
        return parse_u32(p, v, "refresh[].timeout_s", 1, 86400, &r->timeout_s);
    return fail(p, p->key_node, "unknown key refresh[].%s", key);
}

static bool parse_refresh(struct parser *p, yaml_node_t *list, struct config *c)
{
    if (is_null(list))
        return true;
    if (list->type != YAML_SEQUENCE_NODE)
        return fail(p, list, "refresh must be a list of { view, every_s }");
    for (yaml_node_item_t *it = list->data.sequence.items.start; it < list->data.sequence.items.top;
         it++) {
        yaml_node_t *item = node_at(p, *it);
        c->refresh = xrealloc(c->refresh, (c->refresh_count + 1) * sizeof(*c->refresh));
        struct config_refresh *r = &c->refresh[c->refresh_count++];
        memset(r, 0, sizeof(*r));
        r->timeout_s = 600;
        if (item->type != YAML_MAPPING_NODE)
            return fail(p, item, "each refresh entry must be a mapping { view, every_s }");
        if (!each_pair(p, item, "refresh[]", refresh_pair, r))
            return false;
        if (!r->view)
            return fail(p, item, "refresh entry needs a view");
        if (!r->every_s)
            return fail(p, item, "refresh entry for %s needs every_s", r->view);
        for (size_t j = 0; j + 1 < c->refresh_count; j++)
            if (strcmp(c->refresh[j].view, r->view) == 0)
                return fail(p, item, "refresh lists %s twice", r->view);
    }
    return true;
}

static bool maintenance_pair(struct parser *p, const char *key, yaml_node_t *v, void *ctx)
{
    struct config *c = ctx;
    if (strcmp(key, "at") == 0) {
        if (is_null(v)) {
            c->maintenance.at_minute = -1;
            return true;
        }
        unsigned h, m;
        char extra;
        if (v->type != YAML_SCALAR_NODE || sscanf(scalar(v), "%2u:%2u%c", &h, &m, &extra) != 2 ||
            h > 23 || m > 59)
            return fail(p, v, "maintenance.at must be a UTC time of day HH:MM, or null");
        c->maintenance.at_minute = (int32_t)(h * 60 + m);
        return true;
    }
    if (strcmp(key, "partitions_ahead") == 0)
        return parse_u32(p, v, "maintenance.partitions_ahead", 1, 120,
                         &c->maintenance.partitions_ahead);
    if (strcmp(key, "retention") == 0)
        return parse_bool(p, v, "maintenance.retention", &c->maintenance.retention);
    if (strcmp(key, "vacuum") == 0)
        return parse_bool(p, v, "maintenance.vacuum", &c->maintenance.vacuum);
    if (strcmp(key, "timeout_s") == 0)
        return parse_u32(p, v, "maintenance.timeout_s", 1, 86400, &c->maintenance.timeout_s);
    return unknown_key(p, "maintenance", key);
}

static bool log_pair(struct parser *p, const char *key, yaml_node_t *v, void *ctx)
{
    struct config *c = ctx;
    if (strcmp(key, "level") == 0) {
        static const char *const names[] = {"error", "warn", "info", "debug"};
        return parse_enum(p, v, "log.level", names, 4, &c->log.level);
    }
    return unknown_key(p, "log", key);
}

static bool metrics_pair(struct parser *p, const char *key, yaml_node_t *v, void *ctx)
{
    struct config *c = ctx;
    if (strcmp(key, "listen") == 0)
        return parse_string(p, v, "metrics.listen", true, false, &c->metrics.listen) &&
               check_host_port(p, v, "metrics.listen", c->metrics.listen);
    return unknown_key(p, "metrics", key);
}

static bool top_pair(struct parser *p, const char *key, yaml_node_t *v, void *ctx)
{
    struct config *c = ctx;
    if (strcmp(key, "listen") == 0)
        return each_pair(p, v, "listen", listen_pair, c);
    if (strcmp(key, "auth") == 0)
        return each_pair(p, v, "auth", auth_pair, c);
    if (strcmp(key, "postgres") == 0)
        return each_pair(p, v, "postgres", postgres_pair, c);
    if (strcmp(key, "redis") == 0)
        return each_pair(p, v, "redis", redis_pair, c);
    if (strcmp(key, "limits") == 0)
        return each_pair(p, v, "limits", limits_pair, c);
    if (strcmp(key, "ingest") == 0)
        return each_pair(p, v, "ingest", ingest_pair, c);
    if (strcmp(key, "spool") == 0)
        return each_pair(p, v, "spool", spool_pair, c);
    if (strcmp(key, "refresh") == 0)
        return parse_refresh(p, v, c);
    if (strcmp(key, "maintenance") == 0)
        return each_pair(p, v, "maintenance", maintenance_pair, c);
    if (strcmp(key, "log") == 0)
        return each_pair(p, v, "log", log_pair, c);
    if (strcmp(key, "metrics") == 0)
        return each_pair(p, v, "metrics", metrics_pair, c);
    return unknown_key(p, "", key);
}

static struct config *config_defaults(const char *path)
{
    struct config *c = xcalloc(1, sizeof(*c));
    c->path = xstrdup(path);
    c->listen.unix_path = xstrdup("/run/usaged/usaged.sock");
    c->listen.unix_mode = 0660;
    c->listen.max_connections = 4096;
    c->listen.max_message_bytes = 1048576;
    c->listen.idle_timeout_s = 600;
    c->listen.max_output_bytes = 1048576;
    c->listen.max_pending_requests = 4096;
    c->postgres.conninfo = xstrdup("host=/run/postgresql dbname=promptcraft user=usaged");
    c->postgres.connect_timeout_s = 10;
    c->postgres.reconnect_max_ms = 5000;
    c->redis.address = xstrdup("127.0.0.1:6379");
    c->redis.key_prefix = xstrdup("usaged:");
    c->redis.timeout_ms = 250;
    c->redis.reconnect_max_ms = 2000;
    c->limits.on_redis_error = CONFIG_REDIS_LOCAL;
    c->limits.log_denied = true;
    c->limits.resync_s = 60;
    c->limits.reservation_ttl_s = 900;
    c->limits.settle_queue = 100000;
    c->ingest.batch_rows = 5000;
    c->ingest.batch_ms = 200;
    c->ingest.queue_rows = 200000;
    c->ingest.queue_bytes = 256ULL << 20;
    c->ingest.connections = 2;
    c->ingest.batch_bytes = 16ULL << 20;
    c->ingest.ack = CONFIG_ACK_QUEUED;
    c->ingest.spill_after_ms = 5000;
    c->ingest.drain_timeout_s = 30;
    c->spool.dir = xstrdup("/var/lib/usaged/spool");
    c->spool.max_bytes = 1ULL << 30;
    c->spool.segment_bytes = 64ULL << 20;
    c->spool.commit_ms = 2;
    c->maintenance.at_minute = -1;
    c->maintenance.partitions_ahead = 3;
    c->maintenance.retention = true;
    c->maintenance.vacuum = true;
    c->maintenance.timeout_s = 3600;
    c->log.level = LOG_INFO;
    return c;
}

bool config_split_host_port(const char *s, char *host, size_t hostlen, uint16_t *port)
{
    const char *colon;
    const char *h = s;
    size_t hlen;
    if (*s == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return false;
        h = s + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return false;
        hlen = (size_t)(colon - s);
    }
    if (hlen == 0 || hlen >= hostlen)
        return false;
    char *end;
    errno = 0;
    unsigned long p = strtoul(colon + 1, &end, 10);
    if (errno || *end || end == colon + 1 || p == 0 || p > 65535)
        return false;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = (uint16_t)p;
    return true;
}

static bool is_loopback_host(const char *host)
{
    return strcmp(host, "localhost") == 0 || strncmp(host, "127.", 4) == 0 ||
           strcmp(host, "::1") == 0;
}

/* Rules that tie keys together, checked once the whole file is read. */
static bool check_whole(struct parser *p, struct config *c, yaml_node_t *root)
{
    if (!c->listen.unix_path && !c->listen.tcp)
        return fail(p, root, "listen needs unix, tcp or both");
    if (c->listen.tcp && !c->auth.token_file) {
        char host[256];
        uint16_t port;
        config_split_host_port(c->listen.tcp, host, sizeof(host), &port);
        if (!is_loopback_host(host))
            return fail(p, root,
                        "listen.tcp is not a loopback address: auth.token_file is required");
    }
    if (c->ingest.batch_rows > c->ingest.queue_rows)
        return fail(p, root, "ingest.batch_rows (%u) must not exceed ingest.queue_rows (%u)",
                    c->ingest.batch_rows, c->ingest.queue_rows);
    if (c->spool.segment_bytes > c->spool.max_bytes)
        return fail(p, root, "spool.segment_bytes must not exceed spool.max_bytes");
    return true;
}

struct config *config_parse(const char *path, const char *text, size_t len, char *err,
                            size_t errlen)
{
    struct parser p = {.path = path, .err = err, .errlen = errlen};
    yaml_parser_t yp;
    struct config *c = config_defaults(path);
    bool ok = false;

    if (!yaml_parser_initialize(&yp)) {
        snprintf(err, errlen, "%s: cannot initialise the YAML parser", path);
        config_free(c);
        return NULL;
    }
    yaml_parser_set_input_string(&yp, (const unsigned char *)text, len);
    if (!yaml_parser_load(&yp, &p.doc)) {
        snprintf(err, errlen, "%s:%zu:%zu: %s%s%s", path, yp.problem_mark.line + 1,
                 yp.problem_mark.column + 1, yp.problem ? yp.problem : "invalid YAML",
                 yp.context ? " " : "", yp.context ? yp.context : "");
        yaml_parser_delete(&yp);
        config_free(c);
        return NULL;
    }
    yaml_node_t *root = yaml_document_get_root_node(&p.doc);
    if (root == NULL) {
        ok = check_whole(&p, c, NULL); /* an empty file: all defaults */
    } else if (root->type != YAML_MAPPING_NODE && !is_null(root)) {
        fail(&p, root, "the configuration must be a mapping of sections");
    } else {
        ok = each_pair(&p, root, "", top_pair, c) && check_whole(&p, c, root);
    }
    yaml_document_delete(&p.doc);
    yaml_parser_delete(&yp);
    if (!ok) {
        config_free(c);
        return NULL;
    }
    return c;
}

struct config *config_load(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct config *c = NULL;
    char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (cap - len < 4096) {
            cap = cap ? cap * 2 : 8192;
            if (cap > (16u << 20)) {
                snprintf(err, errlen, "%s: larger than 16 MiB; not a configuration file", path);
                goto out;
            }
            text = xrealloc(text, cap);
        }
        size_t n = fread(text + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    if (ferror(f)) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        goto out;
    }
    c = config_parse(path, text, len, err, errlen);
out:
    free(text);
    fclose(f);
    return c;
}

void config_free(struct config *c)
{
    if (!c)
        return;
    free(c->path);
    free(c->listen.unix_path);
    free(c->listen.tcp);
    free(c->auth.token_file);
    free(c->postgres.conninfo);
    free(c->postgres.admin_conninfo);
    free(c->redis.address);
    free(c->redis.key_prefix);
    for (size_t i = 0; i < c->limits.provider_count; i++)
        free(c->limits.providers[i].provider);
    free(c->limits.providers);
    for (size_t i = 0; i < c->limits.user_count; i++)
        free(c->limits.users[i].provider);
    free(c->limits.users);
    free(c->spool.dir);
    for (size_t i = 0; i < c->refresh_count; i++)
        free(c->refresh[i].view);
    free(c->refresh);
    free(c->metrics.listen);
    free(c);
}
