/* local: see local.h. */
#include "local.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

#define LOCAL_PROBES 8

void local_init(struct local_limits *ll, uint32_t scopes, uint32_t reservations)
{
    ll->scopes = xcalloc(scopes, sizeof(*ll->scopes));
    ll->nscopes = scopes;
    ll->reservations = xcalloc(reservations, sizeof(*ll->reservations));
    ll->nreservations = reservations;
    ll->next_reservation = 0;
}

void local_free(struct local_limits *ll)
{
    for (uint32_t i = 0; i < ll->nreservations; i++)
        free(ll->reservations[i].charges);
    free(ll->reservations);
    free(ll->scopes);
    ll->reservations = NULL;
    ll->scopes = NULL;
}

uint64_t local_scope_hash(const uint8_t user_id[16], const char *suffix, size_t len)
{
    uint64_t h = 14695981039346656037ULL;
    for (int i = 0; i < 16; i++)
        h = (h ^ user_id[i]) * 1099511628211ULL;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)suffix[i]) * 1099511628211ULL;
    return h ? h : 1;
}

/* The scope's entry, made (or taken from the least recently used) when missing. */
static struct local_scope *scope_get(struct local_limits *ll, uint64_t hash, uint64_t now_ms)
{
    uint32_t mask = ll->nscopes - 1;
    struct local_scope *victim = NULL;
    for (uint32_t p = 0; p < LOCAL_PROBES; p++) {
        struct local_scope *s = &ll->scopes[(uint32_t)(hash + p) & mask];
        if (s->hash == hash) {
            s->last_used_ms = now_ms;
            return s;
        }
        if (!s->hash) {
            victim = s;
            break;
        }
        if (!victim || s->last_used_ms < victim->last_used_ms)
            victim = s;
    }
    memset(victim, 0, sizeof(*victim));
    victim->hash = hash;
    victim->last_used_ms = now_ms;
    for (int w = 0; w < RULES_WINDOWS; w++) {
        victim->window[w] = -1;
        for (int d = 0; d < RULES_DIMENSIONS; d++)
            victim->alerted[0][d][w] = victim->alerted[1][d][w] = -1;
    }
    return victim;
}

/* The count of a rule in its scope's current window (a new window starts at 0). */
static int64_t *count_of(struct local_scope *s, uint8_t dimension, uint8_t window, uint64_t now_ms)
{
    int64_t id = decision_window_id(window, now_ms);
    if (s->window[window] != id) {
        s->window[window] = id;
        for (int d = 0; d < RULES_DIMENSIONS; d++)
            s->count[d][window] = 0;
    }
    return &s->count[dimension][window];
}

/* True when a rule before i counts in the same scope, dimension and window. */
static bool counted_before(const struct rules_resolved *lim, const uint64_t *scope, int i)
{
    for (int j = 0; j < i; j++)
        if (scope[j] == scope[i] && lim->rule[j].dimension == lim->rule[i].dimension &&
            lim->rule[j].window == lim->rule[i].window)
            return true;
    return false;
}

