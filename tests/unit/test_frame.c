/* The frame scanner: message boundaries and the size budget, before msgpack-c sees a byte. */
#include "check.h"
#include "frame.h"

#include <msgpack.h>
#include <stdlib.h>

static enum frame_status scan_all(const uint8_t *data, size_t len, size_t budget, size_t *msglen)
{
    struct frame_scanner s;
    frame_init(&s, budget);
    enum frame_status st = frame_scan(&s, data, len);
    *msglen = frame_length(&s);
    return st;
}

TEST(a_fixint_is_a_complete_message_of_one_byte)
{
    uint8_t m[] = {0x05, 0x06};
    size_t n;
    CHECK_EQ_INT(scan_all(m, sizeof(m), 100, &n), FRAME_COMPLETE);
    CHECK_EQ_INT(n, 1);
}

TEST(a_request_envelope_ends_after_its_params)
{
    /* [0, 7, "ping", []] then garbage that belongs to the next message */
    uint8_t m[] = {0x94, 0x00, 0x07, 0xa4, 'p', 'i', 'n', 'g', 0x90, 0xc1};
    size_t n;
    CHECK_EQ_INT(scan_all(m, sizeof(m), 100, &n), FRAME_COMPLETE);
    CHECK_EQ_INT(n, 9);
}

TEST(every_prefix_of_a_message_needs_more)
{
    uint8_t m[] = {0x94, 0x00, 0xce, 0, 0, 1, 0, 0xd9, 3, 'a', 'b',
                   'c',  0x91, 0xcb, 1, 2, 3, 4, 5,    6, 7,   8};
    for (size_t len = 0; len < sizeof(m); len++) {
        size_t n;
        CHECK_EQ_INT(scan_all(m, len, 100, &n), FRAME_NEED_MORE);
    }
    size_t n;
    CHECK_EQ_INT(scan_all(m, sizeof(m), 100, &n), FRAME_COMPLETE);
    CHECK_EQ_INT(n, sizeof(m));
}

TEST(scanning_resumes_byte_by_byte_where_it_stopped)
{
    uint8_t m[] = {0x93, 0x02, 0xa3, 'l', 'o', 'g', 0x91, 0x82, 0xa1, 'a', 0xc3, 0xa1, 'b', 0xc0};
    struct frame_scanner s;
    frame_init(&s, 100);
    for (size_t len = 1; len < sizeof(m); len++)
        CHECK_EQ_INT(frame_scan(&s, m, len), FRAME_NEED_MORE);
    CHECK_EQ_INT(frame_scan(&s, m, sizeof(m)), FRAME_COMPLETE);
    CHECK_EQ_INT(frame_length(&s), sizeof(m));
}

TEST(an_array_declaring_more_elements_than_bytes_left_is_too_large)
{
    /* array 32 of 2^30 elements: 5 bytes that would make msgpack-c allocate tens of GiB */
    uint8_t m[] = {0xdd, 0x40, 0x00, 0x00, 0x00};
    size_t n;
    CHECK_EQ_INT(scan_all(m, sizeof(m), 1 << 20, &n), FRAME_TOO_LARGE);
}

TEST(a_map_counts_two_elements_per_entry_against_the_budget)
{
    uint8_t fits[] = {0xde, 0x00, 0x31}; /* 49 entries need 98 bytes: 3 + 98 fits in 101 */
    uint8_t over[] = {0xde, 0x00, 0x32}; /* 50 entries need 100 bytes: 3 + 100 does not */
    size_t n;
    CHECK_EQ_INT(scan_all(fits, sizeof(fits), 101, &n), FRAME_NEED_MORE);
    CHECK_EQ_INT(scan_all(over, sizeof(over), 101, &n), FRAME_TOO_LARGE);
}

TEST(a_str_or_bin_longer_than_the_budget_left_is_too_large)
{
    uint8_t str[] = {0xdb, 0x00, 0x10, 0x00, 0x00};
    uint8_t bin[] = {0xc6, 0x7f, 0xff, 0xff, 0xff};
    uint8_t ext[] = {0xc9, 0x00, 0x10, 0x00, 0x00, 0x01};
    size_t n;
    CHECK_EQ_INT(scan_all(str, sizeof(str), 4096, &n), FRAME_TOO_LARGE);
    CHECK_EQ_INT(scan_all(bin, sizeof(bin), 4096, &n), FRAME_TOO_LARGE);
    CHECK_EQ_INT(scan_all(ext, sizeof(ext), 4096, &n), FRAME_TOO_LARGE);
}

TEST(a_message_of_exactly_the_budget_is_accepted_and_one_more_byte_is_not)
{
    uint8_t m[16] = {0xaf}; /* fixstr of 15 bytes: 16 bytes in all */
    size_t n;
    CHECK_EQ_INT(scan_all(m, sizeof(m), 16, &n), FRAME_COMPLETE);
    CHECK_EQ_INT(scan_all(m, sizeof(m), 15, &n), FRAME_TOO_LARGE);
}

