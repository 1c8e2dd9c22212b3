/* config: see config.h.
 *
 * libyaml loads the file into a node tree that keeps each node's position; the walker below
 * checks each section against the keys it knows, so that every message can name the line and
 * column a person has to fix.
 *
 * One table, config_keys[] below, drives parsing, defaults, freeing and reload: each line names a
 * key ("section.key", or "key" for a top-level list), its type, the struct config field it fills,
 * its bounds, its default and whether a reload applies it (CONFIG_RESTART: only a restart does).
 *
 * Adding a key:
 * - a scalar: add its field to struct config (config.h), one line to config_keys[] and the key,
 *   with its default and what it does, to conf/usaged.yaml (test_config checks both ways). The
 *   field's C type must be the type's storage (see key_storage; test_config checks that too).
 *   A string that needs a test of its own beyond nullable/empty names a .check function.
 * - a list of strings (hosts, names): a CONFIG_STRINGS line naming its `char **` field and, with
 *   COUNT(), its `size_t` count field; .check tests each string. Parsing, freeing and reload
 *   (restart-only too) come with the type.
 * - a list or map: in config_lists.c, write a parser, `bool parse_x(struct config_reader *,
 *   yaml_node_t *, struct config *)`, and a release that frees what it built, export them as a
 *   `const struct config_list` (declared in config_reader.h), and add a CONFIG_LIST line here
 *   naming the list's pointer field. A restart-only list also gives .same and .swap (see
 *   config_keep_restart_only). config_reader.h has the readers of scalars a parser needs.
 * - a new section needs nothing more: a section is any prefix before a dot in the table.
 * Rules that tie keys together go to check_whole. */
#include "config.h"

#include "config_reader.h"
#include "log.h"
#include "resolve.h"
#include "xalloc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Checks of a string value beyond nullable and empty, given the config read so far. */
static bool check_host_port(struct config_reader *p, const yaml_node_t *n, const struct config *c,
                            const char *key, const char *value)
{
    (void)c;
    return config_check_host_port(p, n, key, value);
}

#define REDIS_DEFAULT_ADDRESS "127.0.0.1:6379"

/* The node of the key section.key where the file gives it, or NULL. */
static yaml_node_t *given_key(struct config_reader *p, const char *section, const char *key)
{
    yaml_node_t *root = yaml_document_get_root_node(&p->doc);
    if (!root || root->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *top = root->data.mapping.pairs.start; top < root->data.mapping.pairs.top;
         top++) {
        yaml_node_t *k = yaml_document_get_node(&p->doc, top->key);
        yaml_node_t *v = yaml_document_get_node(&p->doc, top->value);
        if (!k || !v || k->type != YAML_SCALAR_NODE || strcmp(config_scalar(k), section) != 0 ||
            v->type != YAML_MAPPING_NODE)
            continue;
        for (yaml_node_pair_t *in = v->data.mapping.pairs.start; in < v->data.mapping.pairs.top;
             in++) {
            yaml_node_t *ik = yaml_document_get_node(&p->doc, in->key);
            if (ik && ik->type == YAML_SCALAR_NODE && strcmp(config_scalar(ik), key) == 0)
                return ik;
        }
    }
    return NULL;
}

/* Where an error about section.key (with section.other, or NULL) points: at the key, else at
 * the other key, else at the file's start. */
static const yaml_node_t *at_key(struct config_reader *p, const yaml_node_t *root,
                                 const char *section, const char *key, const char *other)
{
    const yaml_node_t *k = given_key(p, section, key);
    if (!k && other)
        k = given_key(p, section, other);
    return k ? k : root;
}

/* Whether the file gives redis.address before node n (the key being read). */
static bool redis_address_given(struct config_reader *p, const yaml_node_t *n)
{
    const yaml_node_t *k = given_key(p, "redis", "address");
    return k && k->start_mark.index < n->start_mark.index;
}

/* redis.address, redis.sentinels and redis.cluster name three ways to reach Redis: one of them.
 * Checked at each of those keys as it is read (address: the value about to be set), so that the
 * error points at the second one given. */
