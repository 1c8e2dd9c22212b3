/* rules: see rules.h. */
#include "rules.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "xalloc.h"

#define OVERRIDE_UNSET (-2)

static const char load_sql[] =
    "SELECT name, is_enabled, max_requests_per_minute, max_requests_per_day "
    "FROM public.api_providers";
static const char listen_sql[] = "LISTEN usaged_limits";

static int64_t at_least_zero(long long v)
{
    return v < 0 ? 0 : (int64_t)v;
}

static void rules_changed(struct rules *l)
{
    l->generation++;
    if (l->on_change)
        l->on_change(l->change_arg);
}

static void on_load_done(struct pg_conn *pg, const struct pg_outcome *o, void *arg)
{
    (void)pg;
    struct rules *l = arg;
    if (!o->ok) {
        if (!o->connection_lost)
            log_warn("limits: cannot read api_providers: %s", o->error ? o->error : "error");
        return; /* reconnecting (or resync) tries again */
    }
    PGresult *r = o->result;
    int n = r ? PQntuples(r) : 0;
    struct rules_provider *rows = xcalloc((size_t)(n ? n : 1), sizeof(*rows));
    size_t count = 0;
    for (int i = 0; i < n; i++) {
        const char *name = PQgetvalue(r, i, 0);
        if (strlen(name) > RULES_PROVIDER_BYTES)
            continue;
        struct rules_provider *p = &rows[count++];
        strcpy(p->name, name);
        p->enabled = strcmp(PQgetvalue(r, i, 1), "t") == 0;
        /* NULL is unlimited; a negative number (the table's CHECK refuses it, but a table
         * elsewhere may not) allows nothing. */
        p->per_minute =
            PQgetisnull(r, i, 2) ? RULES_UNLIMITED : at_least_zero(atoll(PQgetvalue(r, i, 2)));
        p->per_day =
            PQgetisnull(r, i, 3) ? RULES_UNLIMITED : at_least_zero(atoll(PQgetvalue(r, i, 3)));
    }
    bool changed =
        !l->loaded || count != l->ndb || (count && memcmp(rows, l->db, count * sizeof(*rows)) != 0);
    free(l->db);
    l->db = rows;
    l->ndb = count;
    l->loads++;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    l->last_load_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    if (changed) {
        if (!l->loaded)
            log_info("limits: loaded %zu providers from api_providers", count);
        else
            log_info("limits: api_providers changed; %zu providers", count);
        l->loaded = true;
        rules_changed(l);
    }
}

static void rules_load(struct rules *l)
{
    if (!pg_is_idle(&l->pg)) {
        l->reload_wanted = true;
        return;
    }
    l->reload_wanted = false;
    l->op = (struct pg_op){.sql = load_sql, .done = on_load_done, .arg = l};
    pg_submit(&l->pg, &l->op);
}

static void on_listen_done(struct pg_conn *pg, const struct pg_outcome *o, void *arg)
{
    struct rules *l = arg;
    if (!o->ok) {
        if (!o->connection_lost) {
            /* A connection that cannot LISTEN misses changes: start over on a new one, after
             * the reconnect backoff. */
            log_warn("limits: LISTEN usaged_limits failed: %s", o->error ? o->error : "error");
            pg_reset(pg, "LISTEN failed");
        }
        return;
    }
    /* Read the rows after LISTEN, in a statement of its own (a failed read must not undo the
     * LISTEN): changes made while the connection was down are in them. */
    l->reload_wanted = true;
}

static void on_pg_ready(struct pg_conn *pg, void *arg)
{
    struct rules *l = arg;
    /* ready runs after a connect and after every op: a new connection must LISTEN first, then
     * read; an idle one may owe a reload. */
    if (pg->stats.connects != l->listen_connects) {
        l->listen_connects = pg->stats.connects;
        l->op = (struct pg_op){.sql = listen_sql, .done = on_listen_done, .arg = l};
        pg_submit(&l->pg, &l->op);
    } else if (l->reload_wanted) {
        rules_load(l);
    }
}

