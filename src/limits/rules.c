/* rules: see rules.h. */
#include "rules.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "log.h"
#include "money.h"
#include "uuid.h"
#include "xalloc.h"

/* Both sources in one statement: one snapshot, one round trip. Column 0 says which: 'p' rows
 * are providers (name, is_enabled, per minute, per day), 'r' rows usage_limits' rules. */
static const char load_sql[] =
    "SELECT 'p', name, is_enabled, max_requests_per_minute::text, max_requests_per_day::text, "
    "NULL, NULL, NULL, NULL, NULL, false, NULL::int FROM public.api_providers "
    "UNION ALL "
    "SELECT 'r', provider, NULL, NULL, NULL, user_id::text, model, dimension, period, "
    "amount::text, shadow, alert_at_percent FROM public.usage_limits";
static const char load_providers_sql[] =
    "SELECT 'p', name, is_enabled, max_requests_per_minute::text, max_requests_per_day::text, "
    "NULL, NULL, NULL, NULL, NULL, false FROM public.api_providers";
static const char listen_sql[] = "LISTEN usaged_limits";

static const char *const dimension_names[] = {"requests", "tokens", "spend", "concurrent"};
static const char *const window_names[] = {"minute", "hour", "day", "month"};

const char *rules_dimension_name(enum rules_dimension d)
{
    return d <= RULES_CONCURRENT ? dimension_names[d] : "concurrent";
}

const char *rules_window_name(enum rules_window w)
{
    return w < RULES_WINDOWS ? window_names[w] : NULL;
}

bool rules_parse_dimension(const char *s, uint8_t *out)
{
    for (uint8_t i = 0; i <= RULES_CONCURRENT; i++)
        if (strcmp(s, dimension_names[i]) == 0) {
            *out = i;
            return true;
        }
    return false;
}

bool rules_parse_window(const char *s, uint8_t *out)
{
    for (uint8_t i = 0; i < RULES_WINDOWS; i++)
        if (strcmp(s, window_names[i]) == 0) {
            *out = i;
            return true;
        }
    return false;
}

/* ---- merging the sources ---- */

static int compare_rules_by_user(const void *a, const void *b)
{
    const struct rules_rule *x = a, *y = b;
    return memcmp(x->user_id, y->user_id, 16);
}

static int compare_providers(const void *a, const void *b)
{
    return strcmp(((const struct rules_provider *)a)->name,
                  ((const struct rules_provider *)b)->name);
}

static struct rules_provider *provider_in(struct rules_provider *list, size_t n, const char *name,
                                          size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (strncmp(list[i].name, name, len) == 0 && list[i].name[len] == '\0')
            return &list[i];
    return NULL;
}

static void add_provider(struct rules_provider **list, size_t *n, size_t *cap, const char *name,
                         int db_enabled, int config_enabled)
{
    struct rules_provider *p = provider_in(*list, *n, name, strlen(name));
    if (!p) {
        if (*n == *cap) {
            *cap = *cap ? *cap * 2 : 16;
            *list = xrealloc(*list, *cap * sizeof(**list));
        }
        p = &(*list)[(*n)++];
        memset(p, 0, sizeof(*p));
        snprintf(p->name, sizeof(p->name), "%s", name);
        p->db_enabled = p->config_enabled = -1;
    }
    if (db_enabled >= 0)
        p->db_enabled = (int8_t)db_enabled;
    if (config_enabled >= 0)
        p->config_enabled = (int8_t)config_enabled;
}

/* Copies the rules of both sources that name a user (users) or not into one new array. */
static struct rules_rule *gather(const struct rules_rule *const *from, const size_t *count,
                                 bool users, size_t *n)
{
    size_t total = 0;
    for (int s = 0; s < 2; s++)
        for (size_t i = 0; i < count[s]; i++)
            total += from[s][i].has_user == users;
    struct rules_rule *list = xmalloc((total ? total : 1) * sizeof(*list));
    *n = 0;
    for (int s = 0; s < 2; s++)
        for (size_t i = 0; i < count[s]; i++)
            if (from[s][i].has_user == users)
                list[(*n)++] = from[s][i];
    return list;
}

/* Every-user rules by provider ("" first), so that a check reads only its provider's and the
 * every-provider ones. */
static int compare_rules_by_provider(const void *a, const void *b)
{
    return strcmp(((const struct rules_rule *)a)->provider,
                  ((const struct rules_rule *)b)->provider);
}