static bool check_redis_one_mode(struct config_reader *p, const yaml_node_t *n,
                                 const struct config *c, const char *key, const char *address_value)
{
    /* The address counts when the file gives it, even as the default's value (the reference
     * config does): when checking redis.address itself, always; at the other keys, once read. */
    bool address = strcmp(key, "redis.address") == 0 ||
                   strcmp(address_value, REDIS_DEFAULT_ADDRESS) != 0 || redis_address_given(p, n);
    int modes = address + (c->redis.sentinel_count > 0) + (c->redis.cluster_count > 0);
    if (modes > 1)
        return config_fail(p, n,
                           "%s: redis.address, redis.sentinels and redis.cluster are exclusive; "
                           "give one of them",
                           key);
    return true;
}

static bool check_redis_address(struct config_reader *p, const yaml_node_t *n,
                                const struct config *c, const char *key, const char *value)
{
    if (strncmp(value, "rediss://", 9) == 0)
        return config_fail(p, n,
                           "%s: rediss:// (TLS) is not supported (hiredis 0.14 has no TLS); reach "
                           "a TLS Redis through a local stunnel, see docs/operations.md",
                           key);
    if (strstr(value, "://"))
        return config_fail(p, n, "%s takes host:port or unix:/path, not a URL", key);
    if (!check_redis_one_mode(p, n, c, key, value))
        return false;
    if (strncmp(value, "unix:", 5) == 0) {
        if (value[5] != '/')
            return config_fail(p, n, "%s: unix: must be followed by an absolute path", key);
        return true;
    }
    return config_check_host_port(p, n, key, value);
}

/* One of a list of host:port (numeric: an IP address, not a name), given once. */
static bool check_host_list(struct config_reader *p, const yaml_node_t *n, const char *key,
                            char *const *list, size_t count, bool numeric)
{
    const char *value = list[count - 1];
    char host[256];
    uint16_t port;
    if (!config_split_host_port(value, host, sizeof(host), &port))
        return config_fail(p, n, "%s: each must be host:port (e.g. 10.0.0.5:26379), not \"%s\"",
                           key, value);
    if (numeric && !resolve_is_numeric(host))
        return config_fail(p, n, "%s: %s must be an IP address, not a name", key, value);
    for (size_t i = 0; i + 1 < count; i++)
        if (strcmp(list[i], value) == 0)
            return config_fail(p, n, "%s: %s is given twice", key, value);
    return true;
}

/* Sentinels are named by address: the daemon connects to them with hiredis, whose own lookup
 * of a name would block the loop. */
static bool check_redis_sentinel(struct config_reader *p, const yaml_node_t *n,
                                 const struct config *c, const char *key, const char *value)
{
    (void)value;
    return check_host_list(p, n, key, c->redis.sentinels, c->redis.sentinel_count, true) &&
           check_redis_one_mode(p, n, c, key, c->redis.address);
}

static bool check_redis_cluster(struct config_reader *p, const yaml_node_t *n,
                                const struct config *c, const char *key, const char *value)
{
    (void)value;
    return check_host_list(p, n, key, c->redis.cluster, c->redis.cluster_count, false) &&
           check_redis_one_mode(p, n, c, key, c->redis.address);
}

enum config_type {
    CONFIG_U32,           /* uint32_t, an integer */
    CONFIG_U32_SIZE,      /* uint32_t, a size in bytes (KiB, MiB, GiB suffixes) */
    CONFIG_U64_SIZE,      /* uint64_t, a size in bytes */
    CONFIG_BOOL,          /* bool */
    CONFIG_STRING,        /* char *, owned by the config */
    CONFIG_ENUM,          /* an enum of int size; .names lists its values in order */
    CONFIG_MODE,          /* uint32_t, octal permission bits */
    CONFIG_MINUTE_OF_DAY, /* int32_t, a UTC time HH:MM as minutes; null: -1 */
    CONFIG_STRINGS,       /* char **, a list of strings; its size_t count field is COUNT() */
    CONFIG_LIST,          /* parsed and freed by .list */
};

#define CONFIG_NULLABLE 1u /* strings: null gives NULL */
#define CONFIG_EMPTY_OK 2u /* strings and lists of strings: "" is a value */
#define CONFIG_RESTART 4u  /* a reload keeps the running value and says it needs a restart */

