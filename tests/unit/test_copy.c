/* The binary COPY encoder: numeric from decimal text, and rows back to JSON; and the decimal
 * formatting of integers (buf.h) that the encoders and the Redis client share. */
#include "check.h"
#include "copy.h"

static struct buf b;

static int numeric_of(const char *s, size_t max_digits)
{
    buf_clear(&b);
    return copy_numeric(&b, s, strlen(s), max_digits);
}

/* The numeric's words after the 4-byte length: ndigits, weight, sign, dscale, digits... */
static int word(int i)
{
    return (int16_t)(b.data[4 + 2 * i] << 8 | b.data[5 + 2 * i]);
}

TEST(a_decimal_fraction_becomes_base_10000_digits_with_its_scale)
{
    CHECK(numeric_of("0.0012", 64));
    CHECK_EQ_INT(word(0), 1);  /* ndigits */
    CHECK_EQ_INT(word(1), -1); /* weight: 10000^-1 */
    CHECK_EQ_INT(word(2), 0);  /* positive */
    CHECK_EQ_INT(word(3), 4);  /* dscale */
    CHECK_EQ_INT(word(4), 12);
}

TEST(an_integer_part_is_grouped_from_the_right)
{
    CHECK(numeric_of("123456789.5", 64));
    CHECK_EQ_INT(word(0), 4);
    CHECK_EQ_INT(word(1), 2);
    CHECK_EQ_INT(word(4), 1);
    CHECK_EQ_INT(word(5), 2345);
    CHECK_EQ_INT(word(6), 6789);
    CHECK_EQ_INT(word(7), 5000);
}

TEST(zero_has_no_digits_and_keeps_its_scale)
{
    CHECK(numeric_of("0.000", 64));
    CHECK_EQ_INT(word(0), 0);
    CHECK_EQ_INT(word(1), 0);
    CHECK_EQ_INT(word(3), 3);
}

TEST(malformed_or_too_long_decimals_are_refused)
{
    CHECK(!numeric_of("", 64));
    CHECK(!numeric_of("1.", 64));
    CHECK(!numeric_of(".5", 64));
    CHECK(!numeric_of("1e5", 64));
    CHECK(!numeric_of("1,5", 64));
    CHECK(!numeric_of("+1", 64));
    CHECK(!numeric_of("12345", 4));
    CHECK(numeric_of("-1.5", 64));
}

TEST(a_row_reads_back_as_json_with_nulls_text_numbers_and_timestamps)
{
    static const struct copy_column cols[] = {
        {"id", COPY_UUID},      {"name", COPY_TEXT},      {"n", COPY_INT4},    {"flag", COPY_BOOL},
        {"cost", COPY_NUMERIC}, {"at", COPY_TIMESTAMPTZ}, {"none", COPY_TEXT},
    };
    struct buf row;
    buf_init(&row);
    uint8_t id[16] = {0x01, 0x89, 0xd2, 0xc4, 0x5e, 0x6f, 0x7a, 0x8b,
                      0x9c, 0x0d, 0x1e, 0x2f, 0x3a, 0x4b, 0x5c, 0x6d};
    copy_row_begin(&row, 7);
    copy_uuid(&row, id);
    copy_text(&row, "a \"q\"\n", 6);
    copy_int4(&row, -42);
    copy_bool(&row, true);
    copy_numeric(&row, "0.0125", 6, 64);
    copy_timestamptz(&row, 1700000000123456LL);
    copy_null(&row);
    struct buf json;
    buf_init(&json);
    copy_row_to_json(cols, 7, row.data, row.len, &json);
    buf_put_u8(&json, 0);
    CHECK_EQ_STR((const char *)json.data,
                 "{\"id\":\"0189d2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d\",\"name\":\"a \\\"q\\\"\\u000a\","
                 "\"n\":-42,\"flag\":true,\"cost\":0.0125,"
                 "\"at\":\"2023-11-14T22:13:20.123456Z\",\"none\":null}");
    buf_free(&row);
    buf_free(&json);
}

