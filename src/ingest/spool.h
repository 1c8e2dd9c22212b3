/* spool: the disk spool that keeps accepted rows when PostgreSQL cannot take them.
 *
 * One directory per table under spool.dir, holding append-only segment files of records; a
 * record is one batch of COPY rows with a CRC-32C over its header and rows. Appends are written
 * and fdatasync'd on libuv's thread pool, never on the loop, in group commits: every append that
 * arrives while one fsync runs shares the next. An append's callback runs after its fsync, which
 * is when a durable ack may be sent.
 *
 * Records are read back oldest first, one read at a time per table, and may be out with several
 * writers at once (which insert them idempotently, and may commit them in any order); a segment
 * is deleted once every record in it is committed. At
 * start every segment is checked: a record whose checksum fails (a torn write at power loss, a
 * flipped bit) is moved aside into quarantine/ and reported, the records around it are kept, and
 * the daemon starts anyway. spool.max_bytes caps the spool; a full disk is treated as a full
 * spool until a segment is deleted. */
#ifndef USAGED_SPOOL_H
#define USAGED_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "event.h"
#include "log.h"

#define SPOOL_HEADER_LEN 32

struct spool;
struct spool_segment;

struct spool_index {
    uint64_t offset; /* of the header in the segment file */
    uint32_t len;    /* header and rows */
    uint32_t nrows;
    uint64_t created_ms;
    bool done; /* replay: committed in PostgreSQL, or passed over as damaged */
};

/* A record read back for replay. rows holds nrows COPY tuples. */
struct spool_record {
    uint8_t *rows;
    size_t len;
    uint32_t nrows;
    uint64_t created_ms; /* wall clock of the append */
    enum event_kind kind;
    struct spool_segment *segment;
    uint64_t segment_id;
    uint32_t index;           /* in the segment */
    struct spool_index where; /* a copy of its index entry, for the read job */
};

/* 0, or a negative errno (-ENOSPC: the spool is full or the disk is). */
typedef void (*spool_done_fn)(void *arg, int status);
/* rec is NULL when the read failed (logged); the caller may try again later. */
typedef void (*spool_record_fn)(void *arg, struct spool_record *rec);

struct spool_append;

struct spool_segment {
    uint64_t id;
    uint64_t size; /* bytes in the file */
    struct spool_index *records;
    uint32_t nrecords, cap;
    uint32_t cursor; /* replay: records [0, cursor) have been read back (or are being read) */
    uint32_t low;    /* records [0, low) are all done; the segment goes when low == nrecords */
    uint32_t ndone;  /* records done, in any order */
    bool deleting;
    struct spool_segment *next;
};

struct spool_stats {
    uint64_t records_spooled;
    uint64_t rows_spooled;
    uint64_t records_replayed;
    uint64_t rows_replayed;
    uint64_t fsyncs;
    uint64_t write_errors;
    uint64_t corrupt_records; /* found at start, moved to quarantine/ */
    uint64_t quarantined_bytes;
    uint64_t segments_deleted;
    uint64_t segments_remade; /* segments found removed after a write, and written again */
};

struct spool_table {
    struct spool *s;
    enum event_kind kind;
    char dir[512];
    struct spool_segment *head, *tail; /* oldest first */
    /* The segment appended to. Only the write job touches these while write_busy. */
    int fd;
    uint64_t fd_segment; /* its id */
    uint64_t fd_size;
    uint64_t next_id;
    /* Appends waiting for the next group commit, and the group being written. */
    struct spool_append *pending, *pending_tail;
    size_t pending_bytes;
    struct spool_append *group;
    int group_status;  /* the write job's result: 0 or -errno */
    bool group_remade; /* the job found its segment removed and wrote the group again */
    bool write_busy;
    uv_work_t write_work;
    uv_timer_t commit_timer;
    /* Replay: one read at a time; any number of records out with the writers, each of them
     * done when its release says it is committed. */
    bool read_busy;
    uv_work_t read_work;
    struct spool_record *reading;
    int read_status;
    spool_record_fn read_cb;
    void *read_arg;
    uv_work_t recover_work;
};