struct config_key {
    const char *name; /* "section.key", or "key" at the top level */
    enum config_type type;
    size_t offset; /* of the field in struct config */
    size_t size;   /* of the field, checked against the type by config_table_check */
    unsigned flags;
    uint64_t min, max;        /* numbers */
    int64_t def;              /* default of numbers, bools, enums, modes, minutes */
    const char *def_str;      /* default of strings; NULL: null */
    const char *const *names; /* CONFIG_ENUM: the values, NULL-terminated */
    /* A string's (or each listed string's) own test, given the config read so far (a list's
     * count already includes the string). */
    bool (*check)(struct config_reader *p, const yaml_node_t *n, const struct config *c,
                  const char *key, const char *value);
    size_t count_offset, count_size; /* CONFIG_STRINGS: its count field, see COUNT() */
    const struct config_list *list;  /* CONFIG_LIST */
};

#define KEY(n, t, field, ...)                                                                      \
    {                                                                                              \
        .name = n, .type = CONFIG_##t, .offset = offsetof(struct config, field),                   \
        .size = sizeof(((struct config *)0)->field), __VA_ARGS__                                   \
    }
/* The count field of a CONFIG_STRINGS key. */
#define COUNT(field)                                                                               \
    .count_offset = offsetof(struct config, field),                                                \
    .count_size = sizeof(((struct config *)0)->field)

static const char *const redis_policies[] = {"local", "allow", "deny", NULL};
static const char *const acks[] = {"queued", "durable", NULL};
static const char *const log_levels[] = {"error", "warn", "info", "debug", NULL};

#define KIB 1024ULL
#define MIB (1024ULL * 1024)
#define GIB (1024ULL * 1024 * 1024)

