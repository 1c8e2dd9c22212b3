/* Budgets' pure pieces: spend amounts exact to the micro-dollar, and which rules apply to a
 * check (sources, patterns, precedence). */
#include "check.h"
#include "decision.h"
#include "local.h"
#include "money.h"
#include "rules.h"

#include "usaged/protocol.h"

#include <stdlib.h>
#include <string.h>

TEST(spend_is_read_exactly_to_six_places)
{
    int64_t m = -1;
    CHECK(money_parse("0.0035", 6, &m) && m == 3500);
    CHECK(money_parse("5", 1, &m) && m == 5000000);
    CHECK(money_parse("12.500000", 9, &m) && m == 12500000);
    CHECK(money_parse("1000000000", 10, &m) && m == 1000000000LL * 1000000);
    CHECK(!money_parse("0.0000001", 9, &m)); /* 7 places */
    CHECK(!money_parse("-1", 2, &m));
    CHECK(!money_parse("1e3", 3, &m));
    CHECK(!money_parse("", 0, &m));
    CHECK(!money_parse(".5", 2, &m));
    CHECK(!money_parse("5.", 2, &m));
    CHECK(!money_parse("1000000000.000001", 17, &m));
    CHECK(!money_parse("abc", 3, &m));
}

TEST(a_float_is_read_as_its_shortest_decimal)
{
    int64_t m = -1;
    CHECK(money_from_double(0.1, &m) && m == 100000);
    CHECK(money_from_double(0.0035, &m) && m == 3500);
    CHECK(money_from_double(1e-6, &m) && m == 1);
    CHECK(money_from_double(1234.5, &m) && m == 1234500000);
    CHECK(money_from_double(0.0, &m) && m == 0);
    CHECK(!money_from_double(1e-7, &m));
    CHECK(!money_from_double(0.1234567, &m));
    CHECK(!money_from_double(-0.5, &m));
    CHECK(!money_from_double(1e300, &m));
}

TEST(spend_is_written_with_six_places)
{
    char text[MONEY_TEXT_MAX];
    CHECK_EQ_INT(money_format(3500, text), 8);
    CHECK_EQ_STR(text, "0.003500");
    money_format(5000000, text);
    CHECK_EQ_STR(text, "5.000000");
}

/* ---- rules ---- */

static const uint8_t alice[16] = {0xa1};
static const uint8_t bob[16] = {0xb0};

static struct rules_rule make(const uint8_t *user, const char *provider, const char *model,
                              enum rules_dimension d, enum rules_window w, int64_t amount,
                              enum rules_source source)
{
    struct rules_rule r;
    memset(&r, 0, sizeof(r));
    if (user) {
        memcpy(r.user_id, user, 16);
        r.has_user = true;
    }
    snprintf(r.provider, sizeof(r.provider), "%s", provider ? provider : "");
    snprintf(r.model, sizeof(r.model), "%s", model ? model : "");
    r.dimension = (uint8_t)d;
    r.window = (uint8_t)w;
    r.amount = amount;
    r.source = (uint8_t)source;
    return r;
}

static struct rules_provider openai = {.name = "openai", .db_enabled = 1, .config_enabled = -1};

static void setup(struct rules *l, struct rules_rule *db, size_t ndb, struct rules_rule *config,
                  size_t nconfig)
{
    memset(l, 0, sizeof(*l));
    l->db = db;
    l->ndb = ndb;
    l->config_rules = config;
    l->nconfig_rules = nconfig;
    l->db_providers = &openai;
    l->ndb_providers = 1;
    l->loaded = true;
    rules_merge(l);
}

static void teardown(struct rules *l)
{
    free(l->every);
    free(l->per_user);
    free(l->providers);
}

static const struct rules_applied *find(const struct rules_resolved *r, enum rules_dimension d,
                                        enum rules_window w)
{
    for (int i = 0; i < r->n; i++)
        if (r->rule[i].dimension == d && r->rule[i].window == w)
            return &r->rule[i];
    return NULL;
}

TEST(a_user_rule_lifts_the_providers_limit_for_that_user_only)
{
    struct rules_rule db[] = {
        make(NULL, "openai", NULL, RULES_REQUESTS, RULES_MINUTE, 60, RULES_FROM_PROVIDERS),
        make(alice, "openai", NULL, RULES_REQUESTS, RULES_MINUTE, RULES_UNLIMITED,
             RULES_FROM_TABLE),
    };
    struct rules l;
    setup(&l, db, 2, NULL, 0);
    struct rules_resolved r;
    CHECK_EQ_INT(rules_resolve(&l, alice, "openai", 6, "", 0, &r), RULES_FOUND);
    CHECK_EQ_INT(r.n, 1);
    CHECK_EQ_INT(r.counted, 0);
    CHECK_EQ_INT(r.per_minute, RULES_UNLIMITED);
    CHECK_EQ_INT(rules_resolve(&l, bob, "openai", 6, "", 0, &r), RULES_FOUND);
    CHECK_EQ_INT(r.counted, 1);
    CHECK_EQ_INT(r.per_minute, 60);
    teardown(&l);
}