struct spool {
    uv_loop_t *loop;
    char *dir;
    int lock_fd; /* holds the flock on dir/lock */
    /* Write jobs that made dir again take its lock file again (lock_fd), one at a time; when
     * another daemon took it first, lock_lost, and nothing is written any more. */
    uv_mutex_t lock_mutex;
    bool lock_lost;
    uint64_t max_bytes;
    uint64_t segment_bytes;
    uint32_t commit_ms;
    uint64_t bytes;     /* in segment files, and appended but not yet written */
    bool ready;         /* recovery done */
    bool disk_full;     /* a write hit ENOSPC; cleared when a segment is deleted or space appears */
    bool write_failing; /* the last write failed for another reason */
    char write_error[640];  /* why, while write_failing */
    bool cap_lifted;        /* at the stop: max_bytes and a past ENOSPC no longer refuse */
    uv_timer_t space_timer; /* while disk_full: looks for free space again */
    struct log_limiter error_log;
    int recovering;
    char error[640]; /* why the spool cannot be used, "" when it can */
    struct spool_table tables[EVENT_KIND_COUNT];
    void (*on_ready)(void *arg);
    void (*on_space)(void *arg); /* room appeared (a segment was deleted) */
    void *cb_arg;
    int closing;
    void (*on_closed)(struct spool *s, void *arg);
    void *closed_arg;
    struct spool_stats stats;
};

/* Takes the spool directory (an exclusive lock: one daemon per spool) and starts recovery on
 * the thread pool; on_ready runs when the spool can be used. Returns 0, or a negative errno with
 * err filled. */
int spool_open(struct spool *s, uv_loop_t *loop, const struct config *config,
               void (*on_ready)(void *arg), void (*on_space)(void *arg), void *arg, char *err,
               size_t errlen);
/* Applies spool.max_bytes and commit_ms from a reloaded config. */
void spool_configure(struct spool *s, const struct config *config);

/* True when `bytes` more fit under spool.max_bytes and the disk is not known full (or the cap is
 * lifted). */
bool spool_has_room(const struct spool *s, size_t bytes);
/* True when the spool can keep a record now, or will once its recovery is done: not failing,
 * not full, not at max_bytes. */
bool spool_can_keep(const struct spool *s);
/* At the stop: what is in memory must reach the disk even past max_bytes; only a write that
 * fails (a disk really full) refuses it. */
void spool_lift_cap(struct spool *s);
/* Appends a record of nrows rows; rows must stay valid until done runs. Returns -ENOSPC at
 * once when there is no room (done is not called then). */
int spool_append(struct spool *s, enum event_kind kind, const uint8_t *rows, size_t len,
                 uint32_t nrows, spool_done_fn done, void *arg);

/* True when the table has a record not yet read back for replay (and no read under way). */
bool spool_has_records(const struct spool *s, enum event_kind kind);
/* Reads the table's oldest record not yet read back; cb runs with it (or NULL on error). Several
 * records may be out at once. */
void spool_next(struct spool *s, enum event_kind kind, spool_record_fn cb, void *arg);
/* Gives a record back: committed (done; its segment is deleted once all of its records are), or
 * not, which is for closing only: the record stays on disk for the next start (it is read again
 * in this run only if it was the last one read). Frees the record. */
void spool_release(struct spool *s, struct spool_record *rec, bool committed);

/* Gives up on a record whose rows do not parse (the checksum held, so a bug or a format the
 * daemon does not know): its bytes go to quarantine/, it is counted and passed over. */
void spool_discard(struct spool *s, struct spool_record *rec);

void spool_close(struct spool *s, void (*on_closed)(struct spool *s, void *arg), void *arg);

/* What the stats answer shows beside struct spool's own counters. */
struct spool_figures {
    const char *state;        /* ok, recovering, disk_full or error */
    const char *error;        /* why, for error */
    uint64_t segments;        /* segment files, both tables */
    uint64_t records_pending; /* records not yet committed from the spool */
    uint64_t oldest_age_ms;   /* age of the oldest of them; 0: none */
};
void spool_figures(const struct spool *s, struct spool_figures *out);

/* The record format, for the tests and tools: encodes a header for rows. */
void spool_encode_header(uint8_t header[SPOOL_HEADER_LEN], enum event_kind kind,
                         const uint8_t *rows, size_t len, uint32_t nrows, uint64_t created_ms);

#endif
