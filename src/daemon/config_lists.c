/* config_lists: the lists and maps of the config with parsers of their own (limits.providers,
 * limits.users, limits.rules, refresh), hooked into the key table of config.c as struct
 * config_list. */
#include "config_reader.h"

#include "money.h"

#include "utf8.h"
#include "uuid.h"
#include "xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool parse_limit(struct config_reader *p, const yaml_node_t *n, const char *key,
                        struct config_limit *out)
{
    if (config_is_null(n) ||
        (n->type == YAML_SCALAR_NODE && strcmp(config_scalar(n), "unlimited") == 0)) {
        out->kind = CONFIG_LIMIT_UNLIMITED;
        return true;
    }
    uint64_t v = 0;
    if (!config_read_uint(p, n, key, 0, INT32_MAX, false, &v))
        return config_fail(p, n, "%s must be a number of requests (0 .. %d), or unlimited", key,
                           INT32_MAX);
    out->kind = CONFIG_LIMIT_VALUE;
    out->value = (int64_t)v;
    return true;
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

static bool override_pair(struct config_reader *p, const char *key, yaml_node_t *v, void *ctx)
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
        if (!config_read_bool(p, v, name, &b))
            return false;
        *o->enabled = b;
        return true;
    }
    if (o->provider && strcmp(key, "provider") == 0) {
        o->has_provider = true;
        return config_read_string(p, v, name, false, false, o->provider);
    }
    if (o->user_id && strcmp(key, "user_id") == 0) {
        o->has_user_id = true;
        if (v->type != YAML_SCALAR_NODE ||
            !uuid_parse(config_scalar(v), v->data.scalar.length, o->user_id))
            return config_fail(p, v, "%s must be a UUID", name);
        return true;
    }
    return config_fail(p, p->key_node, "unknown key %s", name);
}

/* 1 to 50 characters of UTF-8, as api_providers.name (varchar(50)) and the check method take. */
static bool provider_name_ok(const char *name)
{
    size_t chars;
    return name[0] != '\0' && utf8_valid(name, strlen(name), &chars) && chars <= 50;
}

static bool providers_pair(struct config_reader *p, const char *key, yaml_node_t *v, void *ctx)
{
    struct config *c = ctx;
    if (!provider_name_ok(key))
        return config_fail(p, v, "limits.providers: a provider name must be 1 to 50 characters");
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
    return config_each_pair(p, v, what, override_pair, &oc);
}

static bool parse_users(struct config_reader *p, yaml_node_t *list, struct config *c)
{
    if (config_is_null(list))
        return true;
    if (list->type != YAML_SEQUENCE_NODE)
        return config_fail(p, list, "limits.users must be a list");
    for (yaml_node_item_t *it = list->data.sequence.items.start; it < list->data.sequence.items.top;
         it++) {
        yaml_node_t *item = config_node_at(p, *it);
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
            return config_fail(
                p, item, "%s must be a mapping with user_id, provider, per_minute, per_day", what);
        if (!config_each_pair(p, item, what, override_pair, &oc))
            return false;
        if (!oc.has_user_id)
            return config_fail(p, item, "%s needs a user_id", what);
        if (!oc.has_provider)
            return config_fail(p, item, "%s needs a provider", what);
        if (!provider_name_ok(u->provider))
            return config_fail(p, item, "%s: a provider name must be 1 to 50 characters", what);
        for (size_t j = 0; j < i; j++)
            if (memcmp(c->limits.users[j].user_id, u->user_id, 16) == 0 &&
                strcmp(c->limits.users[j].provider, u->provider) == 0)
                return config_fail(
                    p, item, "%s repeats the user_id and provider of limits.users[%zu]", what, j);
    }
    return true;
}

/* limits.rules: each item names a pattern (user_id, provider, model; each optional) and one or
 * more amounts DIMENSION_per_WINDOW, each of which is a rule. */
static const char *const rule_dimensions[] = {"requests", "tokens", "spend"};
static const char *const rule_windows[] = {"minute", "hour", "day", "month"};
#define RULE_TOKENS_MAX 1000000000000LL

struct rule_item {
    struct config_rule pattern;
    int64_t amount[3][4];
    bool set[3][4];
    int64_t concurrent; /* calls in flight, -1: unlimited */
    bool concurrent_set;
    const char *what;
};

