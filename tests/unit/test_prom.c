/* The stats map as the Prometheus text exposition format: names, labels, families, escaping. */
#include "check.h"
#include "prom.h"

#include <stdlib.h>

/* A stats map packed by the test, decoded, rendered; out holds the text, NUL-terminated. */
struct rendered {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_unpacked u;
    struct buf out;
    size_t samples;
};

static msgpack_packer *begin(struct rendered *r)
{
    msgpack_sbuffer_init(&r->sb);
    msgpack_packer_init(&r->pk, &r->sb, msgpack_sbuffer_write);
    return &r->pk;
}

static const char *render(struct rendered *r)
{
    msgpack_unpacked_init(&r->u);
    size_t off = 0;
    msgpack_unpack_next(&r->u, r->sb.data, r->sb.size, &off);
    buf_init(&r->out);
    r->samples = prom_render(&r->u.data, "usaged", &r->out);
    buf_put_u8(&r->out, '\0');
    return (const char *)r->out.data;
}

static void done(struct rendered *r)
{
    buf_free(&r->out);
    msgpack_unpacked_destroy(&r->u);
    msgpack_sbuffer_destroy(&r->sb);
}

static void str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

static void kv_u64(msgpack_packer *pk, const char *k, uint64_t v)
{
    str(pk, k);
    msgpack_pack_uint64(pk, v);
}