TEST(the_config_beats_the_table_which_beats_api_providers)
{
    struct rules_rule db[] = {
        make(NULL, "openai", NULL, RULES_REQUESTS, RULES_DAY, 1000, RULES_FROM_PROVIDERS),
        make(NULL, "openai", NULL, RULES_REQUESTS, RULES_DAY, 500, RULES_FROM_TABLE),
    };
    struct rules_rule config[] = {
        make(NULL, "openai", NULL, RULES_REQUESTS, RULES_DAY, 200, RULES_FROM_CONFIG),
    };
    struct rules l;
    setup(&l, db, 2, NULL, 0);
    struct rules_resolved r;
    rules_resolve(&l, bob, "openai", 6, "", 0, &r);
    CHECK_EQ_INT(r.per_day, 500);
    teardown(&l);
    setup(&l, db, 2, config, 1);
    rules_resolve(&l, bob, "openai", 6, "", 0, &r);
    CHECK_EQ_INT(r.per_day, 200);
    CHECK_EQ_INT(r.n, 1);
    teardown(&l);
}

TEST(a_model_rule_applies_only_to_checks_that_send_that_model)
{
    struct rules_rule db[] = {
        make(NULL, "openai", "gpt-4o", RULES_TOKENS, RULES_MINUTE, 30000, RULES_FROM_TABLE),
        make(NULL, NULL, NULL, RULES_SPEND, RULES_MONTH, 50000000, RULES_FROM_TABLE),
    };
    struct rules l;
    setup(&l, db, 2, NULL, 0);
    struct rules_resolved r;
    rules_resolve(&l, bob, "openai", 6, "", 0, &r);
    CHECK_EQ_INT(r.n, 1); /* the every-provider spend rule only */
    const struct rules_applied *month = find(&r, RULES_SPEND, RULES_MONTH);
    CHECK(month != NULL);
    CHECK(month && !month->by_provider);
    CHECK(r.has_budget);
    rules_resolve(&l, bob, "openai", 6, "gpt-4o-mini", 11, &r);
    CHECK_EQ_INT(r.n, 1);
    rules_resolve(&l, bob, "openai", 6, "gpt-4o", 6, &r);
    CHECK_EQ_INT(r.n, 2);
    const struct rules_applied *t = find(&r, RULES_TOKENS, RULES_MINUTE);
    CHECK(t && t->by_provider && t->by_model && t->limit == 30000);
    teardown(&l);
}

TEST(rules_of_different_windows_or_dimensions_all_apply)
{
    struct rules_rule db[] = {
        make(NULL, "openai", NULL, RULES_REQUESTS, RULES_MINUTE, 60, RULES_FROM_PROVIDERS),
        make(NULL, "openai", NULL, RULES_REQUESTS, RULES_DAY, 1000, RULES_FROM_PROVIDERS),
        make(NULL, "openai", NULL, RULES_TOKENS, RULES_MINUTE, 30000, RULES_FROM_TABLE),
        make(NULL, "openai", NULL, RULES_TOKENS, RULES_DAY, 1000000, RULES_FROM_TABLE),
        make(NULL, "openai", NULL, RULES_SPEND, RULES_DAY, 5000000, RULES_FROM_TABLE),
        make(NULL, "openai", NULL, RULES_SPEND, RULES_MONTH, 50000000, RULES_FROM_TABLE),
        make(NULL, "anthropic", NULL, RULES_SPEND, RULES_MONTH, 1, RULES_FROM_TABLE),
    };
    struct rules l;
    setup(&l, db, 7, NULL, 0);
    struct rules_resolved r;
    rules_resolve(&l, alice, "openai", 6, "", 0, &r);
    CHECK_EQ_INT(r.n, 6);
    CHECK_EQ_INT(r.counted, 6);
    CHECK(r.has_budget);
    CHECK_EQ_INT(r.per_minute, 60);
    CHECK_EQ_INT(r.per_day, 1000);
    teardown(&l);
}

