/* The config parser: defaults, every kind of value, and errors that name FILE:LINE:COL. */
#include "check.h"
#include "config.h"
#include "log.h"

#include <stdlib.h>
#include <yaml.h>

static char err[512];

static struct config *parse(const char *yaml)
{
    err[0] = '\0';
    return config_parse("t.yaml", yaml, strlen(yaml), err, sizeof(err));
}

TEST(an_empty_file_gives_every_documented_default)
{
    struct config *c = parse("");
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK_EQ_STR(c->listen.unix_path, "/run/usaged/usaged.sock");
    CHECK_EQ_INT(c->listen.unix_mode, 0660);
    CHECK(c->listen.tcp == NULL);
    CHECK_EQ_INT(c->listen.max_connections, 4096);
    CHECK_EQ_INT(c->listen.max_message_bytes, 1048576);
    CHECK_EQ_INT(c->listen.idle_timeout_s, 600);
    CHECK_EQ_STR(c->redis.address, "127.0.0.1:6379");
    CHECK_EQ_STR(c->redis.key_prefix, "usaged:");
    CHECK_EQ_INT(c->limits.on_redis_error, CONFIG_REDIS_LOCAL);
    CHECK(c->limits.log_denied);
    CHECK_EQ_INT(c->ingest.batch_rows, 5000);
    CHECK_EQ_INT(c->ingest.batch_ms, 200);
    CHECK_EQ_INT(c->ingest.queue_rows, 200000);
    CHECK_EQ_INT(c->ingest.queue_bytes, 256 << 20);
    CHECK_EQ_INT(c->ingest.batch_bytes, 16 << 20);
    CHECK_EQ_INT(c->ingest.ack, CONFIG_ACK_QUEUED);
    CHECK_EQ_STR(c->spool.dir, "/var/lib/usaged/spool");
    CHECK_EQ_INT(c->spool.max_bytes, 1073741824);
    CHECK_EQ_INT(c->log.level, LOG_INFO);
    CHECK_EQ_INT(c->refresh_count, 0);
    config_free(c);
}

TEST(the_design_example_parses_with_its_values)
{
    struct config *c = parse("listen:\n"
                             "  unix: /tmp/u.sock\n"
                             "  unix_mode: 0600\n"
                             "  tcp: 127.0.0.1:7878\n"
                             "  max_connections: 10\n"
                             "  max_message_bytes: 2MiB\n"
                             "limits:\n"
                             "  on_redis_error: deny\n"
                             "  log_denied: false\n"
                             "  providers: { openai: { per_minute: 60, per_day: 10000 },"
                             " groq: { per_minute: unlimited, enabled: false } }\n"
                             "  users: [ { user_id: \"0189d2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d\","
                             " provider: openai, per_minute: 600 } ]\n"
                             "ingest: { batch_rows: 100, batch_ms: 50, queue_rows: 1000,"
                             " ack: durable }\n"
                             "refresh:\n"
                             "  - { view: analytics.api_usage_daily, every_s: 60 }\n"
                             "log: { level: debug }\n");
    CHECK(c != NULL);
    if (!c) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    CHECK_EQ_STR(c->listen.unix_path, "/tmp/u.sock");
    CHECK_EQ_INT(c->listen.unix_mode, 0600);
    CHECK_EQ_STR(c->listen.tcp, "127.0.0.1:7878");
    CHECK_EQ_INT(c->listen.max_message_bytes, 2 * 1048576);
    CHECK_EQ_INT(c->limits.on_redis_error, CONFIG_REDIS_DENY);
    CHECK(!c->limits.log_denied);
    CHECK_EQ_INT(c->limits.provider_count, 2);
    CHECK_EQ_STR(c->limits.providers[0].provider, "openai");
    CHECK_EQ_INT(c->limits.providers[0].per_minute.kind, CONFIG_LIMIT_VALUE);
    CHECK_EQ_INT(c->limits.providers[0].per_minute.value, 60);
    CHECK_EQ_INT(c->limits.providers[0].per_day.value, 10000);
    CHECK_EQ_INT(c->limits.providers[0].enabled, -1);
    CHECK_EQ_INT(c->limits.providers[1].per_minute.kind, CONFIG_LIMIT_UNLIMITED);
    CHECK_EQ_INT(c->limits.providers[1].per_day.kind, CONFIG_LIMIT_UNSET);
    CHECK_EQ_INT(c->limits.providers[1].enabled, 0);
    CHECK_EQ_INT(c->limits.user_count, 1);
    CHECK_EQ_INT(c->limits.users[0].user_id[0], 0x01);
    CHECK_EQ_INT(c->limits.users[0].per_minute.value, 600);
    CHECK_EQ_INT(c->ingest.ack, CONFIG_ACK_DURABLE);
    CHECK_EQ_INT(c->refresh_count, 1);
    CHECK_EQ_STR(c->refresh[0].view, "analytics.api_usage_daily");
    CHECK_EQ_INT(c->refresh[0].every_s, 60);
    CHECK_EQ_INT(c->log.level, LOG_DEBUG);
    config_free(c);
}

