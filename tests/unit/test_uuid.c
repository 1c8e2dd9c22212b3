/* UUID parsing, formatting and UUIDv7 generation. */
#include "check.h"
#include "uuid.h"

TEST(a_canonical_uuid_round_trips_in_lower_case)
{
    uint8_t id[16];
    char s[UUID_STRING_LEN + 1];
    CHECK(uuid_parse("0189D2C4-5E6F-7A8B-9C0D-1E2F3A4B5C6D", 36, id));
    uuid_format(id, s);
    CHECK_EQ_STR(s, "0189d2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d");
}

TEST(malformed_uuids_are_refused)
{
    uint8_t id[16];
    CHECK(!uuid_parse("0189d2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6", 35, id));
    CHECK(!uuid_parse("0189d2c4x5e6f-7a8b-9c0d-1e2f3a4b5c6d", 36, id));
    CHECK(!uuid_parse("0189d2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6g", 36, id));
    CHECK(!uuid_parse("{189d2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6}", 36, id));
}

TEST(every_byte_in_every_position_is_taken_exactly_when_it_belongs_there)
{
    static const char valid[] = "0189d2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d";
    int wrong = 0;
    for (size_t i = 0; i < UUID_STRING_LEN; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        for (int c = 0; c < 256; c++) {
            char s[UUID_STRING_LEN];
            uint8_t id[16];
            memcpy(s, valid, UUID_STRING_LEN);
            s[i] = (char)c;
            bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
            wrong += uuid_parse(s, UUID_STRING_LEN, id) != (dash ? c == '-' : hex);
        }
    }
    CHECK_EQ_INT(wrong, 0);
}

TEST(v7_ids_carry_their_timestamp_version_and_variant)
{
    struct uuid_v7_gen g;
    uuid_v7_init(&g, 42);
    uint8_t id[16];
    uint64_t ms = 0;
    uuid_v7_next(&g, 1700000000123ULL, id);
    CHECK(uuid_v7_time(id, &ms));
    CHECK_EQ_INT(ms, 1700000000123ULL);
    CHECK_EQ_INT(id[6] >> 4, 7);
    CHECK_EQ_INT(id[8] >> 6, 2);
}

TEST(v7_ids_increase_strictly_within_a_millisecond_and_when_the_clock_steps_back)
{
    struct uuid_v7_gen g;
    uuid_v7_init(&g, 7);
    uint8_t prev[16], id[16];
    uuid_v7_next(&g, 5000, prev);
    for (int i = 0; i < 100000; i++) {
        uint64_t now = i < 50000 ? 5000 : 4000; /* the clock steps back half way */
        uuid_v7_next(&g, now, id);
        CHECK(memcmp(prev, id, 16) < 0);
        memcpy(prev, id, 16);
    }
}

TEST(a_v4_uuid_has_no_v7_time)
{
    uint8_t id[16];
    uint64_t ms;
    CHECK(uuid_parse("9b2e4f6a-1c3d-4e5f-8a7b-6c5d4e3f2a1b", 36, id));
    CHECK(!uuid_v7_time(id, &ms));
}

int main(void)
{
    return RUN(T(a_canonical_uuid_round_trips_in_lower_case), T(malformed_uuids_are_refused),
               T(every_byte_in_every_position_is_taken_exactly_when_it_belongs_there),
               T(v7_ids_carry_their_timestamp_version_and_variant),
               T(v7_ids_increase_strictly_within_a_millisecond_and_when_the_clock_steps_back),
               T(a_v4_uuid_has_no_v7_time));
}
