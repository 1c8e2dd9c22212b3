/* How a PostgreSQL conninfo's host names are found, and how their addresses go back to libpq. */
#include "check.h"
#include "resolve.h"

static const struct pg_env no_env;

static const char *param(const char **keys, const char **vals, const char *key)
{
    for (size_t i = 0; keys[i]; i++)
        if (strcmp(keys[i], key) == 0)
            return vals[i];
    return NULL;
}

/* What the lookup of host i found: addresses separated by spaces. */
static void found(struct pg_target *t, size_t i, const char *list)
{
    char copy[256];
    const char *addrs[8];
    size_t n = 0;
    snprintf(copy, sizeof(copy), "%s", list);
    for (char *save, *a = strtok_r(copy, " ", &save); a && n < 8; a = strtok_r(NULL, " ", &save))
        addrs[n++] = a;
    pg_target_set_addrs(t, i, 0, addrs, n);
}

/* The conninfo parses and goes to libpq as it is, with nothing to look up. */
static bool verbatim(const char *conninfo, const struct pg_env *env)
{
    struct pg_target t;
    char why[256];
    bool parsed = pg_target_parse(&t, conninfo, env, why, sizeof(why));
    bool result = parsed && t.verbatim && pg_target_next_lookup(&t, 0) == t.nhosts;
    pg_target_free(&t);
    return result;
}

TEST(numbers_and_socket_directories_need_no_lookup)
{
    CHECK(verbatim("host=127.0.0.1,::1,/run/postgresql port=5432 dbname=x", &no_env));
    CHECK(verbatim("dbname=x", &no_env));
    CHECK(!verbatim("host=db.example", &no_env));
}

TEST(a_hostaddr_means_libpq_looks_nothing_up)
{
    CHECK(verbatim("host=db.example hostaddr=10.0.0.5", &no_env));
    const struct pg_env env = {.hostaddr = "10.0.0.5"};
    CHECK(verbatim("host=db.example", &env));
}

TEST(each_address_of_a_name_becomes_one_host_entry_with_its_hostaddr)
{
    struct pg_target t;
    char why[256];
    CHECK(pg_target_parse(&t, "host=db.example,/tmp,other.example port=5433 dbname=d user=u",
                          &no_env, why, sizeof(why)));
    CHECK(!t.verbatim);
    CHECK_EQ_INT(pg_target_next_lookup(&t, 0), 0);
    CHECK_EQ_INT(pg_target_next_lookup(&t, 1), 2);
    found(&t, 0, "10.0.0.1 fd00::1");
    found(&t, 2, "10.0.0.9");
    const char **keys, **vals;
    CHECK(pg_target_params(&t, &keys, &vals, why, sizeof(why)));
    CHECK_EQ_STR(param(keys, vals, "host"), "db.example,db.example,/tmp,other.example");
    CHECK_EQ_STR(param(keys, vals, "hostaddr"), "10.0.0.1,fd00::1,,10.0.0.9");
    CHECK_EQ_STR(param(keys, vals, "port"), "5433");
    CHECK_EQ_STR(param(keys, vals, "dbname"), "d");
    CHECK_EQ_STR(param(keys, vals, "user"), "u");
    pg_target_free(&t);
}

TEST(a_port_per_host_follows_its_host_through_the_expansion)
{
    struct pg_target t;
    char why[256];
    CHECK(pg_target_parse(&t, "postgresql://a.example:5001,b.example:5002/db", &no_env, why,
                          sizeof(why)));
    found(&t, 0, "10.0.0.1 10.0.0.2");
    found(&t, 1, "10.0.1.1");
    const char **keys, **vals;
    CHECK(pg_target_params(&t, &keys, &vals, why, sizeof(why)));
    CHECK_EQ_STR(param(keys, vals, "host"), "a.example,a.example,b.example");
    CHECK_EQ_STR(param(keys, vals, "port"), "5001,5001,5002");
    CHECK_EQ_STR(param(keys, vals, "dbname"), "db");
    pg_target_free(&t);
}