static bool rule_amount(struct config_reader *p, yaml_node_t *v, const char *name, int dimension,
                        int64_t *out)
{
    if (config_is_null(v) ||
        (v->type == YAML_SCALAR_NODE && strcmp(config_scalar(v), "unlimited") == 0)) {
        *out = -1;
        return true;
    }
    if (dimension == 2) {
        if (v->type != YAML_SCALAR_NODE ||
            !money_parse(config_scalar(v), v->data.scalar.length, out))
            return config_fail(p, v,
                               "%s must be an amount of USD (a decimal with at most 6 places, "
                               "up to %lld), or unlimited",
                               name, MONEY_MAX_USD);
        return true;
    }
    uint64_t n = 0;
    uint64_t max = dimension == 0 ? INT32_MAX : (uint64_t)RULE_TOKENS_MAX;
    if (!config_read_uint(p, v, name, 0, max, false, &n))
        return false;
    *out = (int64_t)n;
    return true;
}

static bool rule_pair(struct config_reader *p, const char *key, yaml_node_t *v, void *ctx)
{
    struct rule_item *r = ctx;
    char name[160];
    snprintf(name, sizeof(name), "%s.%s", r->what, key);
    if (strcmp(key, "user_id") == 0) {
        r->pattern.has_user = true;
        if (v->type != YAML_SCALAR_NODE ||
            !uuid_parse(config_scalar(v), v->data.scalar.length, r->pattern.user_id))
            return config_fail(p, v, "%s must be a UUID", name);
        return true;
    }
    if (strcmp(key, "provider") == 0 || strcmp(key, "model") == 0) {
        char **field = key[0] == 'p' ? &r->pattern.provider : &r->pattern.model;
        size_t chars;
        if (!config_read_string(p, v, name, false, false, field))
            return false;
        if (!utf8_valid(*field, strlen(*field), &chars) || chars > 50)
            return config_fail(p, v, "%s must be 1 to 50 characters", name);
        return true;
    }
    if (strcmp(key, "concurrent") == 0) {
        r->concurrent_set = true;
        return rule_amount(p, v, name, 0, &r->concurrent);
    }
    if (strcmp(key, "shadow") == 0)
        return config_read_bool(p, v, name, &r->pattern.shadow);
    if (strcmp(key, "alert_at_percent") == 0) {
        uint64_t n;
        if (!config_read_uint(p, v, name, 1, 100, false, &n))
            return false;
        r->pattern.alert_percent = (int)n;
        return true;
    }
    for (int d = 0; d < 3; d++)
        for (int w = 0; w < 4; w++) {
            char amount_key[32];
            snprintf(amount_key, sizeof(amount_key), "%s_per_%s", rule_dimensions[d],
                     rule_windows[w]);
            if (strcmp(key, amount_key) == 0) {
                r->set[d][w] = true;
                return rule_amount(p, v, name, d, &r->amount[d][w]);
            }
        }
    return config_fail(p, p->key_node, "unknown key %s", name);
}

static bool same_pattern(const struct config_rule *a, const struct config_rule *b)
{
    return a->has_user == b->has_user && (!a->has_user || !memcmp(a->user_id, b->user_id, 16)) &&
           a->shadow == b->shadow &&
           !strcmp(a->provider ? a->provider : "", b->provider ? b->provider : "") &&
           !strcmp(a->model ? a->model : "", b->model ? b->model : "");
}

static bool parse_rules(struct config_reader *p, yaml_node_t *list, struct config *c)
{
    if (config_is_null(list))
        return true;
    if (list->type != YAML_SEQUENCE_NODE)
        return config_fail(p, list, "limits.rules must be a list");
    size_t index = 0;
    for (yaml_node_item_t *it = list->data.sequence.items.start; it < list->data.sequence.items.top;
         it++, index++) {
        yaml_node_t *item = config_node_at(p, *it);
        char what[64];
        snprintf(what, sizeof(what), "limits.rules[%zu]", index);
        struct rule_item r;
        memset(&r, 0, sizeof(r));
        r.what = what;
        if (item->type != YAML_MAPPING_NODE)
            return config_fail(p, item,
                               "%s must be a mapping with user_id, provider, model and amounts "
                               "such as tokens_per_day",
                               what);
        bool ok = config_each_pair(p, item, what, rule_pair, &r);
        size_t added = 0;
        /* The amounts DIMENSION_per_WINDOW, then concurrent (d 3, no window: w 0 alone). */
        for (int d = 0; ok && d < 4; d++)
            for (int w = 0; w < (d < 3 ? 4 : 1); w++) {
                if (d < 3 ? !r.set[d][w] : !r.concurrent_set)
                    continue;
                for (size_t j = 0; j < c->limits.rule_count; j++) {
                    const struct config_rule *o = &c->limits.rules[j];
                    if (o->dimension == d && o->window == w && same_pattern(o, &r.pattern))
                        ok = d < 3 ? config_fail(p, item, "%s repeats %s_per_%s of an earlier rule",
                                                 what, rule_dimensions[d], rule_windows[w])
                                   : config_fail(p, item,
                                                 "%s repeats concurrent of an earlier rule", what);
                }
                if (!ok)
                    break;
                c->limits.rules = xrealloc(c->limits.rules,
                                           (c->limits.rule_count + 1) * sizeof(*c->limits.rules));
                struct config_rule *out = &c->limits.rules[c->limits.rule_count++];
                *out = r.pattern;
                out->provider = r.pattern.provider ? xstrdup(r.pattern.provider) : NULL;
                out->model = r.pattern.model ? xstrdup(r.pattern.model) : NULL;
                out->dimension = d;
                out->window = w;
                out->amount = d < 3 ? r.amount[d][w] : r.concurrent;
                added++;
            }
        if (ok && !added)
            ok = config_fail(p, item, "%s has no amount (such as tokens_per_day: 100000)", what);
        free(r.pattern.provider);
        free(r.pattern.model);
        if (!ok)
            return false;
    }
    return true;
}