TEST(the_never_used_byte_is_invalid)
{
    uint8_t m[] = {0x92, 0x01, 0xc1};
    size_t n;
    CHECK_EQ_INT(scan_all(m, sizeof(m), 100, &n), FRAME_INVALID);
}

TEST(nesting_deeper_than_msgpack_c_accepts_is_refused)
{
    uint8_t m[FRAME_MAX_DEPTH + 2];
    memset(m, 0x91, sizeof(m));
    size_t n;
    CHECK_EQ_INT(scan_all(m, FRAME_MAX_DEPTH, 100, &n), FRAME_NEED_MORE);
    CHECK_EQ_INT(scan_all(m, sizeof(m), 100, &n), FRAME_TOO_DEEP);
}

TEST(an_empty_container_at_the_depth_limit_is_too_deep_as_msgpack_c_says)
{
    uint8_t m[FRAME_MAX_DEPTH + 1];
    memset(m, 0x91, FRAME_MAX_DEPTH);
    m[FRAME_MAX_DEPTH] = 0x90;
    size_t n;
    CHECK_EQ_INT(scan_all(m, sizeof(m), 100, &n), FRAME_TOO_DEEP);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    CHECK(msgpack_unpack_next(&u, (const char *)m, sizeof(m), &off) < 0);
    msgpack_unpacked_destroy(&u);
}

TEST(empty_containers_and_strings_complete_at_once)
{
    uint8_t m[] = {0x93, 0x90, 0x80, 0xa0};
    size_t n;
    CHECK_EQ_INT(scan_all(m, sizeof(m), 100, &n), FRAME_COMPLETE);
    CHECK_EQ_INT(n, 4);
}

TEST(fixext_and_timestamp_ext_have_their_fixed_sizes)
{
    /* [ts32, ts64, ts96] */
    uint8_t m[] = {0x93, 0xd6, 0xff, 1,    2, 3, 4, 0xd7, 0xff, 1, 2, 3, 4, 5,  6,  7,
                   8,    0xc7, 12,   0xff, 1, 2, 3, 4,    5,    6, 7, 8, 9, 10, 11, 12};
    size_t n;
    CHECK_EQ_INT(scan_all(m, sizeof(m), 100, &n), FRAME_COMPLETE);
    CHECK_EQ_INT(n, sizeof(m));
}

TEST(boundaries_agree_with_msgpack_c_on_packed_values)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    for (int i = 0; i < 200; i++) {
        msgpack_pack_array(&pk, 4);
        msgpack_pack_int64(&pk, (int64_t)i * -1234567);
        msgpack_pack_double(&pk, i * 0.5);
        msgpack_pack_str_with_body(&pk, "hello world", (size_t)(i % 12));
        msgpack_pack_map(&pk, (size_t)(i % 3));
        for (int k = 0; k < i % 3; k++) {
            msgpack_pack_uint64(&pk, (uint64_t)k << 40);
            msgpack_pack_bin_with_body(&pk, "xyz", 3);
        }
    }
    size_t off = 0, count = 0;
    while (off < sb.size) {
        struct frame_scanner s;
        frame_init(&s, 1 << 20);
        CHECK_EQ_INT(frame_scan(&s, (const uint8_t *)sb.data + off, sb.size - off), FRAME_COMPLETE);
        size_t mp_off = off;
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        CHECK(msgpack_unpack_next(&u, sb.data, sb.size, &mp_off) >= MSGPACK_UNPACK_EXTRA_BYTES);
        msgpack_unpacked_destroy(&u);
        CHECK_EQ_INT(mp_off - off, frame_length(&s));
        off = mp_off;
        count++;
    }
    CHECK_EQ_INT(count, 200);
    msgpack_sbuffer_destroy(&sb);
}

int main(void)
{
    return RUN(
        T(a_fixint_is_a_complete_message_of_one_byte), T(a_request_envelope_ends_after_its_params),
        T(every_prefix_of_a_message_needs_more), T(scanning_resumes_byte_by_byte_where_it_stopped),
        T(an_array_declaring_more_elements_than_bytes_left_is_too_large),
        T(a_map_counts_two_elements_per_entry_against_the_budget),
        T(a_str_or_bin_longer_than_the_budget_left_is_too_large),
        T(a_message_of_exactly_the_budget_is_accepted_and_one_more_byte_is_not),
        T(the_never_used_byte_is_invalid), T(nesting_deeper_than_msgpack_c_accepts_is_refused),
        T(an_empty_container_at_the_depth_limit_is_too_deep_as_msgpack_c_says),
        T(empty_containers_and_strings_complete_at_once),
        T(fixext_and_timestamp_ext_have_their_fixed_sizes),
        T(boundaries_agree_with_msgpack_c_on_packed_values));
}