static const struct config_key config_keys[] = {
    KEY("listen.unix", STRING, listen.unix_path, .flags = CONFIG_NULLABLE | CONFIG_RESTART,
        .def_str = "/run/usaged/usaged.sock"),
    KEY("listen.unix_mode", MODE, listen.unix_mode, .flags = CONFIG_RESTART, .def = 0660),
    KEY("listen.tcp", STRING, listen.tcp, .flags = CONFIG_NULLABLE | CONFIG_RESTART,
        .check = check_host_port),
    KEY("listen.max_connections", U32, listen.max_connections, .min = 1, .max = 1000000,
        .def = 4096),
    KEY("listen.max_message_bytes", U32_SIZE, listen.max_message_bytes, .min = KIB, .max = 64 * MIB,
        .def = 1048576),
    KEY("listen.idle_timeout_s", U32, listen.idle_timeout_s, .max = 86400 * 7, .def = 600),
    KEY("listen.max_output_bytes", U32_SIZE, listen.max_output_bytes, .min = 4 * KIB, .max = GIB,
        .def = 1048576),
    KEY("listen.max_pending_requests", U32, listen.max_pending_requests, .min = 1, .max = 1000000,
        .def = 4096),
    KEY("listen.max_input_bytes", U64_SIZE, listen.max_input_bytes, .min = MIB, .max = 1ULL << 40,
        .def = 256 * MIB),

    KEY("auth.token_file", STRING, auth.token_file, .flags = CONFIG_NULLABLE | CONFIG_RESTART),

    KEY("postgres.conninfo", STRING, postgres.conninfo, .flags = CONFIG_EMPTY_OK | CONFIG_RESTART,
        .def_str = "host=/run/postgresql dbname=promptcraft user=usaged"),
    KEY("postgres.admin_conninfo", STRING, postgres.admin_conninfo,
        .flags = CONFIG_NULLABLE | CONFIG_EMPTY_OK),
    KEY("postgres.connect_timeout_s", U32, postgres.connect_timeout_s, .flags = CONFIG_RESTART,
        .min = 1, .max = 3600, .def = 10),
    KEY("postgres.reconnect_max_ms", U32, postgres.reconnect_max_ms, .flags = CONFIG_RESTART,
        .min = 10, .max = 600000, .def = 5000),

    KEY("redis.address", STRING, redis.address, .flags = CONFIG_RESTART,
        .def_str = REDIS_DEFAULT_ADDRESS, .check = check_redis_address),
    KEY("redis.username", STRING, redis.username, .flags = CONFIG_NULLABLE | CONFIG_RESTART),
    KEY("redis.password_file", STRING, redis.password_file,
        .flags = CONFIG_NULLABLE | CONFIG_RESTART),
    KEY("redis.sentinels", STRINGS, redis.sentinels, COUNT(redis.sentinel_count),
        .flags = CONFIG_RESTART, .check = check_redis_sentinel),
    KEY("redis.sentinel_master", STRING, redis.sentinel_master,
        .flags = CONFIG_NULLABLE | CONFIG_RESTART),
    KEY("redis.cluster", STRINGS, redis.cluster, COUNT(redis.cluster_count),
        .flags = CONFIG_RESTART, .check = check_redis_cluster),
    KEY("redis.key_prefix", STRING, redis.key_prefix, .flags = CONFIG_EMPTY_OK | CONFIG_RESTART,
        .def_str = "usaged:"),
    KEY("redis.timeout_ms", U32, redis.timeout_ms, .min = 1, .max = 60000, .def = 250),
    KEY("redis.reconnect_max_ms", U32, redis.reconnect_max_ms, .flags = CONFIG_RESTART, .min = 10,
        .max = 600000, .def = 2000),

    KEY("limits.on_redis_error", ENUM, limits.on_redis_error, .names = redis_policies,
        .def = CONFIG_REDIS_LOCAL),
    KEY("limits.log_denied", BOOL, limits.log_denied, .def = true),
    KEY("limits.resync_s", U32, limits.resync_s, .min = 1, .max = 86400, .def = 60),
    KEY("limits.providers", LIST, limits.providers, .list = &config_providers_list),
    KEY("limits.users", LIST, limits.users, .list = &config_users_list),
    KEY("limits.rules", LIST, limits.rules, .list = &config_rules_list),
    KEY("limits.reservation_ttl_s", U32, limits.reservation_ttl_s, .min = 1, .max = 604800,
        .def = 900),
    KEY("limits.settle_queue", U32, limits.settle_queue, .min = 1, .max = 10000000, .def = 100000),
    KEY("limits.alert_queue", U32, limits.alert_queue, .flags = CONFIG_RESTART, .min = 1,
        .max = 10000000, .def = 100000),

    KEY("ingest.batch_rows", U32, ingest.batch_rows, .min = 1, .max = 1000000, .def = 5000),
    KEY("ingest.batch_ms", U32, ingest.batch_ms, .min = 1, .max = 600000, .def = 200),
    KEY("ingest.queue_rows", U32, ingest.queue_rows, .min = 1, .max = 100000000, .def = 200000),
    KEY("ingest.connections", U32, ingest.connections, .flags = CONFIG_RESTART, .min = 1, .max = 8,
        .def = 2),
    KEY("ingest.queue_bytes", U64_SIZE, ingest.queue_bytes, .min = MIB, .max = 1ULL << 40,
        .def = 256 * MIB),
    KEY("ingest.batch_bytes", U64_SIZE, ingest.batch_bytes, .min = 64 * KIB, .max = 512 * MIB,
        .def = 16 * MIB),
    KEY("ingest.ack", ENUM, ingest.ack, .names = acks, .def = CONFIG_ACK_QUEUED),
    KEY("ingest.spill_after_ms", U32, ingest.spill_after_ms, .max = 3600000, .def = 5000),
    KEY("ingest.drain_timeout_s", U32, ingest.drain_timeout_s, .max = 3600, .def = 30),

    KEY("spool.dir", STRING, spool.dir, .flags = CONFIG_RESTART,
        .def_str = "/var/lib/usaged/spool"),
    KEY("spool.max_bytes", U64_SIZE, spool.max_bytes, .min = MIB, .max = 1ULL << 50, .def = GIB),
    KEY("spool.segment_bytes", U64_SIZE, spool.segment_bytes, .min = 64 * KIB, .max = 4 * GIB,
        .def = 64 * MIB),
    KEY("spool.commit_ms", U32, spool.commit_ms, .max = 10000, .def = 2),

    KEY("refresh", LIST, refresh, .list = &config_refresh_list),

    KEY("maintenance.at", MINUTE_OF_DAY, maintenance.at_minute, .def = -1),
    KEY("maintenance.partitions_ahead", U32, maintenance.partitions_ahead, .min = 1, .max = 120,
        .def = 3),
    KEY("maintenance.retention", BOOL, maintenance.retention, .def = true),
    KEY("maintenance.vacuum", BOOL, maintenance.vacuum, .def = true),
    KEY("maintenance.timeout_s", U32, maintenance.timeout_s, .min = 1, .max = 86400, .def = 3600),

    KEY("log.level", ENUM, log.level, .names = log_levels, .def = LOG_INFO),

    KEY("metrics.listen", STRING, metrics.listen, .flags = CONFIG_NULLABLE | CONFIG_RESTART,
        .check = check_host_port),
};