TEST(an_unknown_provider_is_unknown_and_a_disabled_one_is_found_disabled)
{
    struct rules l;
    setup(&l, NULL, 0, NULL, 0);
    struct rules_resolved r;
    CHECK_EQ_INT(rules_resolve(&l, alice, "mistral", 7, "", 0, &r), RULES_UNKNOWN_PROVIDER);
    openai.db_enabled = 0;
    rules_merge(&l);
    CHECK_EQ_INT(rules_resolve(&l, alice, "openai", 6, "", 0, &r), RULES_FOUND);
    CHECK(!r.enabled);
    openai.db_enabled = 1;
    teardown(&l);

    /* A rule naming a provider makes it known. */
    struct rules_rule db[] = {
        make(NULL, "mistral", NULL, RULES_TOKENS, RULES_DAY, 10, RULES_FROM_TABLE)};
    setup(&l, db, 1, NULL, 0);
    CHECK_EQ_INT(rules_resolve(&l, alice, "mistral", 7, "", 0, &r), RULES_FOUND);
    CHECK(r.enabled);
    teardown(&l);
}

TEST(a_shadow_rule_applies_beside_the_enforced_one_and_replaces_only_shadow_rules)
{
    struct rules_rule db[] = {
        make(NULL, "openai", NULL, RULES_TOKENS, RULES_DAY, 1000, RULES_FROM_TABLE),
        make(NULL, "openai", NULL, RULES_TOKENS, RULES_DAY, 500, RULES_FROM_TABLE),
        make(alice, "openai", NULL, RULES_TOKENS, RULES_DAY, 300, RULES_FROM_TABLE),
        make(NULL, "openai", NULL, RULES_CONCURRENT, 0, 4, RULES_FROM_TABLE),
    };
    db[1].shadow = db[2].shadow = true;
    struct rules l;
    setup(&l, db, 4, NULL, 0);
    struct rules_resolved r;
    CHECK_EQ_INT(rules_resolve(&l, bob, "openai", 6, "", 0, &r), RULES_FOUND);
    CHECK_EQ_INT(r.n, 3);
    int shadow = -1, enforced = -1, concurrent = -1;
    for (int i = 0; i < r.n; i++) {
        if (r.rule[i].dimension == RULES_CONCURRENT)
            concurrent = i;
        else if (r.rule[i].shadow)
            shadow = i;
        else
            enforced = i;
    }
    CHECK(shadow >= 0 && enforced >= 0 && concurrent >= 0);
    CHECK(r.rule[enforced].limit == 1000 && r.rule[shadow].limit == 500);
    CHECK(r.rule[concurrent].limit == 4 && r.has_budget); /* a slot needs a reservation */
    /* Alice's shadow rule replaces the every-user shadow rule, not the enforced one. */
    CHECK_EQ_INT(rules_resolve(&l, alice, "openai", 6, "", 0, &r), RULES_FOUND);
    CHECK_EQ_INT(r.n, 3);
    for (int i = 0; i < r.n; i++)
        if (r.rule[i].dimension == RULES_TOKENS)
            CHECK(r.rule[i].limit == (r.rule[i].shadow ? 300 : 1000));
    teardown(&l);
}

TEST(a_shadow_rule_never_denies_and_is_named_when_it_would_have)
{
    struct rules_resolved r = {.enabled = true, .n = 2, .counted = 2};
    r.rule[0] = (struct rules_applied){
        .dimension = RULES_TOKENS, .window = RULES_DAY, .by_provider = true, .limit = 1000};
    r.rule[1] = (struct rules_applied){.dimension = RULES_TOKENS,
                                       .window = RULES_MINUTE,
                                       .by_provider = true,
                                       .limit = 100,
                                       .shadow = true};
    struct check_amounts a = {.cost = 1, .tokens = 80};
    struct check_result out;
    /* Allowed; the shadow rule had 50 before this check: 50 + 80 > 100 would have denied. */
    int64_t used[2] = {130, 130};
    decision_make(&r, &a, true, used, 0, &out);
    CHECK(out.allowed && out.denied_by == -1 && out.shadow_denied_by == 1);
    /* 20 before: room under the shadow rule too. */
    int64_t fits[2] = {100, 100};
    decision_make(&r, &a, true, fits, 0, &out);
    CHECK(out.shadow_denied_by == -1);
    /* Denied by the enforced rule: the shadow rule is never the reason. */
    int64_t full[2] = {990, 990};
    decision_make(&r, &a, false, full, 0, &out);
    CHECK(!out.allowed && out.denied_by == 0 && out.shadow_denied_by == 1);
    CHECK_EQ_STR(out.reason, USAGED_REASON_DAY_LIMIT);
}