static void on_notify(struct pg_conn *pg, const char *channel, const char *payload, void *arg)
{
    (void)pg;
    (void)payload;
    struct rules *l = arg;
    if (strcmp(channel, "usaged_limits") != 0)
        return;
    l->notifications++;
    rules_load(l);
}

static void on_pg_connect_failed(struct pg_conn *pg, void *arg)
{
    (void)pg;
    struct rules *l = arg;
    if (l->on_change)
        l->on_change(l->change_arg);
}

static const struct pg_callbacks rules_callbacks = {
    .ready = on_pg_ready,
    .lost = NULL,
    .notify = on_notify,
    .connect_failed = on_pg_connect_failed,
};

static void on_resync(uv_timer_t *t)
{
    struct rules *l = t->data;
    if (l->listen_connects == l->pg.stats.connects && l->pg.state != PG_DOWN)
        rules_load(l);
}

static int compare_users(const void *a, const void *b)
{
    const struct rules_user *x = a, *y = b;
    int c = memcmp(x->user_id, y->user_id, 16);
    return c ? c : strcmp(x->provider, y->provider);
}

void rules_configure(struct rules *l, const struct config *config)
{
    free(l->overrides);
    free(l->override_enabled);
    free(l->users);
    l->noverrides = config->limits.provider_count;
    l->overrides = xcalloc(l->noverrides ? l->noverrides : 1, sizeof(*l->overrides));
    l->override_enabled = xcalloc(l->noverrides ? l->noverrides : 1, sizeof(int));
    for (size_t i = 0; i < l->noverrides; i++) {
        const struct config_provider_override *o = &config->limits.providers[i];
        struct rules_provider *p = &l->overrides[i];
        snprintf(p->name, sizeof(p->name), "%s", o->provider);
        p->per_minute = o->per_minute.kind == CONFIG_LIMIT_UNSET       ? OVERRIDE_UNSET
                        : o->per_minute.kind == CONFIG_LIMIT_UNLIMITED ? RULES_UNLIMITED
                                                                       : o->per_minute.value;
        p->per_day = o->per_day.kind == CONFIG_LIMIT_UNSET       ? OVERRIDE_UNSET
                     : o->per_day.kind == CONFIG_LIMIT_UNLIMITED ? RULES_UNLIMITED
                                                                 : o->per_day.value;
        l->override_enabled[i] = o->enabled;
    }
    l->nusers = config->limits.user_count;
    l->users = xcalloc(l->nusers ? l->nusers : 1, sizeof(*l->users));
    for (size_t i = 0; i < l->nusers; i++) {
        const struct config_user_override *u = &config->limits.users[i];
        memcpy(l->users[i].user_id, u->user_id, 16);
        snprintf(l->users[i].provider, sizeof(l->users[i].provider), "%s", u->provider);
        l->users[i].per_minute = u->per_minute;
        l->users[i].per_day = u->per_day;
    }
    qsort(l->users, l->nusers, sizeof(*l->users), compare_users);
    l->resync_ms = config->limits.resync_s * 1000;
    if (uv_is_active((uv_handle_t *)&l->resync_timer))
        uv_timer_start(&l->resync_timer, on_resync, l->resync_ms, l->resync_ms);
    rules_changed(l);
}

void rules_init(struct rules *l, uv_loop_t *loop, const struct config *config,
                void (*on_change)(void *arg), void *arg)
{
    memset(l, 0, sizeof(*l));
    l->loop = loop;
    l->on_change = on_change;
    l->change_arg = arg;
    l->listen_connects = 0;
    uv_timer_init(loop, &l->resync_timer);
    l->resync_timer.data = l;
    pg_init(&l->pg, loop, "limits", config->postgres.conninfo,
            config->postgres.connect_timeout_s * 1000, config->postgres.reconnect_max_ms,
            &rules_callbacks, l);
    rules_configure(l, config);
}

