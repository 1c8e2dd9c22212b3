/* The records of the file of alerts waiting on disk (alerts_file.h): what is written reads back
 * the same, and a damaged record is refused, never misread. */
#include "alerts_file.h"
#include "check.h"

#include <string.h>

static struct alerts_alert sample(void)
{
    struct alerts_alert al = {.dimension = RULES_SPEND,
                              .window = RULES_MONTH,
                              .shadow = true,
                              .percent = 80,
                              .limit = 5000000,
                              .used = 4000001,
                              .window_start_ms = 1780000000000ULL,
                              .now_ms = 1780000012345ULL};
    for (int i = 0; i < 16; i++)
        al.user_id[i] = (uint8_t)(i * 17);
    strcpy(al.provider, "openai");
    memset(al.model, 'm', RULES_MODEL_BYTES); /* the longest model name */
    return al;
}

TEST(a_record_reads_back_as_written)
{
    struct alerts_alert al = sample(), back;
    uint8_t rec[ALERTS_FILE_RECORD];
    alerts_file_encode(&al, rec);
    CHECK(alerts_file_decode(rec, &back));
    CHECK(memcmp(back.user_id, al.user_id, 16) == 0);
    CHECK_EQ_STR(back.provider, "openai");
    CHECK_EQ_INT(strlen(back.model), RULES_MODEL_BYTES);
    CHECK(back.dimension == RULES_SPEND && back.window == RULES_MONTH && back.shadow);
    CHECK_EQ_INT(back.percent, 80);
    CHECK_EQ_INT(back.limit, 5000000);
    CHECK_EQ_INT(back.used, 4000001);
    CHECK(back.window_start_ms == al.window_start_ms && back.now_ms == al.now_ms);
    /* The same alert, the same row id. */
    uint8_t id1[16], id2[16];
    alerts_id(&al, id1);
    alerts_id(&back, id2);
    CHECK(memcmp(id1, id2, 16) == 0);
}

TEST(a_damaged_record_is_refused)
{
    struct alerts_alert al = sample(), back;
    uint8_t rec[ALERTS_FILE_RECORD];
    for (size_t at = 0; at < ALERTS_FILE_RECORD; at += 7) {
        alerts_file_encode(&al, rec);
        rec[at] ^= 0x20;
        CHECK(!alerts_file_decode(rec, &back));
    }
    memset(rec, 0, sizeof(rec)); /* a hole in the file */
    CHECK(!alerts_file_decode(rec, &back));
}

int main(void)
{
    return RUN(T(a_record_reads_back_as_written), T(a_damaged_record_is_refused));
}