TEST(an_unknown_key_is_named_with_its_line_and_column)
{
    CHECK(parse("listen:\n  max_conections: 5\n") == NULL);
    CHECK_EQ_STR(err, "t.yaml:2:3: unknown key listen.max_conections");
    CHECK(parse("lsten: {}\n") == NULL);
    CHECK_EQ_STR(err, "t.yaml:1:1: unknown key lsten");
}

TEST(a_value_out_of_range_says_the_range)
{
    CHECK(parse("ingest:\n  batch_rows: 0\n") == NULL);
    CHECK_EQ_STR(err, "t.yaml:2:15: ingest.batch_rows must be between 1 and 1000000");
}

TEST(a_value_of_the_wrong_type_is_refused)
{
    CHECK(parse("ingest: { batch_ms: fast }") == NULL);
    CHECK(check_contains(err, "t.yaml:1:21: ingest.batch_ms must be a non-negative integer"));
    CHECK(parse("ingest: { batch_ms: \"5\" }") == NULL);
    CHECK(check_contains(err, "ingest.batch_ms must be an integer"));
    CHECK(parse("limits: { log_denied: maybe }") == NULL);
    CHECK(check_contains(err, "limits.log_denied must be true or false"));
    CHECK(parse("limits: { on_redis_error: ignore }") == NULL);
    CHECK(check_contains(err, "limits.on_redis_error must be local, allow or deny"));
    CHECK(parse("listen: [1, 2]") == NULL);
    CHECK(check_contains(err, "listen must be a mapping"));
}

TEST(a_duplicate_key_is_refused)
{
    CHECK(parse("log: { level: info }\nlog: { level: debug }\n") == NULL);
    CHECK(check_contains(err, "t.yaml:2:1: duplicate key log"));
    CHECK(parse("log:\n  level: info\n  level: debug\n") == NULL);
    CHECK(check_contains(err, "t.yaml:3:3: duplicate key log.level"));
}

TEST(a_second_yaml_document_is_refused_not_ignored)
{
    CHECK(parse("log: { level: info }\n---\nlog: { level: debug }\n") == NULL);
    CHECK(check_contains(err, "t.yaml:3:1: a second YAML document"));
    struct config *c = parse("---\nlog: { level: debug }\n...\n");
    CHECK(c != NULL);
    config_free(c);
    c = parse("log: { level: debug }\n---\n"); /* an empty one after it holds nothing */
    CHECK(c != NULL);
    config_free(c);
}

TEST(invalid_yaml_reports_where_the_parser_stopped)
{
    CHECK(parse("listen:\n  unix: [unclosed\n") == NULL);
    CHECK(check_contains(err, "t.yaml:"));
}

TEST(tcp_on_a_public_address_needs_an_auth_token)
{
    CHECK(parse("listen: { tcp: 0.0.0.0:7878 }") == NULL);
    CHECK(check_contains(err, "auth.token_file is required"));
    struct config *c = parse("listen: { tcp: 0.0.0.0:7878 }\nauth: { token_file: /etc/t }");
    CHECK(c != NULL);
    config_free(c);
    c = parse("listen: { tcp: \"[::1]:7878\" }");
    CHECK(c != NULL);
    config_free(c);
}

TEST(bad_addresses_and_modes_are_refused)
{
    CHECK(parse("listen: { tcp: 127.0.0.1 }") == NULL);
    CHECK(check_contains(err, "listen.tcp must be host:port"));
    CHECK(parse("listen: { tcp: \"127.0.0.1:99999\" }") == NULL);
    CHECK(parse("listen: { unix_mode: 0999 }") == NULL);
    CHECK(check_contains(err, "listen.unix_mode must be an octal mode"));
    CHECK(parse("redis: { address: \"unix:relative\" }") == NULL);
    CHECK(parse("listen: { unix: null }") == NULL);
    CHECK(check_contains(err, "listen needs unix, tcp or both"));
}

