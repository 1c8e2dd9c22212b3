/* spool: see spool.h.
 *
 * The records' format and the scan at start are in spool_file.c.
 *
 * Threads: the loop owns every structure here, except that while write_busy the write job owns
 * the table's fd/fd_segment/fd_size/next_id and the appends of its group, and while a recovery
 * or read job runs it owns only what it was handed. */
#include "spool.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "spool_file.h"
#include "xalloc.h"

#define GROUP_MAX_BYTES (8u << 20) /* one group commit writes at most this much */

struct spool_append {
    const uint8_t *rows;
    size_t len;
    uint32_t nrows;
    uint8_t header[SPOOL_HEADER_LEN];
    spool_done_fn done;
    void *arg;
    uint64_t segment; /* where the write job put it */
    uint64_t offset;
    struct spool_append *next;
};

static const char *table_dir_name(enum event_kind kind)
{
    return event_table(kind)->name;
}

static struct spool_segment *find_segment(struct spool_table *t, uint64_t id)
{
    for (struct spool_segment *seg = t->head; seg; seg = seg->next)
        if (seg->id == id)
            return seg;
    return NULL;
}

/* ---- recovery: the scan runs on the thread pool (spool_file_recover) ---- */

static struct spool_recovery *recovery_of(struct spool_table *t)
{
    return t->recover_work.data;
}

static void recover_job(uv_work_t *w)
{
    struct spool_table *t =
        (struct spool_table *)((char *)w - offsetof(struct spool_table, recover_work));
    spool_file_recover(t->dir, t->kind, recovery_of(t));
}

static void recover_done(uv_work_t *w, int status)
{
    (void)status;
    struct spool_table *t =
        (struct spool_table *)((char *)w - offsetof(struct spool_table, recover_work));
    struct spool *s = t->s;
    struct spool_recovery *rec = recovery_of(t);
    t->head = rec->head;
    t->tail = rec->tail;
    t->next_id = rec->next_id;
    s->bytes += rec->bytes;
    s->stats.corrupt_records += rec->corrupt_records;
    s->stats.quarantined_bytes += rec->quarantined_bytes;
    if (rec->error) {
        snprintf(s->error, sizeof(s->error), "%s: %s", t->dir, strerror(rec->error));
        log_error("spool: %s", s->error);
    }
    if (rec->corrupt_records)
        log_error("spool %s: %" PRIu64 " damaged record(s), %" PRIu64
                  " bytes, moved to %s/quarantine; the valid records around them are kept",
                  table_dir_name(t->kind), rec->corrupt_records, rec->quarantined_bytes, t->dir);
    uint64_t records = 0;
    for (struct spool_segment *seg = t->head; seg; seg = seg->next)
        records += seg->nrecords;
    if (records)
        log_info("spool %s: %" PRIu64 " record(s) to replay", table_dir_name(t->kind), records);
    free(rec);
    w->data = NULL;
    if (--s->recovering == 0) {
        s->ready = s->error[0] == '\0';
        if (s->on_ready)
            s->on_ready(s->cb_arg);
    }
}

/* ---- appends (group commit on the thread pool) ---- */

static int open_segment(struct spool_table *t)
{
    char path[700];
    uint64_t id = t->next_id++;
    spool_file_segment_path(t->dir, id, path, sizeof(path));
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    /* The new name must survive a crash too, or records acked in it could vanish with it. */
    int rc = spool_file_fsync_dir(t->dir);
    if (rc < 0) {
        close(fd);
        unlink(path);
        return rc;
    }
    t->fd = fd;
    t->fd_segment = id;
    t->fd_size = 0;
    return 0;
}

