/* The frame scanner: message boundaries and the size budget, before msgpack-c sees a byte; and
 * the decoder of whole messages, held to what msgpack-c makes of them. */
#include "check.h"
#include "frame.h"

#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

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

/* Every kind of value and each encoding's edges, packed by msgpack-c. */
static void pack_every_kind(msgpack_packer *pk)
{
    static const int64_t ints[] = {0,
                                   1,
                                   127,
                                   128,
                                   255,
                                   256,
                                   65535,
                                   65536,
                                   -1,
                                   -32,
                                   -33,
                                   -128,
                                   -129,
                                   -32768,
                                   -32769,
                                   INT32_MIN,
                                   (int64_t)INT32_MIN - 1,
                                   INT64_MIN,
                                   INT64_MAX,
                                   4294967295LL,
                                   4294967296LL};
    static const size_t sizes[] = {0, 1, 2, 4, 8, 16, 31, 32, 255, 256, 65535, 65536};
    static char bytes[65536];
    for (size_t i = 0; i < sizeof(bytes); i++)
        bytes[i] = (char)(i * 7);
    size_t nints = sizeof(ints) / sizeof(ints[0]), nsizes = sizeof(sizes) / sizeof(sizes[0]);
    msgpack_pack_array(pk, 8 + nints + 1 + 3 * nsizes + 4);
    msgpack_pack_nil(pk);
    msgpack_pack_true(pk);
    msgpack_pack_false(pk);
    msgpack_pack_float(pk, 1.5f);
    msgpack_pack_double(pk, -2.25);
    msgpack_pack_uint64(pk, UINT64_MAX);
    msgpack_pack_uint8(pk, 200);
    msgpack_pack_int8(pk, 5); /* a signed encoding of a value >= 0 */
    for (size_t i = 0; i < nints; i++)
        msgpack_pack_int64(pk, ints[i]);
    /* The same through the fixed-width signed encodings msgpack-c's packer picks for none. */
    msgpack_pack_fix_int64(pk, 7);
    for (size_t i = 0; i < nsizes; i++) {
        msgpack_pack_str_with_body(pk, bytes, sizes[i]);
        msgpack_pack_bin_with_body(pk, bytes, sizes[i]);
        msgpack_pack_ext_with_body(pk, bytes, sizes[i], (int8_t)(i - 3));
    }
    msgpack_pack_array(pk, 0);
    msgpack_pack_map(pk, 0);
    msgpack_pack_map(pk, 20); /* map 16 */
    for (int i = 0; i < 20; i++) {
        msgpack_pack_int(pk, i);
        msgpack_pack_array(pk, (size_t)i);
        for (int j = 0; j < i; j++)
            msgpack_pack_str_with_body(pk, "ab", (size_t)(j % 3));
    }
    msgpack_pack_array(pk, 70000); /* array 32 */
    for (int i = 0; i < 70000; i++)
        msgpack_pack_int(pk, i - 35000);
}

/* frame_decode's object of data[0 .. len) is msgpack_unpack's. */
static bool decodes_like_msgpack_c(const uint8_t *data, size_t len)
{
    msgpack_zone zone, ref_zone;
    msgpack_zone_init(&zone, 4096);
    msgpack_zone_init(&ref_zone, 4096);
    msgpack_object obj, ref;
    size_t used = 0, ref_used = 0;
    bool ok = frame_decode(data, len, &zone, &obj, &used) &&
              msgpack_unpack((const char *)data, len, &ref_used, &ref_zone, &ref) ==
                  MSGPACK_UNPACK_SUCCESS &&
              used == len && ref_used == len && msgpack_object_equal(obj, ref);
    msgpack_zone_destroy(&zone);
    msgpack_zone_destroy(&ref_zone);
    return ok;
}

TEST(a_whole_message_decodes_to_the_object_msgpack_c_makes_of_it)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    pack_every_kind(&pk);
    CHECK(decodes_like_msgpack_c((const uint8_t *)sb.data, sb.size));
    msgpack_sbuffer_destroy(&sb);
    /* The fixed-width encodings of every size, signed and unsigned, the fixexts and a float 32
     * (1.5: a NaN would equal nothing). */
    static const uint8_t fixed[] = {
        0x9d, 0xd0, 0x05, 0xd1, 0xff, 0x00, 0xd2, 0x00, 0x00, 0x01, 0x00, 0xd3, 0x80, 0, 0, 0, 0,
        0,    0,    0,    0xcd, 0x00, 0x07, 0xce, 0,    0,    0,    9,    0xcf, 0,    0, 0, 0, 0,
        0,    0,    1,    0xd4, 1,    2,    0xd5, 2,    1,    2,    0xd6, 0xff, 1,    2, 3, 4, 0xd7,
        0xff, 1,    2,    3,    4,    5,    6,    7,    8,    0xd8, 5,    1,    2,    3, 4, 5, 6,
        7,    8,    9,    10,   11,   12,   13,   14,   15,   16,   0xca, 0x3f, 0xc0, 0, 0};
    CHECK(decodes_like_msgpack_c(fixed, sizeof(fixed)));
}

