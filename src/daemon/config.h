/* config: the YAML configuration file, parsed into a struct config.
 *
 * Pure: the parser takes a file's bytes and returns a struct or an error that names the place
 * (FILE:LINE:COL: message). Every key has a default; an unknown key, a wrong type or a value out
 * of range is an error. One table in config.c declares every key (how to add one is said at its
 * top); conf/usaged.yaml documents every key, and test_config checks the two agree. */
#ifndef USAGED_CONFIG_H
#define USAGED_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A limit that may be absent (take the next source), unlimited, or a number. */
enum config_limit_kind { CONFIG_LIMIT_UNSET = 0, CONFIG_LIMIT_UNLIMITED, CONFIG_LIMIT_VALUE };

struct config_limit {
    enum config_limit_kind kind;
    int64_t value; /* requests per window, when kind is CONFIG_LIMIT_VALUE */
};

struct config_provider_override {
    char *provider;
    struct config_limit per_minute;
    struct config_limit per_day;
    int enabled; /* -1: from the database; 0 or 1: forced */
};

struct config_user_override {
    uint8_t user_id[16];
    char *provider;
    struct config_limit per_minute;
    struct config_limit per_day;
};

/* One rule of limits.rules: a key such as tokens_per_day of one item (an item gives as many
 * rules as it has such keys). */
struct config_rule {
    bool has_user;
    uint8_t user_id[16];
    char *provider;    /* NULL: every provider */
    char *model;       /* NULL: any model */
    int dimension;     /* 0 requests, 1 tokens, 2 spend, 3 concurrent (enum rules_dimension) */
    int window;        /* 0 minute, 1 hour, 2 day, 3 month (enum rules_window); 0 for concurrent */
    int64_t amount;    /* -1: unlimited; spend in micro-dollars */
    bool shadow;       /* counted and reported, never denies */
    int alert_percent; /* alert_at_percent, 1..100; 0: none */
};

struct config_refresh {
    char *view;         /* schema-qualified materialized view name, as written */
    uint32_t every_s;   /* interval between refreshes */
    uint32_t timeout_s; /* statement_timeout of one refresh */
};

enum config_redis_policy { CONFIG_REDIS_LOCAL = 0, CONFIG_REDIS_ALLOW, CONFIG_REDIS_DENY };
enum config_ack { CONFIG_ACK_QUEUED = 0, CONFIG_ACK_DURABLE };

struct config {
    char *path; /* the file it was read from */
    bool empty; /* the file held no settings (nothing, comments, or null): every default */

    struct {
        char *unix_path;    /* NULL: no Unix listener */
        uint32_t unix_mode; /* permission bits of the socket file */
        char *tcp;          /* "host:port", NULL: no TCP listener */
        uint32_t max_connections;
        uint32_t max_message_bytes;
        uint32_t idle_timeout_s;       /* 0: never close idle connections */
        uint32_t max_output_bytes;     /* unsent output per connection before its reads pause */
        uint32_t max_pending_requests; /* unanswered requests per connection before reads pause */
        uint64_t max_input_bytes;      /* input buffered by all connections before reads pause */
    } listen;

    struct {
        char *token_file; /* NULL: no auth */
    } auth;

    struct {
        char *conninfo;
        char *admin_conninfo; /* used by --migrate; NULL: conninfo */
        uint32_t connect_timeout_s;
        uint32_t reconnect_max_ms; /* cap of the reconnect backoff */
    } postgres;

    struct {
        char *address;       /* "host:port" or "unix:/path" */
        char *username;      /* ACL user of AUTH; NULL: the default user */
        char *password_file; /* its first line is the password; NULL: no AUTH */
        char **sentinels;    /* "ip:port" of each; none: no Sentinel */
        size_t sentinel_count;
        char *sentinel_master; /* the primary's name in Sentinel */
        char **cluster;        /* "host:port" seed nodes of a Redis Cluster; none: no Cluster */
        size_t cluster_count;
        char *key_prefix;
        uint32_t timeout_ms;       /* per command, before the fallback policy answers */
        uint32_t reconnect_max_ms; /* cap of the reconnect backoff */
    } redis;

    struct {
        enum config_redis_policy on_redis_error;
        bool log_denied;
        uint32_t resync_s; /* reread api_providers at least this often */
        struct config_provider_override *providers;
        size_t provider_count;
        struct config_user_override *users;
        size_t user_count;
        struct config_rule *rules;
        size_t rule_count;
        uint32_t reservation_ttl_s; /* how long an unsettled reservation is kept in Redis */
        uint32_t settle_queue;      /* settles of log_prompt events held while Redis is away */
        uint32_t alert_queue;       /* alerts held in memory while PostgreSQL is away */
    } limits;

    struct {
        uint32_t batch_rows;
        uint32_t batch_ms;
        uint32_t queue_rows;
        uint32_t connections; /* writer connections per table */
        uint64_t queue_bytes; /* bytes of queued rows before backpressure */
        uint64_t batch_bytes; /* a batch is also sealed at this size */
        enum config_ack ack;
        uint32_t spill_after_ms;  /* a batch failing this long goes to the spool */
        uint32_t drain_timeout_s; /* at shutdown, rows not written by then go to the spool */
    } ingest;

    struct {
        char *dir;
        uint64_t max_bytes;
        uint64_t segment_bytes;
        uint32_t commit_ms; /* longest wait to group appends into one fsync */
    } spool;

    struct config_refresh *refresh;
    size_t refresh_count;

    struct {
        int32_t at_minute; /* minute of the UTC day to run at; -1: never */
        uint32_t partitions_ahead;
        bool retention;
        bool vacuum;
        uint32_t timeout_s;
    } maintenance;

    struct {
        int level; /* enum log_level */
    } log;

    struct {
        char *listen; /* "host:port" of the Prometheus endpoint; NULL: none */
    } metrics;
};

/* Parses `len` bytes of YAML read from `path`. Returns NULL and fills err (FILE:LINE:COL: msg). */
struct config *config_parse(const char *path, const char *text, size_t len, char *err,
                            size_t errlen);
/* Reads and parses a file. */
struct config *config_load(const char *path, char *err, size_t errlen);
void config_free(struct config *c);

/* The table's keys, by index ("section.key"), for tests and tools. */
size_t config_key_count(void);
const char *config_key_name(size_t i);
/* Checks the table itself: field sizes match the types, defaults within bounds, no name twice.
 * Returns false with err filled naming the key at fault. */
bool config_table_check(char *err, size_t errlen);

/* For a reload: the keys only a restart applies keep their running values. Exchanges each such
 * value between fresh (the config about to be in force) and running (about to be freed), so that
 * fresh holds what is really running. Returns how many of them the new file changes, their names
 * in `changed` (comma-separated). */
size_t config_keep_restart_only(struct config *fresh, struct config *running, char *changed,
                                size_t changed_len);

/* Splits "host:port" (host may be "[v6]"); returns false when malformed. host gets a copy. */
bool config_split_host_port(const char *s, char *host, size_t hostlen, uint16_t *port);

#endif