void rules_start(struct rules *l)
{
    pg_start(&l->pg);
    uv_timer_start(&l->resync_timer, on_resync, l->resync_ms, l->resync_ms);
}

static const struct rules_provider *find_provider(const struct rules_provider *list, size_t n,
                                                  const char *name, size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (strncmp(list[i].name, name, len) == 0 && list[i].name[len] == '\0')
            return &list[i];
    return NULL;
}

static int64_t pick(struct config_limit over, int64_t fallback)
{
    switch (over.kind) {
    case CONFIG_LIMIT_UNLIMITED:
        return RULES_UNLIMITED;
    case CONFIG_LIMIT_VALUE:
        return over.value;
    case CONFIG_LIMIT_UNSET:
        break;
    }
    return fallback;
}

enum rules_lookup rules_resolve(const struct rules *l, const uint8_t user_id[16],
                                const char *provider, size_t provider_len,
                                struct rules_resolved *out)
{
    if (provider_len > RULES_PROVIDER_BYTES)
        return RULES_UNKNOWN_PROVIDER;
    const struct rules_provider *db = find_provider(l->db, l->ndb, provider, provider_len);
    const struct rules_provider *ov =
        find_provider(l->overrides, l->noverrides, provider, provider_len);
    struct rules_user key;
    memcpy(key.user_id, user_id, 16);
    memcpy(key.provider, provider, provider_len);
    key.provider[provider_len] = '\0';
    const struct rules_user *user =
        l->nusers ? bsearch(&key, l->users, l->nusers, sizeof(*l->users), compare_users) : NULL;
    if (!db && !ov && !user)
        return l->loaded ? RULES_UNKNOWN_PROVIDER : RULES_NOT_LOADED;
    if (!db && !ov && !l->loaded)
        return RULES_NOT_LOADED; /* a user override alone, on top of limits not read yet */

    /* The database's row, then the provider override, then the user override, field by field.
     * A provider only the config knows is unlimited where the config is silent. */
    out->enabled = db ? db->enabled : true;
    out->per_minute = db ? db->per_minute : RULES_UNLIMITED;
    out->per_day = db ? db->per_day : RULES_UNLIMITED;
    if (ov) {
        size_t i = (size_t)(ov - l->overrides);
        if (ov->per_minute != OVERRIDE_UNSET)
            out->per_minute = ov->per_minute;
        if (ov->per_day != OVERRIDE_UNSET)
            out->per_day = ov->per_day;
        if (l->override_enabled[i] >= 0)
            out->enabled = l->override_enabled[i] == 1;
    }
    if (user) {
        out->per_minute = pick(user->per_minute, out->per_minute);
        out->per_day = pick(user->per_day, out->per_day);
    }
    return RULES_FOUND;
}

static void on_handle_closed(uv_handle_t *h)
{
    struct rules *l = h->data;
    if (--l->closing == 0 && l->on_closed)
        l->on_closed(l, l->closed_arg);
}

static void on_pg_closed(struct pg_conn *pg)
{
    struct rules *l = (struct rules *)((char *)pg - offsetof(struct rules, pg));
    if (--l->closing == 0 && l->on_closed)
        l->on_closed(l, l->closed_arg);
}

void rules_close(struct rules *l, void (*on_closed)(struct rules *l, void *arg), void *arg)
{
    l->on_closed = on_closed;
    l->closed_arg = arg;
    l->closing = 2;
    uv_close((uv_handle_t *)&l->resync_timer, on_handle_closed);
    pg_close(&l->pg, on_pg_closed);
    free(l->db);
    free(l->overrides);
    free(l->override_enabled);
    free(l->users);
    l->db = NULL;
    l->overrides = NULL;
    l->override_enabled = NULL;
    l->users = NULL;
}