#define CONFIG_KEY_COUNT (sizeof(config_keys) / sizeof(config_keys[0]))

static void *field(struct config *c, const struct config_key *k)
{
    return (char *)c + k->offset;
}

static const void *cfield(const struct config *c, const struct config_key *k)
{
    return (const char *)c + k->offset;
}

/* The key named section.key (section NULL: a top-level key). */
static const struct config_key *key_find(const char *section, const char *key)
{
    size_t slen = section ? strlen(section) : 0;
    for (size_t i = 0; i < CONFIG_KEY_COUNT; i++) {
        const char *name = config_keys[i].name;
        if (section) {
            if (strncmp(name, section, slen) != 0 || name[slen] != '.')
                continue;
            name += slen + 1;
        } else if (strchr(name, '.')) {
            continue;
        }
        if (strcmp(name, key) == 0)
            return &config_keys[i];
    }
    return NULL;
}

static bool is_section(const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < CONFIG_KEY_COUNT; i++)
        if (strncmp(config_keys[i].name, name, len) == 0 && config_keys[i].name[len] == '.')
            return true;
    return false;
}

static bool parse_mode(struct config_reader *p, const yaml_node_t *v, const char *key,
                       uint32_t *out)
{
    if (v->type != YAML_SCALAR_NODE)
        return config_fail(p, v, "%s must be an octal mode such as 0660", key);
    char *end;
    errno = 0;
    unsigned long mode = strtoul(config_scalar(v), &end, 8);
    if (errno || *end || end == config_scalar(v) || mode > 0777)
        return config_fail(p, v, "%s must be an octal mode such as 0660, not \"%s\"", key,
                           config_scalar(v));
    *out = (uint32_t)mode;
    return true;
}

static bool parse_minute_of_day(struct config_reader *p, const yaml_node_t *v, const char *key,
                                int32_t *out)
{
    if (config_is_null(v)) {
        *out = -1;
        return true;
    }
    unsigned h, m;
    char extra;
    if (v->type != YAML_SCALAR_NODE || sscanf(config_scalar(v), "%2u:%2u%c", &h, &m, &extra) != 2 ||
        h > 23 || m > 59)
        return config_fail(p, v, "%s must be a UTC time of day HH:MM, or null", key);
    *out = (int32_t)(h * 60 + m);
    return true;
}

static char ***strings_of(struct config *c, const struct config_key *k)
{
    return (char ***)field(c, k);
}

static size_t *count_of(struct config *c, const struct config_key *k)
{
    return (size_t *)(void *)((char *)c + k->count_offset);
}

static void release_strings(struct config *c, const struct config_key *k)
{
    char **list = *strings_of(c, k);
    for (size_t i = 0; i < *count_of(c, k); i++)
        free(list[i]);
    free(list);
    *strings_of(c, k) = NULL;
    *count_of(c, k) = 0;
}

/* A list of strings; null is the empty list. A later occurrence replaces an earlier one. */
static bool parse_strings(struct config_reader *p, const struct config_key *k, yaml_node_t *v,
                          struct config *c)
{
    release_strings(c, k);
    if (config_is_null(v))
        return true;
    if (v->type != YAML_SEQUENCE_NODE)
        return config_fail(p, v, "%s must be a list of strings", k->name);
    for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top;
         it++) {
        yaml_node_t *item = config_node_at(p, *it);
        char *value = NULL;
        if (!config_read_string(p, item, k->name, false, k->flags & CONFIG_EMPTY_OK, &value))
            return false;
        char ***list = strings_of(c, k);
        size_t *count = count_of(c, k);
        *list = xrealloc(*list, (*count + 1) * sizeof(**list));
        (*list)[(*count)++] = value;
        if (k->check && !k->check(p, item, c, k->name, value))
            return false;
    }
    return true;
}