TEST(a_message_cut_short_anywhere_is_not_decoded)
{
    uint8_t m[] = {0x94, 0x00, 0xce, 0, 0, 1, 0, 0xd9, 3, 'a', 'b',
                   'c',  0x91, 0xcb, 1, 2, 3, 4, 5,    6, 7,   8};
    msgpack_zone zone;
    msgpack_zone_init(&zone, 4096);
    int decoded = 0;
    for (size_t len = 0; len < sizeof(m); len++) {
        msgpack_object obj;
        size_t used;
        decoded += frame_decode(m, len, &zone, &obj, &used);
    }
    CHECK_EQ_INT(decoded, 0);
    CHECK(decodes_like_msgpack_c(m, sizeof(m)));
    msgpack_zone_destroy(&zone);
}

TEST(a_message_is_decoded_up_to_its_end_and_no_further)
{
    uint8_t m[] = {0x92, 0x01, 0xa1, 'x', 0xc1, 0xc1};
    msgpack_zone zone;
    msgpack_zone_init(&zone, 4096);
    msgpack_object obj;
    size_t used = 0;
    CHECK(frame_decode(m, sizeof(m), &zone, &obj, &used));
    CHECK_EQ_INT(used, 4);
    CHECK_EQ_INT(obj.via.array.ptr[1].via.str.ptr - (const char *)m, 3); /* into the message */
    msgpack_zone_destroy(&zone);
}

TEST(the_never_used_byte_and_counts_the_bytes_cannot_hold_are_not_decoded)
{
    msgpack_zone zone;
    msgpack_zone_init(&zone, 4096);
    msgpack_object obj;
    size_t used;
    uint8_t never[] = {0x91, 0xc1};
    CHECK(!frame_decode(never, sizeof(never), &zone, &obj, &used));
    /* array 32 and map 32 of 2^30 elements, in 5 bytes: refused before any allocation */
    uint8_t array[] = {0xdd, 0x40, 0x00, 0x00, 0x00, 0x01, 0x02};
    CHECK(!frame_decode(array, sizeof(array), &zone, &obj, &used));
    uint8_t map[] = {0xdf, 0x40, 0x00, 0x00, 0x00, 0x01, 0x02};
    CHECK(!frame_decode(map, sizeof(map), &zone, &obj, &used));
    msgpack_zone_destroy(&zone);
}

TEST(the_decoder_nests_as_deep_as_the_scanner_and_msgpack_c_and_no_deeper)
{
    uint8_t m[FRAME_MAX_DEPTH + 2];
    msgpack_zone zone;
    msgpack_zone_init(&zone, 4096);
    msgpack_object obj;
    size_t used, n;
    /* FRAME_MAX_DEPTH arrays of one element around a 0; then one more array */
    for (int depth = FRAME_MAX_DEPTH; depth <= FRAME_MAX_DEPTH + 1; depth++) {
        memset(m, 0x91, (size_t)depth);
        m[depth] = 0x00;
        bool decoded = frame_decode(m, (size_t)depth + 1, &zone, &obj, &used);
        CHECK_EQ_INT(decoded, depth == FRAME_MAX_DEPTH);
        CHECK_EQ_INT(scan_all(m, (size_t)depth + 1, 100, &n),
                     depth == FRAME_MAX_DEPTH ? FRAME_COMPLETE : FRAME_TOO_DEEP);
        msgpack_zone_clear(&zone);
    }
    msgpack_zone_destroy(&zone);
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
        T(boundaries_agree_with_msgpack_c_on_packed_values),
        T(a_whole_message_decodes_to_the_object_msgpack_c_makes_of_it),
        T(a_message_cut_short_anywhere_is_not_decoded),
        T(a_message_is_decoded_up_to_its_end_and_no_further),
        T(the_never_used_byte_and_counts_the_bytes_cannot_hold_are_not_decoded),
        T(the_decoder_nests_as_deep_as_the_scanner_and_msgpack_c_and_no_deeper));
}