TEST(pghost_and_pgport_stand_in_where_the_conninfo_names_no_host)
{
    struct pg_target t;
    char why[256];
    const struct pg_env env = {.host = "a.example,b.example", .port = "5001,5002"};
    CHECK(pg_target_parse(&t, "dbname=x", &env, why, sizeof(why)));
    CHECK(!t.verbatim);
    CHECK_EQ_STR(t.hosts[0], "a.example");
    found(&t, 0, "10.0.0.1 10.0.0.2");
    found(&t, 1, "10.0.1.1");
    const char **keys, **vals;
    CHECK(pg_target_params(&t, &keys, &vals, why, sizeof(why)));
    CHECK_EQ_STR(param(keys, vals, "port"), "5001,5001,5002");
    pg_target_free(&t);
}

TEST(a_name_that_resolves_to_nothing_is_left_out_and_none_left_is_an_error)
{
    struct pg_target t;
    char why[256];
    CHECK(pg_target_parse(&t, "host=gone.example,db.example", &no_env, why, sizeof(why)));
    pg_target_set_addrs(&t, 0, UV_EAI_NONAME, NULL, 0);
    found(&t, 1, "10.0.0.1");
    const char **keys, **vals;
    CHECK(pg_target_params(&t, &keys, &vals, why, sizeof(why)));
    CHECK_EQ_STR(param(keys, vals, "host"), "db.example");
    CHECK_EQ_STR(param(keys, vals, "hostaddr"), "10.0.0.1");
    pg_target_free(&t);

    CHECK(pg_target_parse(&t, "host=gone.example", &no_env, why, sizeof(why)));
    pg_target_set_addrs(&t, 0, UV_EAI_NONAME, NULL, 0);
    CHECK(!pg_target_params(&t, &keys, &vals, why, sizeof(why)));
    CHECK(strstr(why, "cannot resolve gone.example") != NULL);
    pg_target_free(&t);
}

TEST(a_malformed_conninfo_is_refused_with_libpqs_reason)
{
    struct pg_target t;
    char why[256];
    CHECK(!pg_target_parse(&t, "host", &no_env, why, sizeof(why)));
    CHECK(strstr(why, "host") != NULL);
    CHECK(why[strlen(why) - 1] != '\n');
}

TEST(a_service_or_an_empty_value_keeps_the_conninfo_as_it_is)
{
    /* A service file can name hosts of its own; an empty value means "empty" in a string but
     * "unset, take the default" in PQconnectStartParams' arrays. */
    CHECK(verbatim("service=main host=db.example", &no_env));
    const struct pg_env env = {.service = "main"};
    CHECK(verbatim("host=db.example", &env));
    CHECK(verbatim("host=db.example password=''", &no_env));
}

TEST(numeric_addresses_are_told_from_names)
{
    CHECK(resolve_is_numeric("fe80::1%lo"));
    CHECK(resolve_is_numeric("127.0.0.1"));
    CHECK(resolve_is_numeric("::1"));
    CHECK(!resolve_is_numeric("localhost"));
    CHECK(!resolve_is_numeric("db.example"));
}

int main(void)
{
    return RUN(T(numbers_and_socket_directories_need_no_lookup),
               T(a_hostaddr_means_libpq_looks_nothing_up),
               T(each_address_of_a_name_becomes_one_host_entry_with_its_hostaddr),
               T(a_port_per_host_follows_its_host_through_the_expansion),
               T(pghost_and_pgport_stand_in_where_the_conninfo_names_no_host),
               T(a_name_that_resolves_to_nothing_is_left_out_and_none_left_is_an_error),
               T(a_malformed_conninfo_is_refused_with_libpqs_reason),
               T(a_service_or_an_empty_value_keeps_the_conninfo_as_it_is),
               T(numeric_addresses_are_told_from_names));
}