static bool parse_value(struct config_reader *p, const struct config_key *k, yaml_node_t *v,
                        struct config *c)
{
    void *f = field(c, k);
    uint64_t n = 0;
    switch (k->type) {
    case CONFIG_U32:
        return config_read_u32(p, v, k->name, (uint32_t)k->min, (uint32_t)k->max, f);
    case CONFIG_U32_SIZE:
        if (!config_read_uint(p, v, k->name, k->min, k->max, true, &n))
            return false;
        *(uint32_t *)f = (uint32_t)n;
        return true;
    case CONFIG_U64_SIZE:
        return config_read_uint(p, v, k->name, k->min, k->max, true, f);
    case CONFIG_BOOL:
        return config_read_bool(p, v, k->name, f);
    case CONFIG_STRING: {
        char **s = f;
        if (!config_read_string(p, v, k->name, k->flags & CONFIG_NULLABLE,
                                k->flags & CONFIG_EMPTY_OK, s))
            return false;
        return !k->check || !*s || k->check(p, v, c, k->name, *s);
    }
    case CONFIG_STRINGS:
        return parse_strings(p, k, v, c);
    case CONFIG_ENUM: {
        size_t count = 0;
        while (k->names[count])
            count++;
        return config_read_enum(p, v, k->name, k->names, count, f);
    }
    case CONFIG_MODE:
        return parse_mode(p, v, k->name, f);
    case CONFIG_MINUTE_OF_DAY:
        return parse_minute_of_day(p, v, k->name, f);
    case CONFIG_LIST:
        return k->list->parse(p, v, c);
    }
    return false;
}

struct section_ctx {
    struct config *c;
    const char *section;
};

static bool section_pair(struct config_reader *p, const char *key, yaml_node_t *v, void *ctx)
{
    struct section_ctx *s = ctx;
    const struct config_key *k = key_find(s->section, key);
    if (!k)
        return config_unknown_key(p, s->section, key);
    return parse_value(p, k, v, s->c);
}

static bool top_pair(struct config_reader *p, const char *key, yaml_node_t *v, void *ctx)
{
    struct config *c = ctx;
    const struct config_key *k = key_find(NULL, key);
    if (k)
        return parse_value(p, k, v, c);
    if (is_section(key)) {
        struct section_ctx s = {.c = c, .section = key};
        return config_each_pair(p, v, key, section_pair, &s);
    }
    return config_unknown_key(p, "", key);
}

static struct config *config_defaults(const char *path)
{
    struct config *c = xcalloc(1, sizeof(*c));
    c->path = xstrdup(path);
    for (size_t i = 0; i < CONFIG_KEY_COUNT; i++) {
        const struct config_key *k = &config_keys[i];
        void *f = field(c, k);
        switch (k->type) {
        case CONFIG_U32:
        case CONFIG_U32_SIZE:
        case CONFIG_MODE:
            *(uint32_t *)f = (uint32_t)k->def;
            break;
        case CONFIG_U64_SIZE:
            *(uint64_t *)f = (uint64_t)k->def;
            break;
        case CONFIG_BOOL:
            *(bool *)f = k->def != 0;
            break;
        case CONFIG_STRING:
            *(char **)f = k->def_str ? xstrdup(k->def_str) : NULL;
            break;
        case CONFIG_ENUM:
            *(int *)f = (int)k->def;
            break;
        case CONFIG_MINUTE_OF_DAY:
            *(int32_t *)f = (int32_t)k->def;
            break;
        case CONFIG_STRINGS:
        case CONFIG_LIST:
            break; /* empty: calloc's zeroes */
        }
    }
    return c;
}

/* The bytes a type keeps in struct config. */
static size_t key_storage(enum config_type t)
{
    switch (t) {
    case CONFIG_U32:
    case CONFIG_U32_SIZE:
    case CONFIG_MODE:
        return sizeof(uint32_t);
    case CONFIG_U64_SIZE:
        return sizeof(uint64_t);
    case CONFIG_BOOL:
        return sizeof(bool);
    case CONFIG_STRING:
        return sizeof(char *);
    case CONFIG_ENUM:
        return sizeof(int);
    case CONFIG_MINUTE_OF_DAY:
        return sizeof(int32_t);
    case CONFIG_STRINGS:
        return sizeof(char **);
    case CONFIG_LIST:
        return sizeof(void *);
    }
    return 0;
}

