/* rules: which limits a check is held to (PROTOCOL.md, "Protocol 1, additions: budgets").
 *
 * A rule limits one dimension (requests, tokens, spend) over one window (minute, hour, day,
 * month, UTC) for a pattern: a user or every user, a provider or every provider, a model or any
 * model. Three sources: api_providers (requests per minute and per day of a provider, for every
 * user), the table public.usage_limits, and the config (limits.providers, limits.users and
 * limits.rules). Rules that count the same thing (same provider, model, dimension and window)
 * replace one another: one naming the user beats one for every user; then the config beats
 * usage_limits, which beats api_providers. So a user's rule can raise or lift a limit.
 *
 * The rows are loaded at start over a connection of their own (both tables in one statement, so
 * one snapshot), reloaded when PostgreSQL sends NOTIFY usaged_limits (the migrations' triggers
 * on both tables), and resynced every limits.resync_s in case a notification was missed. Every
 * change bumps a generation number, so that caches built on old rules can tell.
 *
 * A concurrent rule (no window) caps a user's calls in flight; a shadow rule is counted and
 * reported but never denies. A shadow rule does not replace an enforced one: both apply, and
 * shadow rules replace one another by the same precedence. A rule may carry an alert share
 * (alert_at_percent): see alerts.h. */
#ifndef USAGED_RULES_H
#define USAGED_RULES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "pg.h"

#define RULES_PROVIDER_MAX 50 /* characters, as api_providers.name is varchar(50) */
#define RULES_PROVIDER_BYTES (RULES_PROVIDER_MAX * 4) /* their UTF-8 bytes, at most */
#define RULES_MODEL_MAX 50
#define RULES_MODEL_BYTES (RULES_MODEL_MAX * 4)
#define RULES_UNLIMITED (-1)
/* Rules applying to one check, at most: 2 (provider, model) x 2 (named or not) x (3 dimensions
 * x 4 windows + concurrent) x 2 (enforced, shadow) can all apply at once. */
#define RULES_APPLY_MAX 104

/* The windowed dimensions come first: RULES_DIMENSIONS counts them. */
enum rules_dimension { RULES_REQUESTS = 0, RULES_TOKENS, RULES_SPEND, RULES_CONCURRENT };
#define RULES_DIMENSIONS 3
enum rules_window { RULES_MINUTE = 0, RULES_HOUR, RULES_DAY, RULES_MONTH, RULES_WINDOWS };
enum rules_source { RULES_FROM_PROVIDERS = 0, RULES_FROM_TABLE, RULES_FROM_CONFIG };

/* What a rule's counter is kept per, besides the user: the answer's `scope`. */
enum rules_scope { RULES_SCOPE_USER = 0, RULES_SCOPE_PROVIDER, RULES_SCOPE_MODEL };

struct rules_rule {
    uint8_t user_id[16];
    bool has_user;                           /* false: every user */
    uint8_t dimension;                       /* enum rules_dimension */
    uint8_t window;                          /* enum rules_window; 0 for concurrent */
    uint8_t source;                          /* enum rules_source */
    bool shadow;                             /* counted and reported, never denies */
    uint8_t alert_percent;                   /* 1..100; 0: none */
    int64_t amount;                          /* RULES_UNLIMITED or >= 0; spend in micro-dollars */
    char provider[RULES_PROVIDER_BYTES + 1]; /* "": every provider */
    char model[RULES_MODEL_BYTES + 1];       /* "": any model */
};

/* One rule that applies to a check. */
struct rules_applied {
    uint8_t dimension;
    uint8_t window;        /* 0 for concurrent */
    bool shadow;           /* never denies: reported in shadow_denied_by */
    uint8_t alert_percent; /* 1..100: alert when a charge takes the use to this share; 0 none */
    bool by_provider;      /* its counter is the check's provider's (else every provider's) */
    bool by_model;         /* its counter is the check's model's (else any model's) */
    int64_t limit;         /* RULES_UNLIMITED or >= 0 */
};

/* What a check is held to. */
struct rules_resolved {
    bool enabled;
    bool has_budget; /* a tokens, spend or concurrent rule with a limit applies: the check gets a
                        reservation */
    uint8_t n;       /* rules applying, in rule[] ordered by scope, dimension, window */
    uint8_t counted; /* of them, the ones with a limit (the first `counted`; unlimited after) */
    struct rules_applied rule[RULES_APPLY_MAX];
    /* The v1 answer's keys: the provider's requests per minute and per day (every model). */
    int64_t per_minute; /* RULES_UNLIMITED: no such rule, or unlimited */
    int64_t per_day;
};