TEST(a_truncated_row_is_reported_not_overread)
{
    struct buf row;
    buf_init(&row);
    copy_row_begin(&row, 2);
    copy_text(&row, "abcdef", 6);
    struct copy_field f[4];
    size_t len;
    CHECK_EQ_INT(copy_row_fields(row.data, row.len, f, 4, &len), -1);
    copy_int4(&row, 7);
    CHECK_EQ_INT(copy_row_fields(row.data, row.len, f, 4, &len), 2);
    CHECK_EQ_INT(len, row.len);
    CHECK_EQ_INT(copy_row_fields(row.data, row.len - 1, f, 4, &len), -1);
    buf_free(&row);
}

TEST(integers_are_formatted_in_decimal_at_both_ends_of_their_range)
{
    char out[24];
    CHECK_EQ_INT(fmt_u64(out, 0), 1);
    CHECK(memcmp(out, "0", 1) == 0);
    CHECK_EQ_INT(fmt_u64(out, 1024), 4);
    CHECK(memcmp(out, "1024", 4) == 0);
    CHECK_EQ_INT(fmt_u64(out, UINT64_MAX), 20);
    CHECK(memcmp(out, "18446744073709551615", 20) == 0);
    CHECK_EQ_INT(fmt_i64(out, -1), 2);
    CHECK(memcmp(out, "-1", 2) == 0);
    CHECK_EQ_INT(fmt_i64(out, INT64_MIN), 20);
    CHECK(memcmp(out, "-9223372036854775808", 20) == 0);
    CHECK_EQ_INT(fmt_i64(out, INT64_MAX), 19);
    CHECK(memcmp(out, "9223372036854775807", 19) == 0);
    /* Every number up to 200,000, and each power of ten and its neighbours, as printf has it. */
    char want[24];
    int wrong = 0;
    for (uint64_t v = 0; v < 200000; v++) {
        size_t n = fmt_u64(out, v);
        wrong += n != (size_t)snprintf(want, sizeof(want), "%" PRIu64, v) || memcmp(out, want, n);
    }
    for (uint64_t p = 10; p <= UINT64_MAX / 10; p *= 10) {
        for (uint64_t v = p - 1; v <= p + 1; v++) {
            size_t n = fmt_u64(out, v);
            wrong +=
                n != (size_t)snprintf(want, sizeof(want), "%" PRIu64, v) || memcmp(out, want, n);
        }
    }
    CHECK_EQ_INT(wrong, 0);
}

TEST(a_timestamp_has_a_four_digit_year_from_year_1_to_9999)
{
    char out[64];
    /* Seconds since 1970 of each moment, to PostgreSQL's microseconds since 2000. */
    const int64_t pg_epoch_s = 946684800;
    CHECK_EQ_INT(
        copy_format_timestamp((-62135596800 - pg_epoch_s) * 1000000, 'T', "Z", out, sizeof(out)),
        27);
    CHECK_EQ_STR(out, "0001-01-01T00:00:00.000000Z");
    /* 0055-06-12 01:02:03.000004 */
    CHECK(copy_format_timestamp((-60417529077 - pg_epoch_s) * 1000000 + 4, ' ', "+00", out,
                                sizeof(out)) > 0);
    CHECK_EQ_STR(out, "0055-06-12 01:02:03.000004+00");
    CHECK(copy_format_timestamp((253402300799 - pg_epoch_s) * 1000000 + 999999, 'T', "Z", out,
                                sizeof(out)) > 0);
    CHECK_EQ_STR(out, "9999-12-31T23:59:59.999999Z");
    CHECK(copy_format_timestamp(-1, 'T', "Z", out, sizeof(out)) > 0);
    CHECK_EQ_STR(out, "1999-12-31T23:59:59.999999Z");
}

int main(void)
{
    buf_init(&b);
    int rc =
        RUN(T(a_decimal_fraction_becomes_base_10000_digits_with_its_scale),
            T(an_integer_part_is_grouped_from_the_right), T(zero_has_no_digits_and_keeps_its_scale),
            T(malformed_or_too_long_decimals_are_refused),
            T(a_row_reads_back_as_json_with_nulls_text_numbers_and_timestamps),
            T(a_truncated_row_is_reported_not_overread),
            T(integers_are_formatted_in_decimal_at_both_ends_of_their_range),
            T(a_timestamp_has_a_four_digit_year_from_year_1_to_9999));
    buf_free(&b);
    return rc;
}