size_t config_key_count(void)
{
    return CONFIG_KEY_COUNT;
}

const char *config_key_name(size_t i)
{
    return i < CONFIG_KEY_COUNT ? config_keys[i].name : NULL;
}

bool config_table_check(char *err, size_t errlen)
{
    for (size_t i = 0; i < CONFIG_KEY_COUNT; i++) {
        const struct config_key *k = &config_keys[i];
        const char *bad = NULL;
        if (k->size != key_storage(k->type))
            bad = "its field's size is not its type's";
        else if ((k->type == CONFIG_U32 || k->type == CONFIG_U32_SIZE) &&
                 (k->max > UINT32_MAX || (uint64_t)k->def < k->min || (uint64_t)k->def > k->max))
            bad = "its bounds or default do not fit";
        else if (k->type == CONFIG_U64_SIZE &&
                 ((uint64_t)k->def < k->min || (uint64_t)k->def > k->max))
            bad = "its default is out of its bounds";
        else if (k->type == CONFIG_ENUM && (!k->names || k->def < 0))
            bad = "an enum needs its names";
        else if (k->type == CONFIG_LIST &&
                 (!k->list || !k->list->parse || !k->list->release ||
                  ((k->flags & CONFIG_RESTART) && (!k->list->same || !k->list->swap))))
            bad = "a list needs parse and release (and same and swap if restart-only)";
        else if (k->type == CONFIG_STRINGS &&
                 (k->count_offset == 0 || k->count_size != sizeof(size_t)))
            bad = "a list of strings needs its size_t count field, COUNT()";
        else if (k->type == CONFIG_STRING && !k->def_str && !(k->flags & CONFIG_NULLABLE))
            bad = "a string that cannot be null needs a default";
        for (size_t j = 0; j < i && !bad; j++)
            if (strcmp(config_keys[j].name, k->name) == 0)
                bad = "it is listed twice";
        if (bad) {
            snprintf(err, errlen, "config key %s: %s", k->name, bad);
            return false;
        }
    }
    return true;
}

static bool key_same(const struct config_key *k, const struct config *a, const struct config *b)
{
    if (k->type == CONFIG_LIST)
        return k->list->same(a, b);
    if (k->type == CONFIG_STRINGS) {
        size_t n = *(const size_t *)(const void *)((const char *)a + k->count_offset);
        if (n != *(const size_t *)(const void *)((const char *)b + k->count_offset))
            return false;
        char *const *x = *(char **const *)cfield(a, k), *const *y = *(char **const *)cfield(b, k);
        for (size_t i = 0; i < n; i++)
            if (strcmp(x[i], y[i]) != 0)
                return false;
        return true;
    }
    if (k->type == CONFIG_STRING) {
        const char *x = *(char *const *)cfield(a, k), *y = *(char *const *)cfield(b, k);
        return x == y || (x && y && strcmp(x, y) == 0);
    }
    return memcmp(cfield(a, k), cfield(b, k), k->size) == 0;
}