TEST(user_overrides_need_a_uuid_and_a_provider)
{
    CHECK(parse("limits: { users: [ { provider: openai } ] }") == NULL);
    CHECK(check_contains(err, "limits.users[0] needs a user_id"));
    CHECK(parse("limits: { users: [ { user_id: nope, provider: openai } ] }") == NULL);
    CHECK(check_contains(err, "limits.users[0].user_id must be a UUID"));
}

TEST(a_rules_item_gives_one_rule_per_amount_with_its_pattern)
{
    struct config *c = parse("limits:\n  rules:\n"
                             "    - { provider: openai, model: gpt-4o, tokens_per_minute: 30000,\n"
                             "        spend_per_day: \"5.25\", requests_per_hour: unlimited }\n"
                             "    - { user_id: 0189d2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d,\n"
                             "        spend_per_month: 0.000001 }\n");
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK_EQ_INT(c->limits.rule_count, 4);
    const struct config_rule *r = c->limits.rules;
    CHECK_EQ_STR(r[0].provider, "openai");
    CHECK_EQ_STR(r[0].model, "gpt-4o");
    CHECK(!r[0].has_user);
    /* In the order dimension, then window: requests per hour, tokens per minute, spend per day. */
    CHECK(r[0].dimension == 0 && r[0].window == 1 && r[0].amount == -1);
    CHECK(r[1].dimension == 1 && r[1].window == 0 && r[1].amount == 30000);
    CHECK(r[2].dimension == 2 && r[2].window == 2 && r[2].amount == 5250000);
    CHECK(r[3].has_user && r[3].user_id[0] == 0x01 && r[3].provider == NULL);
    CHECK(r[3].dimension == 2 && r[3].window == 3 && r[3].amount == 1);
    config_free(c);
}

TEST(rules_read_concurrent_and_shadow_and_a_shadow_rule_may_watch_an_enforced_one)
{
    struct config *c = parse("limits:\n  rules:\n"
                             "    - { provider: openai, concurrent: 5, requests_per_minute: 10 }\n"
                             "    - { provider: openai, requests_per_minute: 5, concurrent: 3,\n"
                             "        shadow: true, alert_at_percent: 80 }\n");
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK_EQ_INT(c->limits.rule_count, 4);
    const struct config_rule *r = c->limits.rules;
    CHECK(r[0].dimension == 0 && r[0].amount == 10 && !r[0].shadow);
    CHECK(r[1].dimension == 3 && r[1].window == 0 && r[1].amount == 5 && !r[1].shadow);
    CHECK(r[2].dimension == 0 && r[2].amount == 5 && r[2].shadow);
    CHECK(r[3].dimension == 3 && r[3].amount == 3 && r[3].shadow);
    CHECK(r[2].alert_percent == 80 && r[1].alert_percent == 0);
    config_free(c);
}

TEST(rules_refuse_what_they_cannot_enforce_and_name_it)
{
    CHECK(parse("limits: { rules: [ { spend_per_day: \"0.0000001\" } ] }") == NULL);
    CHECK(check_contains(err, "limits.rules[0].spend_per_day must be an amount of USD"));
    CHECK(parse("limits: { rules: [ { tokens_per_day: -1 } ] }") == NULL);
    CHECK(check_contains(err, "limits.rules[0].tokens_per_day"));
    CHECK(parse("limits: { rules: [ { provider: openai } ] }") == NULL);
    CHECK(check_contains(err, "limits.rules[0] has no amount"));
    CHECK(parse("limits: { rules: [ { tokens_per_day: 3, alert_at_percent: 0 } ] }") == NULL);
    CHECK(check_contains(err, "limits.rules[0].alert_at_percent"));
    CHECK(parse("limits: { rules: [ { tokens_per_day: 3, alert_at_percent: 101 } ] }") == NULL);
    CHECK(check_contains(err, "limits.rules[0].alert_at_percent"));
    CHECK(parse("limits: { rules: [ { concurrent: -1 } ] }") == NULL);
    CHECK(check_contains(err, "limits.rules[0].concurrent"));
    CHECK(parse("limits: { rules: [ { concurrent: 2 }, { concurrent: 3 } ] }") == NULL);
    CHECK(check_contains(err, "limits.rules[1] repeats concurrent of an earlier rule"));
    CHECK(parse("limits: { rules: [ { concurrent: 2, shadow: maybe } ] }") == NULL);
    CHECK(check_contains(err, "limits.rules[0].shadow"));
    CHECK(parse("limits: { rules: [ { tokens_per_week: 3 } ] }") == NULL);
    CHECK(check_contains(err, "unknown key limits.rules[0].tokens_per_week"));
    CHECK(parse("limits: { rules: [ { provider: a, tokens_per_day: 1 },\n"
                "                   { provider: a, tokens_per_day: 2 } ] }") == NULL);
    CHECK(check_contains(err, "limits.rules[1] repeats tokens_per_day"));
}