TEST(a_concurrent_rule_denies_with_concurrency_limit_and_a_short_retry)
{
    struct rules_resolved r = {.enabled = true, .n = 1, .counted = 1};
    r.rule[0] = (struct rules_applied){.dimension = RULES_CONCURRENT, .limit = 2};
    struct check_amounts one = {.cost = 1}, peek = {0};
    CHECK_EQ_INT(decision_amount(&one, RULES_CONCURRENT), 1);
    CHECK_EQ_INT(decision_amount(&peek, RULES_CONCURRENT), 0);
    CHECK_EQ_INT(decision_rule_reset_ms(&r.rule[0], 123456), 0);
    int64_t used[1] = {2};
    struct check_result out;
    decision_make(&r, &one, false, used, 0, &out);
    CHECK_EQ_STR(out.reason, USAGED_REASON_CONCURRENCY_LIMIT);
    CHECK_EQ_INT(out.retry_after_ms, DECISION_CONCURRENCY_RETRY_MS);
    CHECK_EQ_INT(out.denied_by, 0);
}

TEST(the_local_fallback_counts_no_concurrent_rule_and_no_shadow_rule_denies)
{
    struct local_limits ll;
    local_init(&ll, 64, 8);
    struct rules_resolved r = {.enabled = true, .n = 2, .counted = 2};
    r.rule[0] = (struct rules_applied){.dimension = RULES_CONCURRENT, .limit = 0};
    r.rule[1] = (struct rules_applied){
        .dimension = RULES_REQUESTS, .window = RULES_MINUTE, .limit = 1, .shadow = true};
    uint64_t scope[2] = {local_scope_hash(alice, ":a", 2), local_scope_hash(alice, ":a", 2)};
    struct check_amounts one = {.cost = 1};
    int64_t used[2];
    char alerted[LOCAL_ALERTED_LEN];
    for (int i = 0; i < 3; i++) {
        CHECK(local_check(&ll, alice, scope, &r, &one, 60000, "0123456789abcdef", 1000, used,
                          alerted));
        CHECK(used[0] == RULES_UNLIMITED && used[1] == i + 1);
    }
    CHECK_EQ_INT(local_settle(&ll, alice, "0123456789abcdef", false, 0, false, 0, true, 60001),
                 LOCAL_SETTLED);
    local_free(&ll);
}

TEST(a_check_reads_its_providers_rules_and_the_every_provider_ones_only)
{
    struct rules_rule db[] = {
        make(NULL, "openai-x", NULL, RULES_TOKENS, RULES_DAY, 1, RULES_FROM_TABLE),
        make(NULL, "open", NULL, RULES_TOKENS, RULES_HOUR, 2, RULES_FROM_TABLE),
        make(NULL, "openai", NULL, RULES_TOKENS, RULES_MINUTE, 3, RULES_FROM_TABLE),
        make(NULL, NULL, NULL, RULES_SPEND, RULES_MONTH, 4, RULES_FROM_TABLE),
        make(NULL, "anthropic", NULL, RULES_TOKENS, RULES_MONTH, 5, RULES_FROM_TABLE),
        make(NULL, "openaj", NULL, RULES_REQUESTS, RULES_MONTH, 6, RULES_FROM_TABLE),
    };
    struct rules l;
    setup(&l, db, 6, NULL, 0);
    struct rules_resolved r;
    CHECK_EQ_INT(rules_resolve(&l, alice, "openai", 6, "", 0, &r), RULES_FOUND);
    CHECK_EQ_INT(r.n, 2);
    CHECK(find(&r, RULES_TOKENS, RULES_MINUTE) && find(&r, RULES_SPEND, RULES_MONTH));
    CHECK_EQ_INT(rules_resolve(&l, alice, "open", 4, "", 0, &r), RULES_FOUND);
    CHECK_EQ_INT(r.n, 2);
    CHECK(find(&r, RULES_TOKENS, RULES_HOUR) != NULL);
    teardown(&l);
}

int main(void)
{
    return RUN(T(spend_is_read_exactly_to_six_places), T(a_float_is_read_as_its_shortest_decimal),
               T(spend_is_written_with_six_places),
               T(a_user_rule_lifts_the_providers_limit_for_that_user_only),
               T(the_config_beats_the_table_which_beats_api_providers),
               T(a_model_rule_applies_only_to_checks_that_send_that_model),
               T(rules_of_different_windows_or_dimensions_all_apply),
               T(an_unknown_provider_is_unknown_and_a_disabled_one_is_found_disabled),
               T(a_shadow_rule_applies_beside_the_enforced_one_and_replaces_only_shadow_rules),
               T(a_shadow_rule_never_denies_and_is_named_when_it_would_have),
               T(a_concurrent_rule_denies_with_concurrency_limit_and_a_short_retry),
               T(the_local_fallback_counts_no_concurrent_rule_and_no_shadow_rule_denies),
               T(a_check_reads_its_providers_rules_and_the_every_provider_ones_only));
}