/* The run of rules in a list sorted by provider whose provider is name[0..len). */
static void provider_run(const struct rules_rule *list, size_t n, const char *name, size_t len,
                         size_t *from, size_t *to)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (strncmp(list[mid].provider, name, len) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *from = lo;
    while (lo < n && strncmp(list[lo].provider, name, len) == 0 && list[lo].provider[len] == '\0')
        lo++;
    *to = lo;
}

void rules_merge(struct rules *l)
{
    free(l->every);
    free(l->per_user);
    free(l->providers);
    l->every = l->per_user = NULL;
    l->nevery = l->nper_user = 0;
    l->providers = NULL;
    l->nproviders = 0;
    size_t cap = 0;
    for (size_t i = 0; i < l->ndb_providers; i++)
        add_provider(&l->providers, &l->nproviders, &cap, l->db_providers[i].name,
                     l->db_providers[i].db_enabled, -1);
    for (size_t i = 0; i < l->nconfig_providers; i++)
        add_provider(&l->providers, &l->nproviders, &cap, l->config_providers[i].name, -1,
                     l->config_providers[i].config_enabled);
    /* A rule naming a provider makes it known, as a provider of limits.providers does. */
    const struct rules_rule *sources[] = {l->db, l->config_rules};
    const size_t counts[] = {l->ndb, l->nconfig_rules};
    l->has_budgets = false;
    for (int s = 0; s < 2; s++)
        for (size_t i = 0; i < counts[s]; i++) {
            if (sources[s][i].provider[0])
                add_provider(&l->providers, &l->nproviders, &cap, sources[s][i].provider, -1, -1);
            if (sources[s][i].dimension != RULES_REQUESTS || sources[s][i].shadow)
                l->has_budgets = true; /* the over-limit cache stays off */
        }
    if (l->nproviders)
        qsort(l->providers, l->nproviders, sizeof(*l->providers), compare_providers);
    l->every = gather(sources, counts, false, &l->nevery);
    l->per_user = gather(sources, counts, true, &l->nper_user);
    if (l->nevery)
        qsort(l->every, l->nevery, sizeof(*l->every), compare_rules_by_provider);
    if (l->nper_user)
        qsort(l->per_user, l->nper_user, sizeof(*l->per_user), compare_rules_by_user);
}

static void rules_changed(struct rules *l)
{
    rules_merge(l);
    l->generation++;
    if (l->on_change)
        l->on_change(l->change_arg);
}

/* ---- loading the database's rules ---- */

/* A limit read from the database: NULL is unlimited; a negative number (the tables' CHECKs
 * refuse it, but a table elsewhere may not) allows nothing. Spend is read to the micro-dollar;
 * the other dimensions count whole units (numeric(20,6) prints ".000000", which is ignored).
 * Spend above MONEY_MAX_USD (migration 0019 refuses it; a row from before may have it) is more
 * than any check can ask or Redis's counts hold exactly: unlimited, and *over is set; so is
 * numeric's Infinity, of any dimension. */
static int64_t db_amount(const PGresult *r, int row, int col, bool spend, bool *ok, bool *over)
{
    *ok = true;
    *over = false;
    if (PQgetisnull(r, row, col))
        return RULES_UNLIMITED;
    const char *v = PQgetvalue(r, row, col);
    if (v[0] == '-')
        return 0;
    if (strcmp(v, "Infinity") == 0) { /* numeric's, from PostgreSQL 14 */
        *over = true;
        return RULES_UNLIMITED;
    }
    int64_t amount;
    if (spend) {
        *ok = money_parse(v, strlen(v), &amount);
        size_t whole = strspn(v, "0123456789");
        if (!*ok && whole > 0 && (v[whole] == '\0' || v[whole] == '.') &&
            (whole > 10 || strtoll(v, NULL, 10) > MONEY_MAX_USD)) {
            *ok = *over = true;
            return RULES_UNLIMITED;
        }
        return *ok ? amount : 0;
    }
    char *end;
    errno = 0;
    long long whole = strtoll(v, &end, 10);
    if (errno || end == v || (*end && *end != '.')) {
        *ok = false;
        return 0;
    }
    return (int64_t)whole;
}