TEST(provider_names_are_one_to_fifty_characters_not_bytes)
{
    /* 50 two-byte characters: 100 bytes, as varchar(50) and the check method take them. */
    char fifty[128] = "", yaml[512];
    for (int i = 0; i < 50; i++)
        strcat(fifty, "\xc3\xa9");
    snprintf(yaml, sizeof(yaml), "limits: { providers: { \"%s\": { per_minute: 1 } } }", fifty);
    struct config *c = parse(yaml);
    CHECK(c != NULL);
    config_free(c);
    snprintf(yaml, sizeof(yaml), "limits: { providers: { \"%sx\": { per_minute: 1 } } }", fifty);
    CHECK(parse(yaml) == NULL);
    CHECK(check_contains(err, "1 to 50 characters"));
    snprintf(yaml, sizeof(yaml),
             "limits: { users: [ { user_id: 0189d2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d, "
             "provider: \"%sx\" } ] }",
             fifty);
    CHECK(parse(yaml) == NULL);
    CHECK(check_contains(err, "limits.users[0]: a provider name must be 1 to 50 characters"));
}

TEST(refresh_entries_need_a_qualified_view_and_an_interval)
{
    CHECK(parse("refresh: [ { view: daily, every_s: 5 } ]") == NULL);
    CHECK(check_contains(err, "refresh[].view must be schema.view"));
    CHECK(parse("refresh: [ { view: a.b } ]") == NULL);
    CHECK(check_contains(err, "needs every_s"));
    CHECK(parse("refresh: [ { view: a.b, every_s: 1 }, { view: a.b, every_s: 2 } ]") == NULL);
    CHECK(check_contains(err, "twice"));
}

TEST(maintenance_time_is_a_utc_time_of_day)
{
    struct config *c = parse("maintenance: { at: \"03:30\" }");
    CHECK(c != NULL);
    if (c)
        CHECK_EQ_INT(c->maintenance.at_minute, 210);
    config_free(c);
    CHECK(parse("maintenance: { at: \"25:00\" }") == NULL);
}

TEST(the_key_table_is_consistent_with_its_fields)
{
    char why[256] = "";
    CHECK(config_table_check(why, sizeof(why)));
    if (why[0])
        fprintf(stderr, "%s\n", why);
}

static bool table_has(const char *name)
{
    for (size_t i = 0; i < config_key_count(); i++)
        if (strcmp(config_key_name(i), name) == 0)
            return true;
    return false;
}

/* The keys conf/usaged.yaml shows: "section.key" under each section, "key" for a top-level key
 * that is itself in the table (a list such as refresh). */
static size_t reference_keys(yaml_document_t *doc, char names[][96], size_t max)
{
    size_t n = 0;
    yaml_node_t *root = yaml_document_get_root_node(doc);
    if (!root || root->type != YAML_MAPPING_NODE)
        return 0;
    for (yaml_node_pair_t *top = root->data.mapping.pairs.start; top < root->data.mapping.pairs.top;
         top++) {
        const char *section =
            (const char *)yaml_document_get_node(doc, top->key)->data.scalar.value;
        yaml_node_t *v = yaml_document_get_node(doc, top->value);
        if (table_has(section) || v->type != YAML_MAPPING_NODE) {
            if (n < max)
                snprintf(names[n++], sizeof(names[0]), "%s", section);
            continue;
        }
        for (yaml_node_pair_t *kv = v->data.mapping.pairs.start; kv < v->data.mapping.pairs.top;
             kv++) {
            const char *key = (const char *)yaml_document_get_node(doc, kv->key)->data.scalar.value;
            if (n < max)
                snprintf(names[n++], sizeof(names[0]), "%s.%s", section, key);
        }
    }
    return n;
}