static int count_of(const char *haystack, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(haystack, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

TEST(a_numeric_leaf_becomes_a_gauge_named_after_its_path)
{
    struct rendered r;
    msgpack_packer *pk = begin(&r);
    msgpack_pack_map(pk, 2);
    kv_u64(pk, "uptime_ms", 1234);
    str(pk, "connections");
    msgpack_pack_map(pk, 1);
    kv_u64(pk, "open", 3);
    const char *t = render(&r);
    CHECK(check_contains(t, "# TYPE usaged_uptime_ms gauge\nusaged_uptime_ms 1234\n"));
    CHECK(check_contains(t, "# TYPE usaged_connections_open gauge\nusaged_connections_open 3\n"));
    CHECK(check_contains(t, "# HELP usaged_connections_open usaged stats: connections.open\n"));
    CHECK_EQ_INT(r.samples, 2);
    done(&r);
}

TEST(large_integers_keep_every_digit)
{
    struct rendered r;
    msgpack_packer *pk = begin(&r);
    msgpack_pack_map(pk, 1);
    kv_u64(pk, "bytes_in", UINT64_MAX);
    CHECK(check_contains(render(&r), "usaged_bytes_in 18446744073709551615\n"));
    done(&r);
}

TEST(booleans_negatives_and_floats_are_numbers)
{
    struct rendered r;
    msgpack_packer *pk = begin(&r);
    msgpack_pack_map(pk, 4);
    str(pk, "up");
    msgpack_pack_true(pk);
    str(pk, "down");
    msgpack_pack_false(pk);
    str(pk, "delta");
    msgpack_pack_int64(pk, -5);
    str(pk, "ratio");
    msgpack_pack_double(pk, 0.25);
    const char *t = render(&r);
    CHECK(check_contains(t, "usaged_up 1\n"));
    CHECK(check_contains(t, "usaged_down 0\n"));
    CHECK(check_contains(t, "usaged_delta -5\n"));
    CHECK(check_contains(t, "usaged_ratio 0.25\n"));
    done(&r);
}

TEST(an_errors_map_becomes_one_family_labelled_by_code)
{
    struct rendered r;
    msgpack_packer *pk = begin(&r);
    msgpack_pack_map(pk, 1);
    str(pk, "errors");
    msgpack_pack_map(pk, 2);
    kv_u64(pk, "bad_request", 4);
    kv_u64(pk, "too_large", 0);
    const char *t = render(&r);
    CHECK(check_contains(t, "# TYPE usaged_errors gauge\n"
                            "usaged_errors{code=\"bad_request\"} 4\n"
                            "usaged_errors{code=\"too_large\"} 0\n"));
    CHECK(check_contains(t, "# HELP usaged_errors usaged stats: errors.<code>\n"));
    CHECK_EQ_INT(count_of(t, "# TYPE"), 1);
    done(&r);
}

/* ingest.tables.<name>.<figure>: the walk meets one table's figures, then the other's, but each
 * family must come out whole, with one HELP and one TYPE. */
TEST(tables_become_labels_and_each_family_keeps_its_samples_together)
{
    struct rendered r;
    msgpack_packer *pk = begin(&r);
    msgpack_pack_map(pk, 1);
    str(pk, "ingest");
    msgpack_pack_map(pk, 2);
    kv_u64(pk, "queue_rows", 7);
    str(pk, "tables");
    msgpack_pack_map(pk, 2);
    const char *tables[] = {"api_usage_logs", "prompt_history"};
    for (int i = 0; i < 2; i++) {
        str(pk, tables[i]);
        msgpack_pack_map(pk, 2);
        kv_u64(pk, "rows_written", (uint64_t)(10 + i));
        kv_u64(pk, "batches", (uint64_t)(20 + i));
    }
    const char *t = render(&r);
    CHECK(check_contains(t, "usaged_ingest_queue_rows 7\n"));
    CHECK(check_contains(t, "# TYPE usaged_ingest_tables_rows_written gauge\n"
                            "usaged_ingest_tables_rows_written{table=\"api_usage_logs\"} 10\n"
                            "usaged_ingest_tables_rows_written{table=\"prompt_history\"} 11\n"));
    CHECK(check_contains(t, "# TYPE usaged_ingest_tables_batches gauge\n"
                            "usaged_ingest_tables_batches{table=\"api_usage_logs\"} 20\n"
                            "usaged_ingest_tables_batches{table=\"prompt_history\"} 21\n"));
    CHECK_EQ_INT(count_of(t, "# TYPE usaged_ingest_tables_rows_written "), 1);
    CHECK_EQ_INT(count_of(t, "# HELP usaged_ingest_tables_rows_written "), 1);
    done(&r);
}

TEST(a_label_section_nested_in_a_labelled_map_adds_a_second_label)
{
    struct rendered r;
    msgpack_packer *pk = begin(&r);
    msgpack_pack_map(pk, 1);
    str(pk, "tables");
    msgpack_pack_map(pk, 1);
    str(pk, "t1");
    msgpack_pack_map(pk, 1);
    str(pk, "errors");
    msgpack_pack_map(pk, 1);
    kv_u64(pk, "internal", 2);
    CHECK(check_contains(render(&r), "usaged_tables_errors{table=\"t1\",code=\"internal\"} 2\n"));
    done(&r);
}

TEST(a_string_leaf_becomes_an_info_sample_carrying_it_as_a_label)
{
    struct rendered r;
    msgpack_packer *pk = begin(&r);
    msgpack_pack_map(pk, 2);
    str(pk, "version");
    str(pk, "0.1.0");
    str(pk, "tables");
    msgpack_pack_map(pk, 1);
    str(pk, "api_usage_logs");
    msgpack_pack_map(pk, 1);
    str(pk, "postgres");
    str(pk, "idle");
    const char *t = render(&r);
    CHECK(check_contains(
        t, "# TYPE usaged_version_info gauge\nusaged_version_info{version=\"0.1.0\"} 1\n"));
    CHECK(check_contains(
        t, "usaged_tables_postgres_info{table=\"api_usage_logs\",postgres=\"idle\"} 1\n"));
    done(&r);
}

TEST(empty_strings_nil_arrays_and_non_string_keys_are_left_out)
{
    struct rendered r;
    msgpack_packer *pk = begin(&r);
    msgpack_pack_map(pk, 5);
    str(pk, "last_error");
    str(pk, "");
    str(pk, "limit");
    msgpack_pack_nil(pk);
    str(pk, "list");
    msgpack_pack_array(pk, 1);
    msgpack_pack_uint8(pk, 1);
    msgpack_pack_uint8(pk, 9);
    msgpack_pack_uint8(pk, 9);
    kv_u64(pk, "kept", 1);
    const char *t = render(&r);
    CHECK_EQ_STR(t, "# HELP usaged_kept usaged stats: kept\n# TYPE usaged_kept gauge\n"
                    "usaged_kept 1\n");
    done(&r);
}

TEST(characters_outside_the_name_alphabet_become_underscores)
{
    struct rendered r;
    msgpack_packer *pk = begin(&r);
    msgpack_pack_map(pk, 1);
    str(pk, "refresh");
    msgpack_pack_map(pk, 1);
    str(pk, "analytics.api-usage daily");
    msgpack_pack_map(pk, 1);
    kv_u64(pk, "runs", 5);
    CHECK(check_contains(render(&r), "\nusaged_refresh_analytics_api_usage_daily_runs 5\n"));
    done(&r);
}

TEST(label_values_escape_backslash_quote_and_newline)
{
    struct rendered r;
    msgpack_packer *pk = begin(&r);
    msgpack_pack_map(pk, 1);
    str(pk, "views");
    msgpack_pack_map(pk, 1);
    str(pk, "a\\b\"c\nd");
    msgpack_pack_map(pk, 1);
    kv_u64(pk, "runs", 1);
    CHECK(check_contains(render(&r), "usaged_views_runs{view=\"a\\\\b\\\"c\\nd\"} 1\n"));
    done(&r);
}

TEST(a_long_string_is_cut_on_a_utf8_boundary)
{
    char text[400];
    /* "x" then two-byte "é"s: byte 256 is the second byte of one, so a cut at 256 would split
     * it; the cut must fall before its first byte instead. */
    text[0] = 'x';
    for (int i = 1; i + 1 < 300; i += 2) {
        text[i] = (char)0xC3;
        text[i + 1] = (char)0xA9;
    }
    text[299] = '\0';
    struct rendered r;
    msgpack_packer *pk = begin(&r);
    msgpack_pack_map(pk, 1);
    str(pk, "last_error");
    str(pk, text);
    const char *t = render(&r);
    const char *v = strstr(t, "last_error=\"");
    CHECK(v != NULL);
    if (v) {
        v += strlen("last_error=\"");
        const char *end = strchr(v, '"');
        CHECK(end != NULL && end - v == 255);
        CHECK(end != NULL && ((unsigned char)end[-1] == 0xA9));
    }
    done(&r);
}

TEST(two_keys_that_sanitize_alike_give_one_series)
{
    struct rendered r;
    msgpack_packer *pk = begin(&r);
    msgpack_pack_map(pk, 2);
    kv_u64(pk, "a.b", 1);
    kv_u64(pk, "a-b", 2);
    const char *t = render(&r);
    CHECK_EQ_INT(count_of(t, "\nusaged_a_b "), 1);
    CHECK(check_contains(t, "usaged_a_b 1\n"));
    CHECK_EQ_INT(r.samples, 1);
    done(&r);
}

TEST(a_string_key_starting_with_a_digit_makes_a_valid_label_name)
{
    struct rendered r;
    msgpack_packer *pk = begin(&r);
    msgpack_pack_map(pk, 1);
    str(pk, "9lives");
    str(pk, "cat");
    CHECK(check_contains(render(&r), "usaged_9lives_info{_9lives=\"cat\"} 1\n"));
    done(&r);
}

TEST(a_value_that_is_not_a_map_yields_nothing)
{
    struct rendered r;
    msgpack_packer *pk = begin(&r);
    msgpack_pack_uint8(pk, 1);
    CHECK_EQ_STR(render(&r), "");
    CHECK_EQ_INT(r.samples, 0);
    done(&r);
}

int main(void)
{
    return RUN(T(a_numeric_leaf_becomes_a_gauge_named_after_its_path),
               T(large_integers_keep_every_digit), T(booleans_negatives_and_floats_are_numbers),
               T(an_errors_map_becomes_one_family_labelled_by_code),
               T(tables_become_labels_and_each_family_keeps_its_samples_together),
               T(a_label_section_nested_in_a_labelled_map_adds_a_second_label),
               T(a_string_leaf_becomes_an_info_sample_carrying_it_as_a_label),
               T(empty_strings_nil_arrays_and_non_string_keys_are_left_out),
               T(characters_outside_the_name_alphabet_become_underscores),
               T(label_values_escape_backslash_quote_and_newline),
               T(a_long_string_is_cut_on_a_utf8_boundary),
               T(two_keys_that_sanitize_alike_give_one_series),
               T(a_string_key_starting_with_a_digit_makes_a_valid_label_name),
               T(a_value_that_is_not_a_map_yields_nothing));
}