static bool read_rule(const PGresult *r, int i, struct rules_rule *out, const char **why,
                      size_t *over)
{
    memset(out, 0, sizeof(*out));
    out->source = RULES_FROM_TABLE;
    if (!PQgetisnull(r, i, 1))
        snprintf(out->provider, sizeof(out->provider), "%s", PQgetvalue(r, i, 1));
    if (!PQgetisnull(r, i, 5)) {
        const char *u = PQgetvalue(r, i, 5);
        out->has_user = uuid_parse(u, strlen(u), out->user_id);
    }
    if (!PQgetisnull(r, i, 6))
        snprintf(out->model, sizeof(out->model), "%s", PQgetvalue(r, i, 6));
    out->shadow = strcmp(PQgetvalue(r, i, 10), "t") == 0;
    if (!PQgetisnull(r, i, 11))
        out->alert_percent = (uint8_t)atoi(PQgetvalue(r, i, 11));
    if (!rules_parse_dimension(PQgetvalue(r, i, 7), &out->dimension)) {
        *why = "its dimension is unknown";
        return false;
    }
    if (out->dimension == RULES_CONCURRENT) {
        if (!PQgetisnull(r, i, 8)) {
            *why = "a concurrent rule has no period";
            return false;
        }
    } else if (PQgetisnull(r, i, 8) || !rules_parse_window(PQgetvalue(r, i, 8), &out->window)) {
        *why = "a rule needs a period of minute, hour, day or month";
        return false;
    }
    bool ok, big;
    out->amount = db_amount(r, i, 9, out->dimension == RULES_SPEND, &ok, &big);
    if (!ok) {
        *why = "its amount is out of range";
        return false;
    }
    *over += big;
    return true;
}

static void add_db_rule(struct rules_rule **rows, size_t *n, size_t *cap,
                        const struct rules_rule *rule)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 32;
        *rows = xrealloc(*rows, *cap * sizeof(**rows));
    }
    (*rows)[(*n)++] = *rule;
}

static void read_provider(const PGresult *r, int i, struct rules_rule **rows, size_t *n,
                          size_t *cap, struct rules_provider *p)
{
    memset(p, 0, sizeof(*p));
    snprintf(p->name, sizeof(p->name), "%s", PQgetvalue(r, i, 1));
    p->db_enabled = strcmp(PQgetvalue(r, i, 2), "t") == 0;
    p->config_enabled = -1;
    for (int w = 0; w < 2; w++) {
        struct rules_rule rule = {.dimension = RULES_REQUESTS,
                                  .window = w == 0 ? RULES_MINUTE : RULES_DAY,
                                  .source = RULES_FROM_PROVIDERS};
        bool ok, big;
        rule.amount = db_amount(r, i, 3 + w, false, &ok, &big);
        snprintf(rule.provider, sizeof(rule.provider), "%s", p->name);
        if (ok)
            add_db_rule(rows, n, cap, &rule);
    }
}

static bool same_rules(const struct rules *l, const struct rules_rule *rows, size_t n,
                       const struct rules_provider *providers, size_t np)
{
    return l->loaded && n == l->ndb && np == l->ndb_providers &&
           (n == 0 || memcmp(rows, l->db, n * sizeof(*rows)) == 0) &&
           (np == 0 || memcmp(providers, l->db_providers, np * sizeof(*providers)) == 0);
}

static void rules_load(struct rules *l);