TEST(every_key_is_in_the_reference_config_and_every_key_there_is_known)
{
    const char *path = getenv("USAGED_REFERENCE_CONFIG");
    CHECK(path != NULL);
    if (!path)
        return;
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    if (!f)
        return;
    yaml_parser_t yp;
    yaml_document_t doc;
    yaml_parser_initialize(&yp);
    yaml_parser_set_input_file(&yp, f);
    bool loaded = yaml_parser_load(&yp, &doc);
    CHECK(loaded);
    if (loaded) {
        static char names[512][96];
        size_t n = reference_keys(&doc, names, 512);
        CHECK(n > 0 && n < 512);
        for (size_t i = 0; i < n; i++) {
            if (!table_has(names[i]))
                fprintf(stderr, "%s documents %s, which the table does not know\n", path, names[i]);
            CHECK(table_has(names[i]));
        }
        for (size_t k = 0; k < config_key_count(); k++) {
            bool shown = false;
            for (size_t i = 0; i < n && !shown; i++)
                shown = strcmp(names[i], config_key_name(k)) == 0;
            if (!shown)
                fprintf(stderr, "%s does not document %s\n", path, config_key_name(k));
            CHECK(shown);
        }
        yaml_document_delete(&doc);
    }
    yaml_parser_delete(&yp);
    fclose(f);
}

TEST(the_reference_config_parses_and_gives_the_defaults)
{
    const char *path = getenv("USAGED_REFERENCE_CONFIG");
    CHECK(path != NULL);
    if (!path)
        return;
    struct config *c = config_load(path, err, sizeof(err));
    struct config *d = parse("");
    CHECK(c != NULL);
    CHECK(d != NULL);
    if (c && d) {
        char changed[512];
        CHECK_EQ_INT(config_keep_restart_only(c, d, changed, sizeof(changed)), 0);
        CHECK_EQ_INT(c->ingest.queue_bytes, d->ingest.queue_bytes);
        CHECK_EQ_INT(c->spool.segment_bytes, d->spool.segment_bytes);
        CHECK_EQ_INT(c->maintenance.at_minute, d->maintenance.at_minute);
    }
    config_free(c);
    config_free(d);
}

TEST(a_reload_keeps_the_running_value_of_a_restart_only_key_and_names_it)
{
    struct config *running = parse("spool: { dir: /a, max_bytes: 2GiB }\n");
    struct config *fresh = parse("spool: { dir: /b, max_bytes: 4GiB }\nlisten: { tcp: null }\n");
    CHECK(running != NULL);
    CHECK(fresh != NULL);
    if (running && fresh) {
        char changed[256];
        CHECK_EQ_INT(config_keep_restart_only(fresh, running, changed, sizeof(changed)), 1);
        CHECK_EQ_STR(changed, "spool.dir");
        CHECK_EQ_STR(fresh->spool.dir, "/a");
        CHECK_EQ_STR(running->spool.dir, "/b");
        CHECK_EQ_INT(fresh->spool.max_bytes, 4ULL << 30);
    }
    config_free(running);
    config_free(fresh);
}

int main(void)
{
    return RUN(T(an_empty_file_gives_every_documented_default),
               T(provider_names_are_one_to_fifty_characters_not_bytes),
               T(the_design_example_parses_with_its_values),
               T(an_unknown_key_is_named_with_its_line_and_column),
               T(a_value_out_of_range_says_the_range), T(a_value_of_the_wrong_type_is_refused),
               T(a_duplicate_key_is_refused), T(a_second_yaml_document_is_refused_not_ignored),
               T(invalid_yaml_reports_where_the_parser_stopped),
               T(tcp_on_a_public_address_needs_an_auth_token),
               T(bad_addresses_and_modes_are_refused), T(user_overrides_need_a_uuid_and_a_provider),
               T(a_rules_item_gives_one_rule_per_amount_with_its_pattern),
               T(rules_read_concurrent_and_shadow_and_a_shadow_rule_may_watch_an_enforced_one),
               T(rules_refuse_what_they_cannot_enforce_and_name_it),
               T(refresh_entries_need_a_qualified_view_and_an_interval),
               T(maintenance_time_is_a_utc_time_of_day),
               T(the_key_table_is_consistent_with_its_fields),
               T(every_key_is_in_the_reference_config_and_every_key_there_is_known),
               T(the_reference_config_parses_and_gives_the_defaults),
               T(a_reload_keeps_the_running_value_of_a_restart_only_key_and_names_it));
}
