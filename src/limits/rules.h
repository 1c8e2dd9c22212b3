/* rules: where a check's limits come from. In order: a per-user override in the config, a
 * per-provider override in the config, the provider's row in api_providers. The rows are loaded
 * at start over a connection of their own, reloaded when PostgreSQL sends NOTIFY usaged_limits
 * (the migrations' trigger on api_providers), and resynced every limits.resync_s in case a
 * notification was missed. Every change bumps a generation number, so that caches built on old
 * limits can tell. */
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
#define RULES_UNLIMITED (-1)

struct rules_provider {
    char name[RULES_PROVIDER_BYTES + 1];
    bool enabled;
    int64_t per_minute; /* RULES_UNLIMITED or >= 0 */
    int64_t per_day;
};

struct rules_user {
    uint8_t user_id[16];
    char provider[RULES_PROVIDER_BYTES + 1];
    struct config_limit per_minute;
    struct config_limit per_day;
};

/* What a check is held to. */
struct rules_resolved {
    bool enabled;
    int64_t per_minute; /* RULES_UNLIMITED or >= 0 */
    int64_t per_day;
};

enum rules_lookup {
    RULES_FOUND = 0,
    RULES_UNKNOWN_PROVIDER, /* known to neither the database nor the config */
    RULES_NOT_LOADED,       /* the database's limits have not been read yet */
};

struct rules {
    uv_loop_t *loop;
    struct pg_conn pg;
    uv_timer_t resync_timer;
    uint32_t resync_ms;
    struct rules_provider *db; /* rows of api_providers */
    size_t ndb;
    bool loaded;                      /* db holds a successful load */
    bool reload_wanted;               /* a NOTIFY or resync arrived while the connection was busy */
    struct rules_provider *overrides; /* limits.providers: UNSET fields are -2 */
    int *override_enabled;            /* per override: -1 unset, 0, 1 */
    size_t noverrides;
    struct rules_user *users; /* limits.users, sorted by (user_id, provider) */
    size_t nusers;
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
/* Takes the overrides and resync interval of a (reloaded) config. */
void rules_configure(struct rules *l, const struct config *config);
enum rules_lookup rules_resolve(const struct rules *l, const uint8_t user_id[16],
                                const char *provider, size_t provider_len,
                                struct rules_resolved *out);
void rules_close(struct rules *l, void (*on_closed)(struct rules *l, void *arg), void *arg);

#endif