static void on_load_done(struct pg_conn *pg, const struct pg_outcome *o, void *arg)
{
    (void)pg;
    struct rules *l = arg;
    if (!o->ok) {
        if (!l->no_table && strcmp(o->sqlstate, "42P01") == 0) {
            /* usage_limits is missing: the migrations have not been applied. Run on
             * api_providers alone rather than not at all. */
            if (!l->warned_no_table)
                log_warn("limits: public.usage_limits does not exist (run usaged --migrate); "
                         "reading api_providers only");
            l->warned_no_table = true;
            l->no_table = true;
            l->reload_wanted = true;
        } else if (!o->connection_lost) {
            log_warn("limits: cannot read the limits: %s", o->error ? o->error : "error");
        }
        return; /* reconnecting (or resync) tries again */
    }
    PGresult *r = o->result;
    int n = r ? PQntuples(r) : 0;
    struct rules_rule *rows = NULL;
    struct rules_provider *providers = xcalloc((size_t)(n ? n : 1), sizeof(*providers));
    size_t count = 0, cap = 0, np = 0, skipped = 0, over = 0;
    const char *why = NULL;
    for (int i = 0; i < n; i++) {
        if (strlen(PQgetvalue(r, i, 1)) > RULES_PROVIDER_BYTES ||
            strlen(PQgetvalue(r, i, 6)) > RULES_MODEL_BYTES)
            continue;
        if (PQgetvalue(r, i, 0)[0] == 'p') {
            read_provider(r, i, &rows, &count, &cap, &providers[np++]);
            continue;
        }
        struct rules_rule rule;
        if (read_rule(r, i, &rule, &why, &over))
            add_db_rule(&rows, &count, &cap, &rule);
        else
            skipped++;
    }
    bool changed = !same_rules(l, rows, count, providers, np);
    free(l->db);
    free(l->db_providers);
    l->db = rows;
    l->ndb = count;
    l->db_providers = providers;
    l->ndb_providers = np;
    l->loads++;
    l->last_load_ms = (uint64_t)clock_wall_ms();
    if (changed) {
        log_info("limits: %s %zu providers and %zu rules", l->loaded ? "reloaded" : "loaded", np,
                 count);
        if (skipped)
            log_warn("limits: %zu rows of usage_limits skipped (the last because %s)", skipped,
                     why);
        if (over)
            log_warn("limits: %zu rows of usage_limits above what a check counts (spend over "
                     "%lld USD, or Infinity) read as unlimited",
                     over, (long long)MONEY_MAX_USD);
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
    l->op = (struct pg_op){
        .sql = l->no_table ? load_providers_sql : load_sql, .done = on_load_done, .arg = l};
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
    l->no_table = false; /* the migrations may have run since */
    if (l->listen_connects == l->pg.stats.connects && l->pg.state != PG_DOWN)
        rules_load(l);
}

/* ---- the config's rules ---- */

static void add_config_rule(struct rules *l, const uint8_t *user_id, const char *provider,
                            const char *model, uint8_t dimension, uint8_t window, int64_t amount,
                            bool shadow, uint8_t alert_percent)
{
    l->config_rules = xrealloc(l->config_rules, (l->nconfig_rules + 1) * sizeof(*l->config_rules));
    struct rules_rule *r = &l->config_rules[l->nconfig_rules++];
    memset(r, 0, sizeof(*r));
    if (user_id) {
        memcpy(r->user_id, user_id, 16);
        r->has_user = true;
    }
    snprintf(r->provider, sizeof(r->provider), "%s", provider ? provider : "");
    snprintf(r->model, sizeof(r->model), "%s", model ? model : "");
    r->dimension = dimension;
    r->window = window;
    r->source = RULES_FROM_CONFIG;
    r->amount = amount;
    r->shadow = shadow;
    r->alert_percent = alert_percent;
}

static void add_v1_limits(struct rules *l, const uint8_t *user_id, const char *provider,
                          struct config_limit per_minute, struct config_limit per_day)
{
    const struct config_limit limits[2] = {per_minute, per_day};
    const uint8_t windows[2] = {RULES_MINUTE, RULES_DAY};
    for (int i = 0; i < 2; i++)
        if (limits[i].kind != CONFIG_LIMIT_UNSET)
            add_config_rule(l, user_id, provider, NULL, RULES_REQUESTS, windows[i],
                            limits[i].kind == CONFIG_LIMIT_UNLIMITED ? RULES_UNLIMITED
                                                                     : limits[i].value,
                            false, 0);
}

void rules_configure(struct rules *l, const struct config *config)
{
    free(l->config_rules);
    free(l->config_providers);
    l->config_rules = NULL;
    l->nconfig_rules = 0;
    l->nconfig_providers = config->limits.provider_count;
    l->config_providers =
        xcalloc(l->nconfig_providers ? l->nconfig_providers : 1, sizeof(*l->config_providers));
    /* limits.providers and limits.users are rules of the config, as v1 read them. */
    for (size_t i = 0; i < l->nconfig_providers; i++) {
        const struct config_provider_override *o = &config->limits.providers[i];
        struct rules_provider *p = &l->config_providers[i];
        snprintf(p->name, sizeof(p->name), "%s", o->provider);
        p->db_enabled = -1;
        p->config_enabled = (int8_t)o->enabled;
        add_v1_limits(l, NULL, o->provider, o->per_minute, o->per_day);
    }
    for (size_t i = 0; i < config->limits.user_count; i++) {
        const struct config_user_override *u = &config->limits.users[i];
        add_v1_limits(l, u->user_id, u->provider, u->per_minute, u->per_day);
    }
    for (size_t i = 0; i < config->limits.rule_count; i++) {
        const struct config_rule *c = &config->limits.rules[i];
        add_config_rule(l, c->has_user ? c->user_id : NULL, c->provider, c->model,
                        (uint8_t)c->dimension, (uint8_t)c->window, c->amount, c->shadow,
                        (uint8_t)c->alert_percent);
    }
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

/* ---- resolving a check's rules ---- */

/* Rules counting the same thing for a check share a slot: which of provider and model they
 * name (2 x 2), the dimension and the window (or concurrent), enforced or shadow. A shadow rule
 * never replaces an enforced one: it watches a limit beside it. */
#define KINDS (RULES_DIMENSIONS * RULES_WINDOWS + 1)
#define SLOTS (4 * KINDS * 2)

static int slot_of(const struct rules_rule *r)
{
    int scope = (r->provider[0] ? 1 : 0) + (r->model[0] ? 2 : 0);
    int kind =
        r->dimension == RULES_CONCURRENT ? KINDS - 1 : r->dimension * RULES_WINDOWS + r->window;
    return (scope * KINDS + kind) * 2 + r->shadow;
}

static int rank_of(const struct rules_rule *r)
{
    return (r->has_user ? 8 : 0) + r->source + 1;
}

/* The best rule of each slot so far; taken[] says which slots hold one, so that neither the
 * clearing nor the walk in slot order costs all SLOTS when a check has a few rules. */
struct best_rules {
    uint64_t taken[(SLOTS + 63) / 64];
    const struct rules_rule *rule[SLOTS]; /* valid where taken */
};

static void consider(const struct rules_rule *r, const char *provider, size_t plen,
                     const char *model, size_t mlen, struct best_rules *best)
{
    if (r->provider[0] && (strncmp(r->provider, provider, plen) != 0 || r->provider[plen]))
        return;
    if (r->model[0] && (!mlen || strncmp(r->model, model, mlen) != 0 || r->model[mlen]))
        return;
    int s = slot_of(r);
    uint64_t bit = 1ULL << (s % 64);
    if (!(best->taken[s / 64] & bit)) {
        best->taken[s / 64] |= bit;
        best->rule[s] = r;
    } else if (rank_of(r) > rank_of(best->rule[s])) {
        best->rule[s] = r;
    }
}

/* Where the user's rules start in the sorted list (or would). */
static size_t user_run(const struct rules *l, const uint8_t user_id[16])
{
    size_t lo = 0, hi = l->nper_user;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (memcmp(l->per_user[mid].user_id, user_id, 16) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static bool user_has_own(const struct rules *l, const uint8_t user_id[16])
{
    size_t i = l->nper_user ? user_run(l, user_id) : 0;
    return i < l->nper_user && memcmp(l->per_user[i].user_id, user_id, 16) == 0;
}

/* Copies what a check is held to (the rules applying, not all RULES_APPLY_MAX). */
static void resolved_copy(struct rules_resolved *dst, const struct rules_resolved *src)
{
    memcpy(dst, src, offsetof(struct rules_resolved, rule));
    memcpy(dst->rule, src->rule, src->n * sizeof(src->rule[0]));
    dst->per_minute = src->per_minute;
    dst->per_day = src->per_day;
}

enum rules_lookup rules_resolve(const struct rules *l, const uint8_t user_id[16],
                                const char *provider, size_t provider_len, const char *model,
                                size_t model_len, struct rules_resolved *out)
{
    if (provider_len > RULES_PROVIDER_BYTES || model_len > RULES_MODEL_BYTES)
        return RULES_UNKNOWN_PROVIDER;
    struct rules_provider key;
    memcpy(key.name, provider, provider_len);
    key.name[provider_len] = '\0';
    const struct rules_provider *p =
        l->nproviders
            ? bsearch(&key, l->providers, l->nproviders, sizeof(*l->providers), compare_providers)
            : NULL;
    if (!p)
        return l->loaded ? RULES_UNKNOWN_PROVIDER : RULES_NOT_LOADED;
    if (!l->loaded &&
        !provider_in(l->config_providers, l->nconfig_providers, key.name, provider_len))
        return RULES_NOT_LOADED; /* a user's rule alone, on top of limits not read yet */

    struct best_rules best;
    memset(best.taken, 0, sizeof(best.taken));
    size_t from, to;
    provider_run(l->every, l->nevery, "", 0, &from, &to); /* every provider's rules */
    for (size_t i = from; i < to; i++)
        consider(&l->every[i], provider, provider_len, model, model_len, &best);
    provider_run(l->every, l->nevery, provider, provider_len, &from, &to);
    for (size_t i = from; i < to; i++)
        consider(&l->every[i], provider, provider_len, model, model_len, &best);
    for (size_t i = user_run(l, user_id);
         i < l->nper_user && memcmp(l->per_user[i].user_id, user_id, 16) == 0; i++)
        consider(&l->per_user[i], provider, provider_len, model, model_len, &best);

    out->enabled = p->config_enabled >= 0 ? p->config_enabled == 1 : p->db_enabled != 0;
    out->has_budget = false;
    out->n = out->counted = 0;
    out->per_minute = out->per_day = RULES_UNLIMITED;
    /* Limited rules first (the ones Redis counts), then the unlimited ones; each in slot order:
     * every provider, provider, model, provider and model; by dimension; by window. */
    for (int pass = 0; pass < 2; pass++)
        for (int w = 0; w < (SLOTS + 63) / 64; w++)
            for (uint64_t left = best.taken[w]; left; left &= left - 1) {
                const struct rules_rule *r = best.rule[w * 64 + __builtin_ctzll(left)];
                if ((r->amount == RULES_UNLIMITED) != (pass == 1))
                    continue;
                struct rules_applied *a = &out->rule[out->n++];
                a->dimension = r->dimension;
                a->window = r->window;
                a->shadow = r->shadow;
                a->alert_percent = r->dimension == RULES_CONCURRENT ? 0 : r->alert_percent;
                a->by_provider = r->provider[0] != '\0';
                a->by_model = r->model[0] != '\0';
                a->limit = r->amount;
                if (pass == 0) {
                    out->counted++;
                    if (r->dimension != RULES_REQUESTS)
                        out->has_budget = true;
                }
                if (a->by_provider && !a->by_model && r->dimension == RULES_REQUESTS &&
                    !r->shadow) {
                    if (r->window == RULES_MINUTE)
                        out->per_minute = r->amount;
                    else if (r->window == RULES_DAY)
                        out->per_day = r->amount;
                }
            }
    return RULES_FOUND;
}

enum rules_lookup rules_resolve_cached(const struct rules *l, struct rules_cached *cache,
                                       const uint8_t user_id[16], const char *provider,
                                       size_t provider_len, const char *model, size_t model_len,
                                       struct rules_resolved *out)
{
    if (user_has_own(l, user_id) || provider_len > RULES_PROVIDER_BYTES ||
        model_len > RULES_MODEL_BYTES)
        return rules_resolve(l, user_id, provider, provider_len, model, model_len, out);
    uint32_t h = 2166136261u; /* FNV-1a of the provider, a separator, the model */
    for (size_t i = 0; i < provider_len; i++)
        h = (h ^ (uint8_t)provider[i]) * 16777619u;
    h = (h ^ 0xffu) * 16777619u;
    for (size_t i = 0; i < model_len; i++)
        h = (h ^ (uint8_t)model[i]) * 16777619u;
    struct rules_cached *e = &cache[h & (RULES_CACHE_ENTRIES - 1)];
    if (e->generation == l->generation + 1 && e->provider_len == provider_len &&
        e->model_len == model_len && memcmp(e->provider, provider, provider_len) == 0 &&
        memcmp(e->model, model, model_len) == 0) {
        resolved_copy(out, &e->lim);
        return RULES_FOUND;
    }
    enum rules_lookup found =
        rules_resolve(l, user_id, provider, provider_len, model, model_len, out);
    if (found == RULES_FOUND) {
        e->generation = l->generation + 1;
        e->provider_len = (uint8_t)provider_len;
        e->model_len = (uint8_t)model_len;
        memcpy(e->provider, provider, provider_len);
        memcpy(e->model, model, model_len);
        resolved_copy(&e->lim, out);
    }
    return found;
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
    free(l->db_providers);
    free(l->config_rules);
    free(l->config_providers);
    free(l->every);
    free(l->per_user);
    free(l->providers);
    l->db = l->config_rules = l->every = l->per_user = NULL;
    l->db_providers = l->config_providers = l->providers = NULL;
}
