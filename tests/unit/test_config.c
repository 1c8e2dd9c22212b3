/* The config parser: defaults, every kind of value, and errors that name FILE:LINE:COL. */
#include "check.h"
#include "config.h"
#include "log.h"

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
    CHECK(check_contains(err, "t.yaml:2:1: duplicate key"));
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

int main(void)
{
    return RUN(T(an_empty_file_gives_every_documented_default),
               T(provider_names_are_one_to_fifty_characters_not_bytes),
               T(the_design_example_parses_with_its_values),
               T(an_unknown_key_is_named_with_its_line_and_column),
               T(a_value_out_of_range_says_the_range), T(a_value_of_the_wrong_type_is_refused),
               T(a_duplicate_key_is_refused), T(invalid_yaml_reports_where_the_parser_stopped),
               T(tcp_on_a_public_address_needs_an_auth_token),
               T(bad_addresses_and_modes_are_refused), T(user_overrides_need_a_uuid_and_a_provider),
               T(refresh_entries_need_a_qualified_view_and_an_interval),
               T(maintenance_time_is_a_utc_time_of_day));
}
