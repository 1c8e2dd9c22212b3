/* usage: see usage.h. */
#include "usage.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

struct usage_pair {
    char provider[RULES_PROVIDER_BYTES + 1];
    char model[RULES_MODEL_BYTES + 1]; /* "": none sent */
};

struct usage_ask {
    usage_done_fn done;
    void *arg;
    uint64_t tag;
    uint32_t pending; /* peeks not answered yet, + 1 while they are being made */
    struct usage_pair *pairs;
    size_t npairs;
    struct usage_result result;
    size_t cap;
};

static bool same_rule(const struct usage_rule *a, const struct rules_applied *r,
                      const char *provider, const char *model)
{
    return a->rule.dimension == r->dimension && a->rule.window == r->window &&
           a->rule.shadow == r->shadow && a->rule.by_provider == r->by_provider &&
           a->rule.by_model == r->by_model && strcmp(a->provider, provider) == 0 &&
           strcmp(a->model, model) == 0;
}

static void merge(struct usage_ask *ask, const struct usage_pair *pair,
                  const struct check_result *r)
{
    if (r->degraded)
        ask->result.degraded = true;
    for (int i = 0; r->rules && i < r->rules->n; i++) {
        const struct rules_applied *a = &r->rules->rule[i];
        const char *provider = a->by_provider ? pair->provider : "";
        const char *model = a->by_model ? pair->model : "";
        struct usage_rule *found = NULL;
        for (size_t j = 0; j < ask->result.n && !found; j++)
            if (same_rule(&ask->result.rules[j], a, provider, model))
                found = &ask->result.rules[j];
        if (found && (found->used != RULES_UNLIMITED || r->used[i] == RULES_UNLIMITED))
            continue; /* listed already, and counted there (a disabled provider counts nothing) */
        if (!found) {
            if (ask->result.n == ask->cap) {
                ask->cap = ask->cap ? ask->cap * 2 : 16;
                ask->result.rules =
                    xrealloc(ask->result.rules, ask->cap * sizeof(struct usage_rule));
            }
            found = &ask->result.rules[ask->result.n++];
        }
        found->rule = *a;
        snprintf(found->provider, sizeof(found->provider), "%s", provider);
        snprintf(found->model, sizeof(found->model), "%s", model);
        found->used = r->used[i];
        found->now_ms = r->now_ms;
    }
}

static int compare_rules(const void *x, const void *y)
{
    const struct usage_rule *a = x, *b = y;
    int c = strcmp(a->provider, b->provider);
    if (!c)
        c = strcmp(a->model, b->model);
    if (!c)
        c = (a->rule.limit == RULES_UNLIMITED) - (b->rule.limit == RULES_UNLIMITED);
    if (!c)
        c = a->rule.dimension - b->rule.dimension;
    if (!c)
        c = a->rule.window - b->rule.window;
    if (!c)
        c = a->rule.shadow - b->rule.shadow;
    return c;
}

static void finish(struct usage_ask *ask)
{
    if (--ask->pending)
        return;
    if (ask->result.n)
        qsort(ask->result.rules, ask->result.n, sizeof(*ask->result.rules), compare_rules);
    ask->done(ask->arg, ask->tag, &ask->result);
    free(ask->result.rules);
    free(ask->pairs);
    free(ask);
}

static void on_peeked(void *arg, uint64_t tag, const struct check_result *r)
{
    struct usage_ask *ask = arg;
    merge(ask, &ask->pairs[tag], r);
    finish(ask);
}

static void add_pair(struct usage_ask *ask, const char *provider, const char *model)
{
    for (size_t i = 0; i < ask->npairs; i++)
        if (strcmp(ask->pairs[i].provider, provider) == 0 &&
            strcmp(ask->pairs[i].model, model) == 0)
            return;
    if (ask->npairs == USAGE_PEEKS_MAX) {
        ask->result.truncated = true;
        return;
    }
    struct usage_pair *p = &ask->pairs[ask->npairs++];
    snprintf(p->provider, sizeof(p->provider), "%s", provider);
    snprintf(p->model, sizeof(p->model), "%s", model);
}

/* The models the rules of this user (or every user) name for provider (or every provider). */
static void add_models(struct usage_ask *ask, const struct rules *rules, const uint8_t user_id[16],
                       const char *provider)
{
    const struct rules_rule *lists[] = {rules->every, rules->per_user};
    const size_t counts[] = {rules->nevery, rules->nper_user};
    for (int s = 0; s < 2; s++)
        for (size_t i = 0; i < counts[s]; i++) {
            const struct rules_rule *r = &lists[s][i];
            if (!r->model[0] || (r->has_user && memcmp(r->user_id, user_id, 16) != 0) ||
                (r->provider[0] && strcmp(r->provider, provider) != 0))
                continue;
            add_pair(ask, provider, r->model);
        }
}

bool usage_ask(struct limiter *l, const uint8_t user_id[16], const char *provider,
               size_t provider_len, const char *model, size_t model_len, usage_done_fn done,
               void *arg, uint64_t tag, struct rpc_error *e)
{
    struct usage_ask *ask = xcalloc(1, sizeof(*ask));
    ask->done = done;
    ask->arg = arg;
    ask->tag = tag;
    ask->pairs = xcalloc(USAGE_PEEKS_MAX, sizeof(*ask->pairs));
    char named_provider[RULES_PROVIDER_BYTES + 1] = "", named_model[RULES_MODEL_BYTES + 1] = "";
    if (provider_len)
        memcpy(named_provider, provider, provider_len);
    if (model_len)
        memcpy(named_model, model, model_len);
    size_t nproviders = provider_len ? 1 : l->rules.nproviders;
    for (size_t p = 0; p < nproviders; p++) {
        const char *name = provider_len ? named_provider : l->rules.providers[p].name;
        add_pair(ask, name, named_model);
        if (!model_len)
            add_models(ask, &l->rules, user_id, name);
    }
    ask->pending = 1;
    size_t made = 0;
    for (size_t i = 0; i < ask->npairs; i++) {
        struct limiter_request req = {
            .provider = ask->pairs[i].provider,
            .provider_len = strlen(ask->pairs[i].provider),
            .model = ask->pairs[i].model,
            .model_len = strlen(ask->pairs[i].model),
        };
        memcpy(req.user_id, user_id, 16);
        ask->pending++;
        if (limiter_check(l, &req, on_peeked, ask, i, e)) {
            made++;
        } else {
            ask->pending--;
            if (provider_len || !l->rules.loaded) {
                /* The one provider asked for is unknown, or nothing has been read yet. */
                if (made == 0) {
                    free(ask->pairs);
                    free(ask);
                    return false;
                }
                break;
            }
        }
    }
    finish(ask);
    return true;
}
