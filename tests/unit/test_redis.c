/* Redis's pure parts: the Cluster key slot, and the redis.* keys of the config (the modes, their
 * exclusivity, TLS addresses refused). */
#include "check.h"
#include "config.h"
#include "redis.h"

static char err[512];

static struct config *parse(const char *yaml)
{
    err[0] = '\0';
    return config_parse("t.yaml", yaml, strlen(yaml), err, sizeof(err));
}

static uint16_t slot(const char *key)
{
    return redis_key_slot(key, strlen(key));
}

TEST(a_key_slot_is_the_crc16_that_redis_cluster_takes)
{
    /* Values from CLUSTER KEYSLOT of redis-server 7.0 (123456789: the spec's test vector). */
    CHECK_EQ_INT(slot("123456789"), 12739);
    CHECK_EQ_INT(slot("foo"), 12182);
    CHECK_EQ_INT(slot("bar"), 5061);
    CHECK_EQ_INT(slot(""), 0);
}

TEST(a_hash_tag_decides_the_slot_alone)
{
    CHECK_EQ_INT(slot("usaged:{user1}:openai"), slot("user1"));
    CHECK_EQ_INT(slot("other:{user1}"), slot("usaged:{user1}:m"));
    /* The first { and the next }: later braces are part of the key. */
    CHECK_EQ_INT(slot("a{b}c{d}"), slot("b"));
    CHECK_EQ_INT(slot("{user1000}.following"), slot("{user1000}.followers"));
}

TEST(an_empty_or_unclosed_hash_tag_hashes_the_whole_key)
{
    /* Values from CLUSTER KEYSLOT of redis-server 7.0. */
    CHECK_EQ_INT(slot("a{}b"), 13694);
    CHECK_EQ_INT(slot("{}x"), 10595);
    CHECK_EQ_INT(slot("a{bc"), 13842);
    CHECK_EQ_INT(slot("bc"), 12685);
}

TEST(the_redis_defaults_are_one_server_without_auth)
{
    struct config *c = parse("");
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK_EQ_STR(c->redis.address, "127.0.0.1:6379");
    CHECK(c->redis.username == NULL && c->redis.password_file == NULL);
    CHECK_EQ_INT(c->redis.sentinel_count, 0);
    CHECK(c->redis.sentinel_master == NULL);
    CHECK_EQ_INT(c->redis.cluster_count, 0);
    config_free(c);
}

TEST(auth_sentinel_and_cluster_keys_parse)
{
    struct config *c = parse("redis:\n"
                             "  username: app\n"
                             "  password_file: /etc/usaged/redis-password\n"
                             "  sentinels: [\"10.0.0.1:26379\", \"[::1]:26380\"]\n"
                             "  sentinel_master: mymaster\n");
    CHECK(c != NULL);
    if (c) {
        CHECK_EQ_STR(c->redis.username, "app");
        CHECK_EQ_STR(c->redis.password_file, "/etc/usaged/redis-password");
        CHECK_EQ_INT(c->redis.sentinel_count, 2);
        CHECK_EQ_STR(c->redis.sentinels[1], "[::1]:26380");
        CHECK_EQ_STR(c->redis.sentinel_master, "mymaster");
    }
    config_free(c);
    c = parse("redis: { cluster: [\"redis-a:7000\", \"10.0.0.2:7000\"] }");
    CHECK(c != NULL);
    if (c) {
        CHECK_EQ_INT(c->redis.cluster_count, 2);
        CHECK_EQ_STR(c->redis.cluster[0], "redis-a:7000");
    }
    config_free(c);
}

TEST(mixing_the_modes_is_refused_where_the_second_one_is)
{
    CHECK(parse("redis:\n  cluster: [\"10.0.0.2:7000\"]\n  sentinels: [\"10.0.0.1:26379\"]\n"
                "  sentinel_master: m\n") == NULL);
    CHECK(check_contains(err, "t.yaml:3:15: redis.sentinels: redis.address, redis.sentinels and "
                              "redis.cluster are exclusive"));
    CHECK(parse("redis:\n  address: 10.0.0.9:6379\n  cluster: [\"10.0.0.2:7000\"]\n") == NULL);
    CHECK(check_contains(err, "t.yaml:3:13: redis.cluster:"));
    CHECK(parse("redis:\n  sentinels: [\"10.0.0.1:26379\"]\n  sentinel_master: m\n"
                "  address: unix:/tmp/r.sock\n") == NULL);
    CHECK(check_contains(err, "t.yaml:4:12: redis.address:"));
    /* The address given as the default's value (the reference config does) counts too. */
    CHECK(parse("redis:\n  address: \"127.0.0.1:6379\"\n  cluster: [\"10.0.0.2:7000\"]\n") == NULL);
    CHECK(check_contains(err, "t.yaml:3:13: redis.cluster:"));
    CHECK(parse("redis:\n  sentinels: [\"10.0.0.1:26379\"]\n  sentinel_master: m\n"
                "  address: \"127.0.0.1:6379\"\n") == NULL);
    CHECK(check_contains(err, "redis.address, redis.sentinels and redis.cluster are exclusive"));
}

TEST(sentinels_need_a_master_name_and_ip_addresses)
{
    CHECK(parse("redis: { sentinels: [\"10.0.0.1:26379\"] }") == NULL);
    CHECK(check_contains(err, "t.yaml:1:10: redis.sentinels needs redis.sentinel_master"));
    CHECK(parse("redis: { sentinel_master: m }") == NULL);
    CHECK(check_contains(err, "redis.sentinel_master needs redis.sentinels"));
    CHECK(parse("redis: { sentinels: [\"sentinel-a:26379\"], sentinel_master: m }") == NULL);
    CHECK(check_contains(err, "must be an IP address, not a name"));
    CHECK(parse("redis: { sentinels: [\"10.0.0.1\"], sentinel_master: m }") == NULL);
    CHECK(check_contains(err, "each must be host:port"));
    CHECK(parse("redis: { cluster: [\"10.0.0.1:1\", \"10.0.0.1:1\"] }") == NULL);
    CHECK(check_contains(err, "10.0.0.1:1 is given twice"));
    CHECK(parse("redis: { cluster: \"10.0.0.1:1\" }") == NULL);
    CHECK(check_contains(err, "redis.cluster must be a list of strings"));
}

TEST(a_tls_address_is_refused_with_the_way_to_reach_one)
{
    CHECK(parse("redis: { address: \"rediss://cache.example.com:6380\" }") == NULL);
    CHECK(check_contains(err, "t.yaml:1:19: redis.address: rediss:// (TLS) is not supported"));
    CHECK(check_contains(err, "stunnel"));
    CHECK(parse("redis: { address: \"redis://127.0.0.1:6379\" }") == NULL);
    CHECK(check_contains(err, "host:port or unix:/path, not a URL"));
}

TEST(a_username_needs_a_password_file)
{
    CHECK(parse("redis: { username: app }") == NULL);
    CHECK(check_contains(err, "t.yaml:1:10: redis.username needs redis.password_file"));
}

int main(void)
{
    return RUN(
        T(a_key_slot_is_the_crc16_that_redis_cluster_takes), T(a_hash_tag_decides_the_slot_alone),
        T(an_empty_or_unclosed_hash_tag_hashes_the_whole_key),
        T(the_redis_defaults_are_one_server_without_auth), T(auth_sentinel_and_cluster_keys_parse),
        T(mixing_the_modes_is_refused_where_the_second_one_is),
        T(sentinels_need_a_master_name_and_ip_addresses),
        T(a_tls_address_is_refused_with_the_way_to_reach_one), T(a_username_needs_a_password_file));
}