static bool refresh_pair(struct config_reader *p, const char *key, yaml_node_t *v, void *ctx)
{
    struct config_refresh *r = ctx;
    if (strcmp(key, "view") == 0) {
        if (!config_read_string(p, v, "refresh[].view", false, false, &r->view))
            return false;
        const char *dot = strchr(r->view, '.');
        if (!dot || dot == r->view || dot[1] == '\0' || strchr(dot + 1, '.'))
            return config_fail(p, v, "refresh[].view must be schema.view, not \"%s\"", r->view);
        return true;
    }
    if (strcmp(key, "every_s") == 0)
        return config_read_u32(p, v, "refresh[].every_s", 1, 86400 * 7, &r->every_s);
    if (strcmp(key, "timeout_s") == 0)
        return config_read_u32(p, v, "refresh[].timeout_s", 1, 86400, &r->timeout_s);
    return config_fail(p, p->key_node, "unknown key refresh[].%s", key);
}

static bool parse_refresh(struct config_reader *p, yaml_node_t *list, struct config *c)
{
    if (config_is_null(list))
        return true;
    if (list->type != YAML_SEQUENCE_NODE)
        return config_fail(p, list, "refresh must be a list of { view, every_s }");
    for (yaml_node_item_t *it = list->data.sequence.items.start; it < list->data.sequence.items.top;
         it++) {
        yaml_node_t *item = config_node_at(p, *it);
        c->refresh = xrealloc(c->refresh, (c->refresh_count + 1) * sizeof(*c->refresh));
        struct config_refresh *r = &c->refresh[c->refresh_count++];
        memset(r, 0, sizeof(*r));
        r->timeout_s = 600;
        if (item->type != YAML_MAPPING_NODE)
            return config_fail(p, item, "each refresh entry must be a mapping { view, every_s }");
        if (!config_each_pair(p, item, "refresh[]", refresh_pair, r))
            return false;
        if (!r->view)
            return config_fail(p, item, "refresh entry needs a view");
        if (!r->every_s)
            return config_fail(p, item, "refresh entry for %s needs every_s", r->view);
        for (size_t j = 0; j + 1 < c->refresh_count; j++)
            if (strcmp(c->refresh[j].view, r->view) == 0)
                return config_fail(p, item, "refresh lists %s twice", r->view);
    }
    return true;
}

static void release_providers(struct config *c)
{
    for (size_t i = 0; i < c->limits.provider_count; i++)
        free(c->limits.providers[i].provider);
    free(c->limits.providers);
}

static void release_users(struct config *c)
{
    for (size_t i = 0; i < c->limits.user_count; i++)
        free(c->limits.users[i].provider);
    free(c->limits.users);
}

static void release_rules(struct config *c)
{
    for (size_t i = 0; i < c->limits.rule_count; i++) {
        free(c->limits.rules[i].provider);
        free(c->limits.rules[i].model);
    }
    free(c->limits.rules);
}

static void release_refresh(struct config *c)
{
    for (size_t i = 0; i < c->refresh_count; i++)
        free(c->refresh[i].view);
    free(c->refresh);
}

static bool parse_providers(struct config_reader *p, yaml_node_t *v, struct config *c)
{
    return config_each_pair(p, v, "limits.providers", providers_pair, c);
}

const struct config_list config_providers_list = {parse_providers, release_providers, NULL, NULL};
const struct config_list config_users_list = {parse_users, release_users, NULL, NULL};
const struct config_list config_rules_list = {parse_rules, release_rules, NULL, NULL};
const struct config_list config_refresh_list = {parse_refresh, release_refresh, NULL, NULL};