size_t config_keep_restart_only(struct config *fresh, struct config *running, char *changed,
                                size_t changed_len)
{
    size_t count = 0, used = 0;
    if (changed_len)
        changed[0] = '\0';
    for (size_t i = 0; i < CONFIG_KEY_COUNT; i++) {
        const struct config_key *k = &config_keys[i];
        if (!(k->flags & CONFIG_RESTART))
            continue;
        if (!key_same(k, fresh, running)) {
            int n =
                snprintf(changed + used, changed_len - used, "%s%s", count ? ", " : "", k->name);
            if (n > 0 && used + (size_t)n < changed_len)
                used += (size_t)n;
            count++;
        }
        if (k->type == CONFIG_LIST) {
            k->list->swap(fresh, running);
            continue;
        }
        if (k->type == CONFIG_STRINGS) {
            size_t n = *count_of(fresh, k);
            *count_of(fresh, k) = *count_of(running, k);
            *count_of(running, k) = n;
        }
        unsigned char tmp[sizeof(uint64_t)];
        memcpy(tmp, field(fresh, k), k->size);
        memcpy(field(fresh, k), field(running, k), k->size);
        memcpy(field(running, k), tmp, k->size);
    }
    return count;
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
static bool check_whole(struct config_reader *p, struct config *c, yaml_node_t *root)
{
    if (!c->listen.unix_path && !c->listen.tcp)
        return config_fail(p, root, "listen needs unix, tcp or both");
    if (c->listen.tcp && !c->auth.token_file) {
        char host[256];
        uint16_t port;
        config_split_host_port(c->listen.tcp, host, sizeof(host), &port);
        if (!is_loopback_host(host))
            return config_fail(p, at_key(p, root, "listen", "tcp", NULL),
                               "listen.tcp is not a loopback address: auth.token_file is required");
    }
    if (c->ingest.batch_rows > c->ingest.queue_rows)
        return config_fail(p, at_key(p, root, "ingest", "batch_rows", "queue_rows"),
                           "ingest.batch_rows (%u) must not exceed ingest.queue_rows (%u)",
                           c->ingest.batch_rows, c->ingest.queue_rows);
    if (c->listen.max_input_bytes < c->listen.max_message_bytes)
        return config_fail(p, at_key(p, root, "listen", "max_input_bytes", "max_message_bytes"),
                           "listen.max_input_bytes must be at least listen.max_message_bytes");
    if (c->spool.segment_bytes > c->spool.max_bytes)
        return config_fail(p, at_key(p, root, "spool", "segment_bytes", "max_bytes"),
                           "spool.segment_bytes must not exceed spool.max_bytes");
    if (c->redis.sentinel_count && !c->redis.sentinel_master)
        return config_fail(p, at_key(p, root, "redis", "sentinels", NULL),
                           "redis.sentinels needs redis.sentinel_master (the primary's name)");
    if (c->redis.sentinel_master && !c->redis.sentinel_count)
        return config_fail(p, at_key(p, root, "redis", "sentinel_master", NULL),
                           "redis.sentinel_master needs redis.sentinels");
    if (c->redis.username && !c->redis.password_file)
        return config_fail(p, at_key(p, root, "redis", "username", NULL),
                           "redis.username needs redis.password_file");
    return true;
}

/* The parser's own error, FILE:LINE:COL first. Returns false. */
static bool parse_failed(struct config_reader *p, const yaml_parser_t *yp)
{
    snprintf(p->err, p->errlen, "%s:%zu:%zu: %s%s%s", p->path, yp->problem_mark.line + 1,
             yp->problem_mark.column + 1, yp->problem ? yp->problem : "invalid YAML",
             yp->context ? " " : "", yp->context ? yp->context : "");
    return false;
}

/* One document per file: a second one (after "---") would be ignored, silently; a bare "---" at
 * the end holds nothing. False with the error set otherwise. */
static bool one_document(struct config_reader *p, yaml_parser_t *yp)
{
    yaml_document_t next;
    if (!yaml_parser_load(yp, &next))
        return parse_failed(p, yp);
    yaml_node_t *second = yaml_document_get_root_node(&next);
    bool one = second == NULL || config_is_null(second);
    if (!one)
        config_fail(p, second, "a second YAML document (after ---): the file must hold one");
    yaml_document_delete(&next);
    return one;
}

struct config *config_parse(const char *path, const char *text, size_t len, char *err,
                            size_t errlen)
{
    struct config_reader p = {.path = path, .err = err, .errlen = errlen};
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
        parse_failed(&p, &yp);
        yaml_parser_delete(&yp);
        config_free(c);
        return NULL;
    }
    yaml_node_t *root = yaml_document_get_root_node(&p.doc);
    c->empty = root == NULL || config_is_null(root);
    if (root == NULL) {
        ok = check_whole(&p, c, NULL); /* an empty file: all defaults */
    } else if (!one_document(&p, &yp)) {
        ok = false; /* its error is set */
    } else if (root->type != YAML_MAPPING_NODE && !config_is_null(root)) {
        config_fail(&p, root, "the configuration must be a mapping of sections");
    } else {
        ok = config_each_pair(&p, root, "", top_pair, c) && check_whole(&p, c, root);
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
    for (size_t i = 0; i < CONFIG_KEY_COUNT; i++) {
        const struct config_key *k = &config_keys[i];
        if (k->type == CONFIG_STRING)
            free(*(char **)field(c, k));
        else if (k->type == CONFIG_STRINGS)
            release_strings(c, k);
        else if (k->type == CONFIG_LIST)
            k->list->release(c);
    }
    free(c->path);
    free(c);
}
