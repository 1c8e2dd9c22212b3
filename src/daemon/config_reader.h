/* config_reader: the config parser's readers of YAML values, shared by config.c (the key table)
 * and config_lists.c (the lists and maps with parsers of their own). Private to the config
 * module: nothing outside src/daemon/config*.c includes it.
 *
 * Every reader names the key it reads in its error, with the node's FILE:LINE:COL, and returns
 * false after filling the reader's error buffer. */
#ifndef USAGED_CONFIG_READER_H
#define USAGED_CONFIG_READER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <yaml.h>

#include "config.h"

struct config_reader {
    yaml_document_t doc;
    const char *path;
    char *err;
    size_t errlen;
    yaml_node_t *key_node; /* the key whose value is being read, for "unknown key" messages */
};

/* A list or map with a parser of its own, hooked into the table of config.c. */
struct config_list {
    bool (*parse)(struct config_reader *p, yaml_node_t *v, struct config *c);
    void (*release)(struct config *c); /* frees what parse built */
    /* Restart-only lists only: whether two configs hold the same list, and an exchange of the
     * two configs' lists. */
    bool (*same)(const struct config *a, const struct config *b);
    void (*swap)(struct config *a, struct config *b);
};

/* config_lists.c */
extern const struct config_list config_providers_list; /* limits.providers */
extern const struct config_list config_users_list;     /* limits.users */
extern const struct config_list config_rules_list;     /* limits.rules */
extern const struct config_list config_refresh_list;   /* refresh */

/* Fills the error (FILE:LINE:COL: message, of node, or 1:1 without one); returns false. */
bool config_fail(struct config_reader *p, const yaml_node_t *node, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
yaml_node_t *config_node_at(struct config_reader *p, int index);
const char *config_scalar(const yaml_node_t *n);
/* A plain ~, null, Null, NULL or nothing. */
bool config_is_null(const yaml_node_t *n);

/* An unsigned integer in [min, max]; with allow_suffix, a size that may end in KiB, MiB, GiB. */
bool config_read_uint(struct config_reader *p, const yaml_node_t *n, const char *key, uint64_t min,
                      uint64_t max, bool allow_suffix, uint64_t *out);
bool config_read_u32(struct config_reader *p, const yaml_node_t *n, const char *key, uint32_t min,
                     uint32_t max, uint32_t *out);
bool config_read_bool(struct config_reader *p, const yaml_node_t *n, const char *key, bool *out);
/* A string; when nullable, null gives NULL. An empty string is refused unless allow_empty. *out
 * is freed and replaced. */
bool config_read_string(struct config_reader *p, const yaml_node_t *n, const char *key,
                        bool nullable, bool allow_empty, char **out);
/* One of count names; *out gets its index. */
bool config_read_enum(struct config_reader *p, const yaml_node_t *n, const char *key,
                      const char *const *names, size_t count, int *out);
/* value (may be NULL: nothing to check) is host:port. */
bool config_check_host_port(struct config_reader *p, const yaml_node_t *n, const char *key,
                            const char *value);

/* Walks a mapping's pairs; for each, calls fn with the key name and value node. Null is an empty
 * mapping. Refuses other non-mapping nodes, non-string keys and duplicate keys. */
typedef bool (*config_pair_fn)(struct config_reader *p, const char *key, yaml_node_t *value,
                               void *ctx);
bool config_each_pair(struct config_reader *p, yaml_node_t *map, const char *what,
                      config_pair_fn fn, void *ctx);
/* "unknown key SECTION.KEY" at the key being read. */
bool config_unknown_key(struct config_reader *p, const char *section, const char *key);

#endif