static int write_all(int fd, struct iovec *iov, int n)
{
    while (n > 0) {
        ssize_t w = writev(fd, iov, n > IOV_MAX ? IOV_MAX : n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        size_t left = (size_t)w;
        while (n > 0 && left >= iov->iov_len) {
            left -= iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0 && left) {
            iov->iov_base = (uint8_t *)iov->iov_base + left;
            iov->iov_len -= left;
        }
    }
    return 0;
}

/* Writes the table's group and fdatasyncs it: 0 or a negative errno. A failed group is cut
 * back out of its segment, which is then left for a new one. */
static int write_group(struct spool_table *t)
{
    struct spool *s = t->s;
    int status = 0;
    struct iovec iov[128];
    int n = 0;
    uint64_t group_start = t->fd_size;
    for (struct spool_append *a = t->group; a && status == 0; a = a->next) {
        size_t rec_len = SPOOL_HEADER_LEN + a->len;
        bool rotate = t->fd >= 0 && t->fd_size > 0 && t->fd_size + rec_len > s->segment_bytes;
        if (rotate || n == 128) {
            status = write_all(t->fd, iov, n);
            n = 0;
            if (status == 0 && rotate) {
                if (fdatasync(t->fd) < 0)
                    status = -errno;
                close(t->fd);
                t->fd = -1;
            }
        }
        if (status == 0 && t->fd < 0) {
            status = open_segment(t);
            group_start = 0;
        }
        if (status != 0)
            break;
        a->segment = t->fd_segment;
        a->offset = t->fd_size;
        iov[n].iov_base = a->header;
        iov[n++].iov_len = SPOOL_HEADER_LEN;
        iov[n].iov_base = (void *)a->rows;
        iov[n++].iov_len = a->len;
        t->fd_size += rec_len;
        if (n == 128) {
            status = write_all(t->fd, iov, n);
            n = 0;
        }
    }
    if (status == 0 && n)
        status = write_all(t->fd, iov, n);
    if (status == 0 && fdatasync(t->fd) < 0)
        status = -errno;
    if (status != 0 && t->fd >= 0) {
        /* Nothing of a failed group may count: cut the file back and start a new segment. */
        if (ftruncate(t->fd, (off_t)group_start) == 0)
            fdatasync(t->fd);
        close(t->fd);
        t->fd = -1;
    }
    return status;
}

/* The segment just written is no longer where a restarted daemon looks (its file or directory
 * was removed or moved away): what was written there would be lost. */
static bool segment_gone(const struct spool_table *t)
{
    struct stat open_st, path_st;
    char path[700];
    spool_file_segment_path(t->dir, t->fd_segment, path, sizeof(path));
    return fstat(t->fd, &open_st) < 0 || open_st.st_nlink == 0 || stat(path, &path_st) < 0 ||
           path_st.st_ino != open_st.st_ino || path_st.st_dev != open_st.st_dev;
}

/* One daemon per spool: a second one replaying the same records would only waste work, but
 * two appending to one segment sequence would collide. Takes dir/lock (made if missing) into
 * *fd: 0, -EWOULDBLOCK when another process holds it, or another -errno. The lock goes with the
 * process. */
static int take_lock(const char *dir, int *fd)
{
    char lock[600];
    snprintf(lock, sizeof(lock), "%s/lock", dir);
    *fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (*fd < 0)
        return -errno;
    if (flock(*fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        close(*fd);
        *fd = -1;
        return -e;
    }
    return 0;
}

/* The spool's directory was made again: its lock file went with the old one, so another daemon
 * started on it now would not see this one. Takes the lock again (once, whichever table's job
 * gets here first): 0, or -EBUSY when another daemon holds it (then for good: lock_lost). */
static int relock(struct spool *s)
{
    char lock[600];
    snprintf(lock, sizeof(lock), "%s/lock", s->dir);
    uv_mutex_lock(&s->lock_mutex);
    struct stat held, there;
    int rc = 0;
    if (fstat(s->lock_fd, &held) < 0 || stat(lock, &there) < 0 || held.st_ino != there.st_ino ||
        held.st_dev != there.st_dev) {
        int fd;
        rc = take_lock(s->dir, &fd);
        if (rc == 0) {
            close(s->lock_fd);
            s->lock_fd = fd;
        } else if (rc == -EWOULDBLOCK) {
            s->lock_lost = true;
        }
    }
    rc = s->lock_lost ? -EBUSY : rc;
    uv_mutex_unlock(&s->lock_mutex);
    return rc;
}

static bool lock_lost(struct spool *s)
{
    uv_mutex_lock(&s->lock_mutex);
    bool lost = s->lock_lost;
    uv_mutex_unlock(&s->lock_mutex);
    return lost;
}

/* Makes the table's directory again, its parents' names durable too, and the spool's lock. */
static int remake_dir(const struct spool_table *t)
{
    int rc = spool_file_mkdir_p(t->dir);
    if (rc < 0)
        return rc;
    rc = spool_file_fsync_dir(t->s->dir); /* the table directory's name */
    char parent[600];
    snprintf(parent, sizeof(parent), "%s/..", t->s->dir);
    if (rc == 0)
        rc = spool_file_fsync_dir(parent); /* spool.dir's own name, if it was made again */
    return rc == 0 ? relock(t->s) : rc;
}

static void write_job(uv_work_t *w)
{
    struct spool_table *t = w->data;
    t->group_remade = false;
    if (lock_lost(t->s)) {
        t->group_status = -EBUSY;
        return;
    }
    int status = write_group(t);
    if (status == 0 && segment_gone(t)) {
        /* A durable ack must mean a file a restarted daemon finds: write the group again, in a
         * new segment of a directory made again. */
        t->group_remade = true;
        close(t->fd);
        t->fd = -1;
        status = remake_dir(t);
        if (status == 0)
            status = write_group(t);
        if (status == 0 && segment_gone(t))
            status = -ENOENT;
        if (status != 0 && t->fd >= 0) {
            close(t->fd);
            t->fd = -1;
        }
    }
    t->group_status = status;
}

static void start_group(struct spool_table *t);
static void collect_segments(struct spool_table *t);
static void on_space_timer(uv_timer_t *timer);

static void write_done(uv_work_t *w, int status)
{
    (void)status;
    struct spool_table *t = w->data;
    struct spool *s = t->s;
    struct spool_append *a = t->group;
    t->group = NULL;
    t->write_busy = false;
    s->stats.fsyncs++;
    int rc = t->group_status;
    if (rc < 0) {
        const char *why =
            rc == -EBUSY ? "made again, and another usaged holds its lock now" : strerror(-rc);
        s->stats.write_errors++;
        if (rc == -ENOSPC) {
            s->disk_full = true;
            uv_timer_start(&s->space_timer, on_space_timer, 1000, 1000);
        } else {
            s->write_failing = true;
            snprintf(s->write_error, sizeof(s->write_error), "%s: %s", t->dir, why);
        }
        if (log_limiter_allow(&s->error_log, uv_now(s->loop)))
            log_error("spool %s: cannot write: %s", table_dir_name(t->kind), why);
    } else {
        s->write_failing = false;
    }
    if (t->group_remade && rc == 0) {
        s->stats.segments_remade++;
        log_error("spool %s: the segment being written was removed (with its directory?); made "
                  "them again and wrote the last records there; what the removed files held is "
                  "lost",
                  table_dir_name(t->kind));
    }
    while (a) {
        struct spool_append *next = a->next;
        if (rc < 0) {
            s->bytes -= SPOOL_HEADER_LEN + a->len;
        } else {
            struct spool_segment *seg = find_segment(t, a->segment);
            if (!seg) {
                seg = spool_file_segment_new(a->segment);
                if (t->tail)
                    t->tail->next = seg;
                else
                    t->head = seg;
                t->tail = seg;
            }
            spool_file_segment_add(seg, a->offset, (uint32_t)(SPOOL_HEADER_LEN + a->len), a->nrows,
                                   spool_file_le64(a->header + 24));
            s->stats.records_spooled++;
            s->stats.rows_spooled += a->nrows;
        }
        a->done(a->arg, rc);
        free(a);
        a = next;
    }
    collect_segments(t);
    if (t->pending)
        start_group(t);
}

static void start_group(struct spool_table *t)
{
    if (t->write_busy || !t->pending || t->s->closing)
        return;
    uv_timer_stop(&t->commit_timer);
    /* Take the pending appends, up to GROUP_MAX_BYTES (at least one). */
    size_t bytes = 0;
    struct spool_append *last = NULL, *a = t->pending;
    while (a && (bytes == 0 || bytes + a->len <= GROUP_MAX_BYTES)) {
        bytes += SPOOL_HEADER_LEN + a->len;
        last = a;
        a = a->next;
    }
    t->group = t->pending;
    t->pending = a;
    if (!a)
        t->pending_tail = NULL;
    last->next = NULL;
    t->pending_bytes -= bytes;
    t->write_busy = true;
    t->write_work.data = t;
    if (uv_queue_work(t->s->loop, &t->write_work, write_job, write_done) != 0) {
        t->write_busy = false;
        log_error("spool: cannot queue a write");
    }
}

static void on_commit_timer(uv_timer_t *timer)
{
    start_group(timer->data);
}

bool spool_has_room(const struct spool *s, size_t bytes)
{
    if (!s->ready || s->closing)
        return false;
    return s->cap_lifted || (!s->disk_full && s->bytes + SPOOL_HEADER_LEN + bytes <= s->max_bytes);
}

bool spool_can_keep(const struct spool *s)
{
    if (s->error[0] || s->closing)
        return false;
    if (!s->ready)
        return true; /* recovering: it will be */
    return !s->disk_full && !s->write_failing && s->bytes + SPOOL_HEADER_LEN < s->max_bytes;
}

void spool_lift_cap(struct spool *s)
{
    s->cap_lifted = true;
}

/* While the disk is full, its free space is looked at every second (off the loop: statfs may
 * block on a network file system); with room for a record again, appends are tried again. */
static void on_statfs(uv_fs_t *req)
{
    struct spool *s = req->data;
    const uv_statfs_t *st = req->result == 0 ? req->ptr : NULL;
    if (st && !s->closing && s->disk_full && st->f_bavail * st->f_bsize >= (1u << 20)) {
        s->disk_full = false;
        uv_timer_stop(&s->space_timer);
        if (s->on_space)
            s->on_space(s->cb_arg);
    }
    uv_fs_req_cleanup(req);
    free(req);
}

static void on_space_timer(uv_timer_t *timer)
{
    struct spool *s = timer->data;
    if (!s->disk_full || s->closing) {
        uv_timer_stop(timer);
        return;
    }
    uv_fs_t *req = xmalloc(sizeof(*req));
    req->data = s;
    if (uv_fs_statfs(s->loop, req, s->dir, on_statfs) < 0)
        free(req);
}

int spool_append(struct spool *s, enum event_kind kind, const uint8_t *rows, size_t len,
                 uint32_t nrows, spool_done_fn done, void *arg)
{
    if (!spool_has_room(s, len) || len > SPOOL_MAX_RECORD_LEN)
        return -ENOSPC;
    struct spool_table *t = &s->tables[kind];
    struct spool_append *a = xcalloc(1, sizeof(*a));
    a->rows = rows;
    a->len = len;
    a->nrows = nrows;
    a->done = done;
    a->arg = arg;
    spool_encode_header(a->header, kind, rows, len, nrows, (uint64_t)clock_wall_ms());
    if (t->pending_tail)
        t->pending_tail->next = a;
    else
        t->pending = a;
    t->pending_tail = a;
    t->pending_bytes += SPOOL_HEADER_LEN + len;
    s->bytes += SPOOL_HEADER_LEN + len;
    /* While a group is being written, this append waits for it (and shares the next fsync).
     * Otherwise wait commit_ms for company, unless there is plenty already. */
    if (!t->write_busy) {
        if (s->commit_ms == 0 || t->pending_bytes >= GROUP_MAX_BYTES)
            start_group(t);
        else if (!uv_is_active((uv_handle_t *)&t->commit_timer))
            uv_timer_start(&t->commit_timer, on_commit_timer, s->commit_ms, 0);
    }
    return 0;
}

/* ---- replay ---- */

static void collect_segments(struct spool_table *t);

/* A record read back is done: committed, or passed over as damaged. Records may be done in any
 * order (several writers); the segment goes once all of its records are. */
static void mark_done(struct spool_table *t, const struct spool_record *rec)
{
    struct spool_segment *seg = rec->segment;
    seg->records[rec->index].done = true;
    seg->ndone++;
    while (seg->low < seg->nrecords && seg->records[seg->low].done)
        seg->low++;
    collect_segments(t);
}

bool spool_has_records(const struct spool *s, enum event_kind kind)
{
    const struct spool_table *t = &s->tables[kind];
    if (!s->ready || t->read_busy)
        return false;
    for (const struct spool_segment *seg = t->head; seg; seg = seg->next)
        if (seg->cursor < seg->nrecords)
            return true;
    return false;
}

/* The job reads only its own copy of where the record is: the loop may grow (reallocate) the
 * segment's index meanwhile, when replay has caught up with the segment being appended to. */
static void read_job(uv_work_t *w)
{
    struct spool_table *t = w->data;
    struct spool_record *rec = t->reading;
    const struct spool_index *idx = &rec->where;
    char path[700];
    spool_file_segment_path(t->dir, rec->segment_id, path, sizeof(path));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        t->read_status = -errno;
        return;
    }
    uint8_t *buf = xmalloc(idx->len);
    size_t got = 0;
    while (got < idx->len) {
        ssize_t n = pread(fd, buf + got, idx->len - got, (off_t)(idx->offset + got));
        if (n <= 0) {
            t->read_status = n < 0 ? -errno : -EIO;
            break;
        }
        got += (size_t)n;
    }
    close(fd);
    if (got == idx->len && spool_file_check_record(buf, idx->len, t->kind) != idx->len)
        t->read_status = -EBADMSG;
    if (t->read_status < 0) {
        free(buf);
        return;
    }
    /* Keep the rows only: move them to the front of the buffer. */
    rec->len = idx->len - SPOOL_HEADER_LEN;
    memmove(buf, buf + SPOOL_HEADER_LEN, rec->len);
    rec->rows = buf;
}

static void read_done(uv_work_t *w, int status)
{
    (void)status;
    struct spool_table *t = w->data;
    struct spool_record *rec = t->reading;
    t->reading = NULL;
    t->read_busy = false;
    if (t->s->closing) {
        free(rec->rows);
        free(rec);
        t->read_cb(t->read_arg, NULL);
        return;
    }
    if (t->read_status < 0) {
        /* A record that cannot be read back is damaged like one found at start: reported and
         * passed over, so that it does not hold back every record after it. */
        t->s->stats.corrupt_records++;
        log_error("spool %s: record %u of segment %016" PRIx64 " cannot be read (%s); it is "
                  "skipped, its rows are lost",
                  table_dir_name(t->kind), rec->index, rec->segment_id, strerror(-t->read_status));
        mark_done(t, rec);
        free(rec->rows);
        free(rec);
        t->read_cb(t->read_arg, NULL);
        return;
    }
    t->read_cb(t->read_arg, rec);
}

void spool_next(struct spool *s, enum event_kind kind, spool_record_fn cb, void *arg)
{
    struct spool_table *t = &s->tables[kind];
    struct spool_segment *seg = t->head;
    while (seg && seg->cursor >= seg->nrecords)
        seg = seg->next;
    if (!seg || t->read_busy) {
        cb(arg, NULL);
        return;
    }
    struct spool_record *rec = xcalloc(1, sizeof(*rec));
    rec->kind = kind;
    rec->segment = seg;
    rec->segment_id = seg->id;
    rec->index = seg->cursor;
    rec->where = seg->records[seg->cursor];
    rec->nrows = rec->where.nrows;
    rec->created_ms = rec->where.created_ms;
    t->reading = rec;
    t->read_status = 0;
    t->read_cb = cb;
    t->read_arg = arg;
    t->read_busy = true;
    seg->cursor++;
    t->read_work.data = t;
    if (uv_queue_work(s->loop, &t->read_work, read_job, read_done) != 0) {
        seg->cursor--;
        t->read_busy = false;
        t->reading = NULL;
        free(rec);
        cb(arg, NULL);
    }
}

static void on_unlinked(uv_fs_t *req)
{
    if (req->result < 0)
        log_warn("spool: cannot delete %s: %s", req->path, uv_strerror((int)req->result));
    uv_fs_req_cleanup(req);
    free(req);
}

/* Deletes fully replayed segments from the head, except the one still appended to. */
static void collect_segments(struct spool_table *t)
{
    struct spool *s = t->s;
    /* While a group is written, the job owns fd and fd_segment (a rotation changes them) and
     * may still be adding records to a segment that looks drained: wait for write_done. */
    if (t->write_busy)
        return;
    while (t->head && t->head->low == t->head->nrecords) {
        struct spool_segment *seg = t->head;
        if (t->fd >= 0 && seg->id == t->fd_segment) {
            if (t->pending)
                return;
            /* The segment being appended to is drained: close it, the next append starts a
             * new one. */
            close(t->fd);
            t->fd = -1;
        }
        t->head = seg->next;
        if (!t->head)
            t->tail = NULL;
        char path[700];
        spool_file_segment_path(t->dir, seg->id, path, sizeof(path));
        uv_fs_t *req = xmalloc(sizeof(*req));
        uv_fs_unlink(s->loop, req, path, on_unlinked);
        s->bytes -= seg->size <= s->bytes ? seg->size : s->bytes;
        s->stats.segments_deleted++;
        s->disk_full = false;
        spool_file_segment_free(seg);
        if (s->on_space)
            s->on_space(s->cb_arg);
    }
}

/* Writing a quarantined record out, on the thread pool. */
struct quarantine_job {
    uv_work_t work;
    struct spool_table *t;
    uint64_t segment_id;
    uint64_t offset;
    uint8_t *rows;
    size_t len;
};

static void quarantine_run(uv_work_t *w)
{
    struct quarantine_job *q = w->data;
    spool_file_quarantine(q->t->dir, q->segment_id, q->offset, q->rows, q->len);
}

static void quarantine_done(uv_work_t *w, int status)
{
    (void)status;
    struct quarantine_job *q = w->data;
    free(q->rows);
    free(q);
}

void spool_discard(struct spool *s, struct spool_record *rec)
{
    struct spool_table *t = &s->tables[rec->kind];
    s->stats.corrupt_records++;
    s->stats.quarantined_bytes += rec->len;
    log_error("spool %s: record %u of segment %016" PRIx64 " holds rows that do not parse; "
              "moved to %s/quarantine",
              table_dir_name(t->kind), rec->index, rec->segment_id, t->dir);
    struct quarantine_job *q = xcalloc(1, sizeof(*q));
    q->t = t;
    q->segment_id = rec->segment_id;
    q->offset = rec->where.offset;
    q->rows = rec->rows;
    q->len = rec->len;
    rec->rows = NULL;
    q->work.data = q;
    if (uv_queue_work(s->loop, &q->work, quarantine_run, quarantine_done) != 0) {
        free(q->rows);
        free(q);
    }
    mark_done(t, rec);
    free(rec);
}

void spool_release(struct spool *s, struct spool_record *rec, bool committed)
{
    struct spool_table *t = &s->tables[rec->kind];
    if (committed) {
        s->stats.records_replayed++;
        s->stats.rows_replayed += rec->nrows;
        mark_done(t, rec);
    } else if (rec->index + 1 == rec->segment->cursor) {
        rec->segment->cursor--; /* read again next time */
    }
    free(rec->rows);
    free(rec);
}

/* ---- setup and close ---- */

void spool_configure(struct spool *s, const struct config *config)
{
    s->max_bytes = config->spool.max_bytes;
    s->segment_bytes = config->spool.segment_bytes;
    s->commit_ms = config->spool.commit_ms;
}

int spool_open(struct spool *s, uv_loop_t *loop, const struct config *config,
               void (*on_ready)(void *arg), void (*on_space)(void *arg), void *arg, char *err,
               size_t errlen)
{
    memset(s, 0, sizeof(*s));
    s->lock_fd = -1;
    int fd = -1;
    int rc = spool_file_mkdir_p(config->spool.dir);
    if (rc == 0)
        rc = take_lock(config->spool.dir, &fd);
    if (rc == -EWOULDBLOCK) {
        snprintf(err, errlen, "spool.dir %s is in use by another usaged", config->spool.dir);
        return rc;
    }
    if (rc < 0) {
        snprintf(err, errlen, "spool.dir %s: %s", config->spool.dir, strerror(-rc));
        return rc;
    }
    s->lock_fd = fd;
    uv_mutex_init(&s->lock_mutex);
    s->loop = loop;
    s->dir = xstrdup(config->spool.dir);
    s->on_ready = on_ready;
    s->on_space = on_space;
    s->cb_arg = arg;
    spool_configure(s, config);
    s->error_log.period_ms = 10000;
    s->error_log.burst = 10;
    uv_timer_init(loop, &s->space_timer);
    s->space_timer.data = s;
    s->recovering = EVENT_KIND_COUNT;
    for (int k = 0; k < EVENT_KIND_COUNT; k++) {
        struct spool_table *t = &s->tables[k];
        t->s = s;
        t->kind = (enum event_kind)k;
        t->fd = -1;
        snprintf(t->dir, sizeof(t->dir), "%s/%s", s->dir, table_dir_name(t->kind));
        uv_timer_init(loop, &t->commit_timer);
        t->commit_timer.data = t;
        t->recover_work.data = xcalloc(1, sizeof(struct spool_recovery));
        uv_queue_work(loop, &t->recover_work, recover_job, recover_done);
    }
    return 0;
}

static void part_closed(struct spool *s)
{
    if (--s->closing > 0)
        return;
    for (int k = 0; k < EVENT_KIND_COUNT; k++) {
        struct spool_table *tk = &s->tables[k];
        if (tk->fd >= 0)
            close(tk->fd);
        tk->fd = -1;
        while (tk->head) {
            struct spool_segment *next = tk->head->next;
            spool_file_segment_free(tk->head);
            tk->head = next;
        }
        tk->tail = NULL;
    }
    free(s->dir);
    s->dir = NULL;
    if (s->lock_fd >= 0) {
        close(s->lock_fd);
        uv_mutex_destroy(&s->lock_mutex);
    }
    s->lock_fd = -1;
    if (s->on_closed)
        s->on_closed(s, s->closed_arg);
}

static void on_timer_closed(uv_handle_t *h)
{
    part_closed(((struct spool_table *)h->data)->s);
}

static void on_space_timer_closed(uv_handle_t *h)
{
    part_closed(h->data);
}

/* Close waits for jobs in flight: their callbacks touch the tables. */
static void close_when_idle(uv_timer_t *timer);

void spool_close(struct spool *s, void (*on_closed)(struct spool *s, void *arg), void *arg)
{
    s->on_closed = on_closed;
    s->closed_arg = arg;
    s->closing = EVENT_KIND_COUNT + 1;
    uv_close((uv_handle_t *)&s->space_timer, on_space_timer_closed);
    for (int k = 0; k < EVENT_KIND_COUNT; k++) {
        struct spool_table *t = &s->tables[k];
        uv_timer_stop(&t->commit_timer);
        /* Appends still pending (not written) fail: their owners keep the rows. */
        struct spool_append *a = t->pending;
        t->pending = t->pending_tail = NULL;
        while (a) {
            struct spool_append *next = a->next;
            a->done(a->arg, -ECANCELED);
            free(a);
            a = next;
        }
        if (t->write_busy || t->read_busy || s->recovering) {
            uv_timer_start(&t->commit_timer, close_when_idle, 10, 0);
            continue;
        }
        uv_close((uv_handle_t *)&t->commit_timer, on_timer_closed);
    }
}

static void close_when_idle(uv_timer_t *timer)
{
    struct spool_table *t = timer->data;
    if (t->write_busy || t->read_busy || t->s->recovering) {
        uv_timer_start(&t->commit_timer, close_when_idle, 10, 0);
        return;
    }
    uv_close((uv_handle_t *)&t->commit_timer, on_timer_closed);
}

void spool_figures(const struct spool *s, struct spool_figures *out)
{
    uint64_t segments = 0, records = 0, oldest = 0;
    for (int k = 0; k < EVENT_KIND_COUNT; k++) {
        for (const struct spool_segment *seg = s->tables[k].head; seg; seg = seg->next) {
            segments++;
            records += seg->nrecords - seg->ndone;
            if (seg->low < seg->nrecords) {
                uint64_t created = seg->records[seg->low].created_ms;
                if (!oldest || created < oldest)
                    oldest = created;
            }
        }
    }
    uint64_t now = (uint64_t)clock_wall_ms();
    out->state = s->error[0] || s->write_failing ? "error"
                 : !s->ready                     ? "recovering"
                 : s->disk_full                  ? "disk_full"
                                                 : "ok";
    out->error = s->error[0] ? s->error : s->write_failing ? s->write_error : "";
    out->segments = segments;
    out->records_pending = records;
    out->oldest_age_ms = oldest && now > oldest ? now - oldest : 0;
}
