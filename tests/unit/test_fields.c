/* The table-driven reading of params maps: keys refused by name, values read by kind. */
#include "check.h"
#include "fields.h"

static msgpack_sbuffer sb;
static msgpack_packer pk;
static msgpack_unpacked u;

static void key(const char *k)
{
    msgpack_pack_str_with_body(&pk, k, strlen(k));
}

static void kv_str(const char *k, const char *v)
{
    key(k);
    msgpack_pack_str_with_body(&pk, v, strlen(v));
}

static void kv_int(const char *k, int64_t v)
{
    key(k);
    msgpack_pack_int64(&pk, v);
}

static const msgpack_object_map *done(void)
{
    size_t off = 0;
    msgpack_unpacked_destroy(&u);
    msgpack_unpacked_init(&u);
    msgpack_unpack_next(&u, sb.data, sb.size, &off);
    msgpack_sbuffer_clear(&sb);
    return &u.data.via.map;
}

static const char *const modes[] = {"fast", "slow", "careful", NULL};

static const struct fields_spec specs[] = {
    {FIELDS_NAME("user_id"), .kind = FIELDS_UUID, .required = true},
    {FIELDS_NAME("name"), .kind = FIELDS_TEXT, .min_chars = 1, .max_chars = 3},
    {FIELDS_NAME("count"), .kind = FIELDS_INT, .min = -5, .max = 5},
    {FIELDS_NAME("mode"), .kind = FIELDS_CHOICE, .choices = modes},
    {FIELDS_NAME("price"), .kind = FIELDS_DECIMAL},
    {FIELDS_NAME("at"), .kind = FIELDS_TIMESTAMP},
    {FIELDS_NAME("ratio"), .kind = FIELDS_FLOAT, .min = 0, .max = 2},
    {FIELDS_NAME("flag"), .kind = FIELDS_BOOL, .invalid = "flag is a switch"},
};
#define NSPECS ((int)(sizeof(specs) / sizeof(specs[0])))
static const struct fields_table table = {specs, NSPECS, NULL};
static const struct fields_table strict = {specs, NSPECS, "unknown option; see the manual"};

static const char *uid = "0189d2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d";

static bool parse(const struct fields_table *t, struct fields_value *out, bool *given,
                  struct rpc_error *err)
{
    return fields_parse(t, done(), out, given, err);
}

TEST(every_kind_is_read_into_its_value)
{
    msgpack_pack_map(&pk, 8);
    kv_str("user_id", uid);
    kv_str("name", "héé");
    kv_int("count", -5);
    kv_str("mode", "careful");
    kv_str("price", "0.0125");
    kv_int("at", 1700000000123);
    key("ratio");
    msgpack_pack_double(&pk, 1.5);
    key("flag");
    msgpack_pack_true(&pk);
    struct fields_value v[NSPECS];
    bool given[NSPECS];
    struct rpc_error err;
    CHECK(parse(&table, v, given, &err));
    CHECK_EQ_INT(v[0].uuid[0], 0x01);
    CHECK_EQ_INT(v[0].uuid[15], 0x6d);
    CHECK_EQ_INT(v[1].text.len, 5);
    CHECK_EQ_INT(v[2].i, -5);
    CHECK_EQ_INT(v[3].choice, 2);
    CHECK_EQ_STR(v[3].text.ptr, "careful");
    CHECK_EQ_STR(v[4].decimal.text, "0.0125");
    CHECK_EQ_INT(v[5].unix_us, 1700000000123000);
    CHECK(v[6].d == 1.5);
    CHECK(v[7].b);
    for (int i = 0; i < NSPECS; i++)
        CHECK(given[i]);
}

TEST(nil_is_absent_and_a_required_field_absent_is_named)
{
    msgpack_pack_map(&pk, 2);
    key("user_id");
    msgpack_pack_nil(&pk);
    kv_str("name", "ab");
    struct fields_value v[NSPECS];
    bool given[NSPECS];
    struct rpc_error err;
    CHECK(!parse(&table, v, given, &err));
    CHECK_EQ_INT(err.code, RPC_INVALID_FIELD);
    CHECK_EQ_STR(err.field, "user_id");
    CHECK_EQ_STR(err.message, "user_id is required");
    CHECK_EQ_INT(err.index, -1);

    msgpack_pack_map(&pk, 2);
    kv_str("user_id", uid);
    key("count");
    msgpack_pack_nil(&pk);
    CHECK(parse(&table, v, given, &err));
    CHECK(!given[2]);
}

TEST(an_unknown_key_is_named_even_after_a_known_one)
{
    msgpack_pack_map(&pk, 2);
    kv_str("mode", "fast");
    kv_int("mode2", 1);
    struct fields_value v[NSPECS];
    bool given[NSPECS];
    struct rpc_error err;
    CHECK(!parse(&table, v, given, &err));
    CHECK_EQ_STR(err.field, "mode2");
    CHECK_EQ_STR(err.message, "unknown field mode2");

    msgpack_pack_map(&pk, 1);
    kv_int("mode2", 1);
    CHECK(!parse(&strict, v, given, &err));
    CHECK_EQ_STR(err.field, "mode2");
    CHECK_EQ_STR(err.message, "unknown option; see the manual");
}

TEST(an_unknown_key_goes_back_as_printable_ascii)
{
    msgpack_pack_map(&pk, 1);
    kv_int("b\xc3\xa9\x01", 1);
    struct fields_value v[NSPECS];
    bool given[NSPECS];
    struct rpc_error err;
    CHECK(!parse(&table, v, given, &err));
    CHECK_EQ_STR(err.field, "b???");
}

