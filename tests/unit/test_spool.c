/* The spool on a temporary directory, driven by a real libuv loop: what is appended is read back
 * after a restart, what is committed is gone, damage is set aside, and the cap is kept. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "config.h"
#include "spool.h"
#include "spool_file.h"

/* A step the rest of the test cannot go on without. */
#define REQUIRE(expr)                                                                              \
    do {                                                                                           \
        bool require_ok_ = (expr);                                                                 \
        CHECK(require_ok_ &&#expr);                                                                \
        if (!require_ok_)                                                                          \
            return;                                                                                \
    } while (0)

static char dir[256];
static uv_loop_t loop;

struct waiter {
    int ready;
    int appended;
    int status;
    int closed;
    struct spool_record *rec;
    bool got_record;
};

static void on_ready(void *arg)
{
    ((struct waiter *)arg)->ready++;
}

static void on_space(void *arg)
{
    (void)arg;
}

static void on_appended(void *arg, int status)
{
    struct waiter *w = arg;
    w->appended++;
    w->status = status;
}

static void on_record(void *arg, struct spool_record *rec)
{
    struct waiter *w = arg;
    w->rec = rec;
    w->got_record = true;
}

static void on_closed(struct spool *s, void *arg)
{
    (void)s;
    ((struct waiter *)arg)->closed++;
}

/* Runs the loop until *flag is set; the loop ends by itself if nothing is left to wait for. */
static bool run_until(const int *flag)
{
    while (!*flag)
        if (uv_run(&loop, UV_RUN_ONCE) == 0 && !*flag)
            return false;
    return true;
}

static struct config *config_with(uint64_t max_bytes, uint64_t segment_bytes)
{
    char yaml[512], err[256];
    snprintf(yaml, sizeof(yaml),
             "spool:\n  dir: %s\n  max_bytes: %llu\n  segment_bytes: %llu\n  commit_ms: 1\n", dir,
             (unsigned long long)max_bytes, (unsigned long long)segment_bytes);
    struct config *c = config_parse("t.yaml", yaml, strlen(yaml), err, sizeof(err));
    if (!c)
        fprintf(stderr, "config: %s\n", err);
    return c;
}

static bool open_spool(struct spool *s, struct waiter *w, uint64_t max_bytes,
                       uint64_t segment_bytes)
{
    struct config *c = config_with(max_bytes, segment_bytes);
    char err[256];
    memset(w, 0, sizeof(*w));
    bool ok = c && spool_open(s, &loop, c, on_ready, on_space, w, err, sizeof(err)) == 0;
    config_free(c);
    return ok && run_until(&w->ready) && s->ready;
}

static void close_spool(struct spool *s, struct waiter *w)
{
    spool_close(s, on_closed, w);
    run_until(&w->closed);
    uv_run(&loop, UV_RUN_DEFAULT); /* file work still under way (a deleted segment's unlink) */
}

static bool append(struct spool *s, struct waiter *w, enum event_kind kind, const char *rows,
                   uint32_t nrows)
{
    int before = w->appended;
    if (spool_append(s, kind, (const uint8_t *)rows, strlen(rows), nrows, on_appended, w) < 0)
        return false;
    while (w->appended == before)
        if (uv_run(&loop, UV_RUN_ONCE) == 0 && w->appended == before)
            return false;
    return w->status == 0;
}

static struct spool_record *next_record(struct spool *s, struct waiter *w, enum event_kind kind)
{
    w->got_record = false;
    w->rec = NULL;
    spool_next(s, kind, on_record, w);
    while (!w->got_record)
        if (uv_run(&loop, UV_RUN_ONCE) == 0 && !w->got_record)
            return NULL;
    return w->rec;
}

static void clean_dir(void)
{
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    CHECK_EQ_INT(system(cmd), 0);
    CHECK_EQ_INT(mkdir(dir, 0700), 0);
}

static bool record_is(const struct spool_record *rec, const char *rows, uint32_t nrows)
{
    return rec && rec->len == strlen(rows) && memcmp(rec->rows, rows, rec->len) == 0 &&
           rec->nrows == nrows;
}

TEST(appended_records_are_read_back_in_order_after_a_restart)
{
    clean_dir();
    struct spool s;
    struct waiter w;
    REQUIRE(open_spool(&s, &w, 1 << 20, 1 << 20));
    CHECK(append(&s, &w, EVENT_USAGE, "first", 1));
    CHECK(append(&s, &w, EVENT_USAGE, "second", 2));
    CHECK(append(&s, &w, EVENT_PROMPT, "prompt", 3));
    CHECK_EQ_INT(s.stats.records_spooled, 3);
    close_spool(&s, &w);

    REQUIRE(open_spool(&s, &w, 1 << 20, 1 << 20));
    CHECK(spool_has_records(&s, EVENT_USAGE));
    struct spool_record *a = next_record(&s, &w, EVENT_USAGE);
    CHECK(record_is(a, "first", 1));
    struct spool_record *b = next_record(&s, &w, EVENT_USAGE);
    CHECK(record_is(b, "second", 2));
    CHECK(!spool_has_records(&s, EVENT_USAGE));
    struct spool_record *p = next_record(&s, &w, EVENT_PROMPT);
    CHECK(record_is(p, "prompt", 3));
    if (a)
        spool_release(&s, a, false);
    if (b)
        spool_release(&s, b, false);
    if (p)
        spool_release(&s, p, false);
    close_spool(&s, &w);
}

TEST(a_segment_comes_back_whole_until_every_record_in_it_is_committed)
{
    clean_dir();
    struct spool s;
    struct waiter w;
    REQUIRE(open_spool(&s, &w, 1 << 20, 1 << 20));
    CHECK(append(&s, &w, EVENT_USAGE, "one", 1));
    CHECK(append(&s, &w, EVENT_USAGE, "two", 1));
    struct spool_record *a = next_record(&s, &w, EVENT_USAGE);
    struct spool_record *b = next_record(&s, &w, EVENT_USAGE);
    CHECK(record_is(a, "one", 1) && record_is(b, "two", 1));
    if (b)
        spool_release(&s, b, true); /* committed */
    if (a)
        spool_release(&s, a, false); /* not committed: its segment stays */
    close_spool(&s, &w);

    /* Both again: the segment is read whole (the writers insert idempotently). */
    REQUIRE(open_spool(&s, &w, 1 << 20, 1 << 20));
    a = next_record(&s, &w, EVENT_USAGE);
    b = next_record(&s, &w, EVENT_USAGE);
    CHECK(record_is(a, "one", 1) && record_is(b, "two", 1));
    CHECK(!spool_has_records(&s, EVENT_USAGE));
    if (a)
        spool_release(&s, a, true);
    if (b)
        spool_release(&s, b, true);
    CHECK_EQ_INT(s.stats.segments_deleted, 1);
    close_spool(&s, &w);

    REQUIRE(open_spool(&s, &w, 1 << 20, 1 << 20));
    CHECK(!spool_has_records(&s, EVENT_USAGE));
    CHECK_EQ_INT(s.bytes, 0);
    close_spool(&s, &w);
}

TEST(a_damaged_record_is_quarantined_and_the_records_around_it_kept)
{
    clean_dir();
    struct spool s;
    struct waiter w;
    REQUIRE(open_spool(&s, &w, 1 << 20, 1 << 20));
    CHECK(append(&s, &w, EVENT_USAGE, "before", 1));
    CHECK(append(&s, &w, EVENT_USAGE, "damaged", 1));
    CHECK(append(&s, &w, EVENT_USAGE, "after", 1));
    close_spool(&s, &w);

    /* Flip a byte of the second record's rows. */
    char table_dir[400], path[600];
    snprintf(table_dir, sizeof(table_dir), "%s/api_usage_logs", dir);
    spool_file_segment_path(table_dir, 1, path, sizeof(path));
    int fd = open(path, O_RDWR);
    CHECK(fd >= 0);
    off_t at = (off_t)(SPOOL_HEADER_LEN + strlen("before") + SPOOL_HEADER_LEN + 2);
    CHECK_EQ_INT(pwrite(fd, "X", 1, at), 1);
    close(fd);

    REQUIRE(open_spool(&s, &w, 1 << 20, 1 << 20));
    CHECK_EQ_INT(s.stats.corrupt_records, 1);
    struct spool_record *a = next_record(&s, &w, EVENT_USAGE);
    CHECK(record_is(a, "before", 1));
    struct spool_record *b = next_record(&s, &w, EVENT_USAGE);
    CHECK(record_is(b, "after", 1));
    CHECK(!spool_has_records(&s, EVENT_USAGE));
    if (a)
        spool_release(&s, a, false);
    if (b)
        spool_release(&s, b, false);
    close_spool(&s, &w);
    char qdir[600];
    snprintf(qdir, sizeof(qdir), "%s/api_usage_logs/quarantine", dir);
    struct stat st;
    CHECK_EQ_INT(stat(qdir, &st), 0);
}

static char half_mib[512 << 10];

TEST(an_append_past_max_bytes_is_refused_at_once)
{
    clean_dir();
    struct spool s;
    struct waiter w;
    REQUIRE(open_spool(&s, &w, 1 << 20, 64 << 10));
    memset(half_mib, 'x', sizeof(half_mib) - 1);
    CHECK(append(&s, &w, EVENT_USAGE, half_mib, 1));
    CHECK(spool_has_room(&s, 1000));
    CHECK(!spool_has_room(&s, sizeof(half_mib)));
    int appended = w.appended;
    CHECK_EQ_INT(spool_append(&s, EVENT_USAGE, (const uint8_t *)half_mib, sizeof(half_mib), 1,
                              on_appended, &w),
                 -ENOSPC);
    CHECK_EQ_INT(w.appended, appended); /* no callback for a refused append */
    close_spool(&s, &w);
}

TEST(a_second_spool_on_the_same_directory_is_refused)
{
    clean_dir();
    struct spool s, other;
    struct waiter w;
    REQUIRE(open_spool(&s, &w, 1 << 20, 1 << 20));
    struct config *c = config_with(1 << 20, 1 << 20);
    char err[256];
    CHECK(c && spool_open(&other, &loop, c, on_ready, on_space, &w, err, sizeof(err)) < 0);
    CHECK(check_contains(err, "in use by another usaged"));
    config_free(c);
    close_spool(&s, &w);
}

int main(void)
{
    snprintf(dir, sizeof(dir), "%s/usaged-test-spool-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    uv_loop_init(&loop);
    int rc = RUN(T(appended_records_are_read_back_in_order_after_a_restart),
                 T(a_segment_comes_back_whole_until_every_record_in_it_is_committed),
                 T(a_damaged_record_is_quarantined_and_the_records_around_it_kept),
                 T(an_append_past_max_bytes_is_refused_at_once),
                 T(a_second_spool_on_the_same_directory_is_refused));
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        rc = 1;
    return rc || check_failures;
}
