/* Strict UTF-8 validation, as PostgreSQL's UTF8 encoding requires. */
#include "check.h"
#include "utf8.h"

static int valid(const char *s, size_t len)
{
    size_t n;
    return utf8_valid(s, len, &n);
}

TEST(ascii_and_multibyte_text_is_valid_and_counted_in_characters)
{
    size_t n = 0;
    const char *s = "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80";
    CHECK(utf8_valid(s, strlen(s), &n));
    CHECK_EQ_INT(n, 9);
    CHECK(valid("", 0));
}

TEST(nul_is_refused_because_postgresql_text_cannot_hold_it)
{
    CHECK(!valid("a\0b", 3));
}

TEST(overlong_forms_surrogates_and_out_of_range_code_points_are_refused)
{
    CHECK(!valid("\xc0\xaf", 2));         /* overlong '/' */
    CHECK(!valid("\xe0\x80\xaf", 3));     /* overlong */
    CHECK(!valid("\xed\xa0\x80", 3));     /* U+D800 */
    CHECK(!valid("\xf4\x90\x80\x80", 4)); /* above U+10FFFF */
    CHECK(!valid("\xf0\x80\x80\xaf", 4)); /* overlong */
    CHECK(!valid("\xff", 1));
}

TEST(truncated_sequences_are_refused)
{
    CHECK(!valid("\xe2\x82", 2));
    CHECK(!valid("\xf0\x9f\x98", 3));
    CHECK(!valid("\xc3", 1));
    CHECK(!valid("\x80", 1));
}

int main(void)
{
    return RUN(T(ascii_and_multibyte_text_is_valid_and_counted_in_characters),
               T(nul_is_refused_because_postgresql_text_cannot_hold_it),
               T(overlong_forms_surrogates_and_out_of_range_code_points_are_refused),
               T(truncated_sequences_are_refused));
}
