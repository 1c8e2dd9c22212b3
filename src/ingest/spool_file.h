/* spool_file: the spool's files, apart from the loop that schedules their work.
 *
 * The record format (header, checksum), the index of a segment's records, and the file work the
 * thread pool runs for the spool: making directories, fsyncing them, copying damaged bytes into
 * quarantine/, and the scan at start that indexes every segment of a table, moves damaged ranges
 * aside and rewrites the segment without them. Nothing here touches the loop. */
#ifndef USAGED_SPOOL_FILE_H
#define USAGED_SPOOL_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "spool.h"

#define SPOOL_MAGIC 0x31505355u /* "USP1" read little-endian */
#define SPOOL_FORMAT_VERSION 1
#define SPOOL_MAX_RECORD_LEN (1u << 30)

uint32_t spool_file_le32(const uint8_t *p);
uint64_t spool_file_le64(const uint8_t *p);

/* Checks the record at p (avail bytes): returns its total length, or 0 when it is not a whole,
 * valid record of this table. */
size_t spool_file_check_record(const uint8_t *p, size_t avail, enum event_kind kind);

/* DIR/0000000000000001.seg, ... */
void spool_file_segment_path(const char *dir, uint64_t id, char *out, size_t cap);

struct spool_segment *spool_file_segment_new(uint64_t id);
void spool_file_segment_add(struct spool_segment *seg, uint64_t offset, uint32_t len,
                            uint32_t nrows, uint64_t created_ms);
void spool_file_segment_free(struct spool_segment *seg);

/* mkdir -p with mode 0700. 0 or a negative errno. */
int spool_file_mkdir_p(const char *path);
/* fsync of a directory, so that the names in it are on disk. 0 or a negative errno. */
int spool_file_fsync_dir(const char *dir);
/* Copies damaged bytes into DIR/quarantine/ so that a person can look at them. */
void spool_file_quarantine(const char *dir, uint64_t id, uint64_t offset, const uint8_t *p,
                           size_t len);

/* What the scan of a table's directory found. */
struct spool_recovery {
    struct spool_segment *head, *tail; /* segments with valid records, oldest first */
    uint64_t next_id;                  /* the id of the next segment to create */
    uint64_t bytes;                    /* in those segments */
    uint64_t corrupt_records;          /* damaged ranges moved to quarantine/ */
    uint64_t quarantined_bytes;
    int error; /* an errno that makes the spool unusable; 0: none */
};

/* Scans dir (made when missing): indexes every valid record of every segment; damaged ranges go
 * to quarantine/ and their segment is rewritten without them; a segment with nothing valid is
 * deleted. Blocking: for the thread pool. */
void spool_file_recover(const char *dir, enum event_kind kind, struct spool_recovery *rec);

#endif