bool local_check(struct local_limits *ll, const uint8_t user_id[16], const uint64_t *scope,
                 const struct rules_resolved *lim, const struct check_amounts *a, uint64_t now_ms,
                 const char *rid, uint64_t ttl_ms, int64_t *used, char alerted[LOCAL_ALERTED_LEN])
{
    bool peek = decision_is_peek(a), allowed = true;
    alerted[0] = '\0';
    for (int i = 0; i < lim->counted; i++) {
        const struct rules_applied *r = &lim->rule[i];
        if (r->dimension == RULES_CONCURRENT) {
            used[i] = RULES_UNLIMITED; /* not counted here: see local.h */
            continue;
        }
        used[i] = *count_of(scope_get(ll, scope[i], now_ms), r->dimension, r->window, now_ms);
        if (!r->shadow &&
            decision_rule_denies(r->limit, used[i], decision_amount(a, r->dimension), peek))
            allowed = false;
    }
    if (!allowed || peek)
        return allowed;
    for (int i = 0; i < lim->counted; i++) {
        const struct rules_applied *r = &lim->rule[i];
        if (r->dimension == RULES_CONCURRENT)
            continue;
        struct local_scope *s = scope_get(ll, scope[i], now_ms);
        int64_t *c = count_of(s, r->dimension, r->window, now_ms);
        int64_t amount = decision_amount(a, r->dimension);
        if (!counted_before(lim, scope, i))
            *c += amount; /* once per count, as the script: a shadow rule may share it */
        used[i] = *c;
        int64_t *mark = &s->alerted[r->shadow][r->dimension][r->window];
        if (amount && r->alert_percent && *mark != s->window[r->window] &&
            *c * 100 >= (int64_t)r->alert_percent * r->limit) {
            *mark = s->window[r->window];
            size_t len = strlen(alerted);
            snprintf(alerted + len, LOCAL_ALERTED_LEN - len, "%s%d", len ? "," : "", i + 1);
        }
    }
    if (!rid)
        return true;
    struct local_reservation *res = &ll->reservations[ll->next_reservation];
    ll->next_reservation = (ll->next_reservation + 1) % ll->nreservations;
    free(res->charges);
    memset(res, 0, sizeof(*res));
    memcpy(res->rid, rid, LOCAL_RID_LEN);
    memcpy(res->user_id, user_id, 16);
    res->expires_ms = now_ms + ttl_ms;
    res->amounts = *a;
    res->n = lim->counted;
    res->charges = xcalloc(lim->counted ? lim->counted : 1, sizeof(*res->charges));
    for (int i = 0; i < lim->counted; i++)
        res->charges[i] = (struct local_charge){
            .scope = scope[i],
            .dimension = lim->rule[i].dimension,
            .window = lim->rule[i].window,
            .window_id = decision_window_id(lim->rule[i].window, now_ms),
        };
    return true;
}

enum local_settle local_settle(struct local_limits *ll, const uint8_t user_id[16], const char *rid,
                               bool has_tokens, uint64_t tokens, bool has_spend, int64_t spend,
                               bool cancel, uint64_t now_ms)
{
    struct local_reservation *res = NULL;
    for (uint32_t i = 0; i < ll->nreservations && !res; i++) {
        struct local_reservation *r = &ll->reservations[i];
        if (r->charges && memcmp(r->rid, rid, LOCAL_RID_LEN) == 0 &&
            memcmp(r->user_id, user_id, 16) == 0 && r->expires_ms > now_ms)
            res = r;
    }
    if (!res)
        return LOCAL_UNKNOWN;
    if (res->settled)
        return LOCAL_DUPLICATE;
    res->settled = true;
    int64_t delta[RULES_DIMENSIONS] = {0};
    if (cancel) {
        delta[RULES_REQUESTS] = -(int64_t)res->amounts.cost;
        delta[RULES_TOKENS] = -(int64_t)res->amounts.tokens;
        delta[RULES_SPEND] = -res->amounts.spend;
    } else {
        if (has_tokens)
            delta[RULES_TOKENS] = (int64_t)tokens - (int64_t)res->amounts.tokens;
        if (has_spend)
            delta[RULES_SPEND] = spend - res->amounts.spend;
    }
    for (uint8_t i = 0; i < res->n; i++) {
        const struct local_charge *c = &res->charges[i];
        bool again = false; /* a count a charge before this one already corrected */
        for (uint8_t j = 0; j < i && !again; j++)
            again = res->charges[j].scope == c->scope &&
                    res->charges[j].dimension == c->dimension &&
                    res->charges[j].window == c->window;
        if (again || c->dimension >= RULES_DIMENSIONS || !delta[c->dimension] ||
            decision_window_id(c->window, now_ms) != c->window_id)
            continue;
        int64_t *count = count_of(scope_get(ll, c->scope, now_ms), c->dimension, c->window, now_ms);
        *count += delta[c->dimension];
        if (*count < 0)
            *count = 0;
    }
    return LOCAL_SETTLED;
}