enum rules_lookup {
    RULES_FOUND = 0,
    RULES_UNKNOWN_PROVIDER, /* known to neither the database nor the config */
    RULES_NOT_LOADED,       /* the database's limits have not been read yet */
};

/* A provider the daemon knows, and whether it is enabled. */
struct rules_provider {
    char name[RULES_PROVIDER_BYTES + 1];
    int8_t db_enabled;     /* api_providers.is_enabled; -1: no row */
    int8_t config_enabled; /* limits.providers.NAME.enabled; -1: unset */
};

struct rules {
    uv_loop_t *loop;
    struct pg_conn pg;
    uv_timer_t resync_timer;
    uint32_t resync_ms;
    /* The sources, as read. */
    struct rules_rule *db; /* api_providers' limits and usage_limits' rows */
    size_t ndb;
    struct rules_provider *db_providers;
    size_t ndb_providers;
    struct rules_rule *config_rules;
    size_t nconfig_rules;
    struct rules_provider *config_providers;
    size_t nconfig_providers;
    /* Merged from the sources at every change. */
    struct rules_rule *every; /* rules for every user */
    size_t nevery;
    struct rules_rule *per_user; /* rules naming a user, sorted by user_id */
    size_t nper_user;
    struct rules_provider *providers; /* sorted by name */
    size_t nproviders;
    bool has_budgets;         /* some tokens or spend rule exists */
    bool loaded;              /* the database's rows have been read once */
    bool reload_wanted;       /* a NOTIFY or resync arrived while the connection was busy */
    bool no_table;            /* usage_limits does not exist (not migrated): api_providers only */
    bool warned_no_table;     /* and that was logged */
    uint64_t generation;      /* bumped by every change of any source */
    uint64_t listen_connects; /* pg connects count when LISTEN was last sent */
    struct pg_op op;
    uint64_t loads;
    uint64_t notifications;
    uint64_t last_load_ms; /* wall clock */
    void (*on_change)(void *arg);
    void *change_arg;
    int closing;
    void (*on_closed)(struct rules *l, void *arg);
    void *closed_arg;
};

void rules_init(struct rules *l, uv_loop_t *loop, const struct config *config,
                void (*on_change)(void *arg), void *arg);
void rules_start(struct rules *l);
/* Takes the rules and resync interval of a (reloaded) config. */
void rules_configure(struct rules *l, const struct config *config);
/* The rules applying to a check of user_id with provider and (model_len > 0) model. */
enum rules_lookup rules_resolve(const struct rules *l, const uint8_t user_id[16],
                                const char *provider, size_t provider_len, const char *model,
                                size_t model_len, struct rules_resolved *out);
/* rules_resolve through a cache. Checks of a user no rule names resolve as every user's, alike
 * for a provider and model until the rules change (a new generation): the cache is a
 * direct-mapped table of them by provider and model, RULES_CACHE_ENTRIES zeroed entries that
 * the caller allocates. */
#define RULES_CACHE_ENTRIES 64 /* a power of two */
struct rules_cached {
    uint64_t generation; /* the rules' generation + 1; 0: empty */
    uint8_t provider_len, model_len;
    char provider[RULES_PROVIDER_BYTES];
    char model[RULES_MODEL_BYTES];
    struct rules_resolved lim;
};
enum rules_lookup rules_resolve_cached(const struct rules *l, struct rules_cached *cache,
                                       const uint8_t user_id[16], const char *provider,
                                       size_t provider_len, const char *model, size_t model_len,
                                       struct rules_resolved *out);
/* Merges sources into the lists rules_resolve reads; exposed for the unit tests, which fill
 * db, config_rules and the provider lists by hand. */
void rules_merge(struct rules *l);
void rules_close(struct rules *l, void (*on_closed)(struct rules *l, void *arg), void *arg);

/* Names, as the protocol spells them. */
const char *rules_dimension_name(enum rules_dimension d);
const char *rules_window_name(enum rules_window w);
bool rules_parse_dimension(const char *s, uint8_t *out);
bool rules_parse_window(const char *s, uint8_t *out);

#endif