TEST(a_key_that_is_not_a_string_is_refused)
{
    msgpack_pack_map(&pk, 1);
    msgpack_pack_int(&pk, 7);
    msgpack_pack_int(&pk, 7);
    struct fields_value v[NSPECS];
    bool given[NSPECS];
    struct rpc_error err;
    CHECK(!parse(&table, v, given, &err));
    CHECK_EQ_INT(err.code, RPC_INVALID_FIELD);
    CHECK_EQ_STR(err.field, "");
    CHECK_EQ_STR(err.message, "field names must be strings");
}

TEST(a_key_given_twice_is_refused_even_when_nil)
{
    msgpack_pack_map(&pk, 3);
    kv_str("user_id", uid);
    key("count");
    msgpack_pack_nil(&pk);
    kv_int("count", 1);
    struct fields_value v[NSPECS];
    bool given[NSPECS];
    struct rpc_error err;
    CHECK(!parse(&table, v, given, &err));
    CHECK_EQ_STR(err.field, "count");
    CHECK_EQ_STR(err.message, "count is given twice");
}

static const char *value_error(void (*pack)(void), const char *name)
{
    static struct rpc_error err;
    msgpack_pack_map(&pk, 2);
    kv_str("user_id", uid);
    key(name);
    pack();
    struct fields_value v[NSPECS];
    bool given[NSPECS];
    if (parse(&table, v, given, &err))
        return "(accepted)";
    CHECK_EQ_STR(err.field, name);
    return err.message;
}

static void pack_long_text(void)
{
    msgpack_pack_str_with_body(&pk, "abcd", 4);
}
static void pack_empty_text(void)
{
    msgpack_pack_str_with_body(&pk, "", 0);
}
static void pack_six(void)
{
    msgpack_pack_int(&pk, 6);
}
static void pack_nope(void)
{
    msgpack_pack_str_with_body(&pk, "nope", 4);
}
static void pack_negative(void)
{
    msgpack_pack_int(&pk, -1);
}
static void pack_year_10000(void)
{
    msgpack_pack_int64(&pk, 253402300800000LL);
}
static void pack_nan(void)
{
    msgpack_pack_double(&pk, 0.0 / 0.0);
}
static void pack_one(void)
{
    msgpack_pack_int(&pk, 1);
}

TEST(each_kind_says_what_it_takes)
{
    CHECK_EQ_STR(value_error(pack_long_text, "name"), "name is longer than 3 characters");
    CHECK_EQ_STR(value_error(pack_empty_text, "name"), "name must not be empty");
    CHECK_EQ_STR(value_error(pack_six, "count"), "count must be between -5 and 5");
    CHECK_EQ_STR(value_error(pack_nope, "count"), "count must be an integer");
    CHECK_EQ_STR(value_error(pack_nope, "mode"), "mode must be fast, slow or careful");
    CHECK_EQ_STR(value_error(pack_negative, "price"), "price must be >= 0");
    CHECK_EQ_STR(value_error(pack_year_10000, "at"),
                 "at must be a timestamp (ext -1) or integer ms between years 1 and 9999");
    CHECK_EQ_STR(value_error(pack_nan, "ratio"), "ratio must be between 0 and 2");
}

TEST(a_spec_can_say_its_own_message)
{
    CHECK_EQ_STR(value_error(pack_one, "flag"), "flag is a switch");
}

TEST(a_bad_uuid_is_named)
{
    msgpack_pack_map(&pk, 1);
    kv_str("user_id", "nope");
    struct fields_value v[NSPECS];
    bool given[NSPECS];
    struct rpc_error err;
    CHECK(!parse(&table, v, given, &err));
    CHECK_EQ_STR(err.field, "user_id");
    CHECK_EQ_STR(err.message, "user_id must be a uuid (36-char string or 16-byte bin)");
}

TEST(a_double_becomes_the_shortest_decimal_without_exponent)
{
    char text[96];
    CHECK_EQ_INT(fields_double_to_decimal(0.1, false, text, sizeof(text)), 3);
    CHECK_EQ_STR(text, "0.1");
    CHECK(fields_double_to_decimal(1.5e-7, false, text, sizeof(text)) > 0);
    CHECK_EQ_STR(text, "0.00000015");
    CHECK_EQ_INT(fields_double_to_decimal(1e300, false, text, sizeof(text)), 0);
    /* A float32 widened to a double is read as the float's own shortest decimal. */
    CHECK(fields_double_to_decimal((double)0.35f, false, text, sizeof(text)) > 0);
    CHECK_EQ_STR(text, "0.3499999940395355");
    CHECK_EQ_INT(fields_double_to_decimal((double)0.35f, true, text, sizeof(text)), 4);
    CHECK_EQ_STR(text, "0.35");
    CHECK(fields_double_to_decimal((double)0.0035f, true, text, sizeof(text)) > 0);
    CHECK_EQ_STR(text, "0.0035");
    CHECK(fields_double_to_decimal((double)16777217.0f, true, text, sizeof(text)) > 0);
    CHECK_EQ_STR(text, "16777216");
    CHECK(fields_double_to_decimal((double)1.2345678e-5f, true, text, sizeof(text)) > 0);
    CHECK_EQ_STR(text, "0.000012345678");
}

int main(void)
{
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_unpacked_init(&u);
    int rc = RUN(
        T(every_kind_is_read_into_its_value), T(nil_is_absent_and_a_required_field_absent_is_named),
        T(an_unknown_key_is_named_even_after_a_known_one),
        T(an_unknown_key_goes_back_as_printable_ascii), T(a_key_that_is_not_a_string_is_refused),
        T(a_key_given_twice_is_refused_even_when_nil), T(each_kind_says_what_it_takes),
        T(a_spec_can_say_its_own_message), T(a_bad_uuid_is_named),
        T(a_double_becomes_the_shortest_decimal_without_exponent));
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}
