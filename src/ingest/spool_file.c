/* spool_file: see spool_file.h.
 *
 * Record: 32-byte header then the rows. Header fields, little-endian:
 *   0 magic "USP1"   4 crc32c of bytes 8 .. end of rows   8 rows length   12 row count
 *   16 table kind    17 format version   18 reserved (2)   20 reserved (4)   24 created_ms
 * Segment files are named by a 16-digit sequence number: 0000000000000001.seg, ...
 */
#include "spool_file.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crc32c.h"
#include "xalloc.h"

static void put_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

uint32_t spool_file_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_le64(uint8_t *p, uint64_t v)
{
    put_le32(p, (uint32_t)v);
    put_le32(p + 4, (uint32_t)(v >> 32));
}

uint64_t spool_file_le64(const uint8_t *p)
{
    return (uint64_t)spool_file_le32(p) | (uint64_t)spool_file_le32(p + 4) << 32;
}

void spool_encode_header(uint8_t h[SPOOL_HEADER_LEN], enum event_kind kind, const uint8_t *rows,
                         size_t len, uint32_t nrows, uint64_t created_ms)
{
    memset(h, 0, SPOOL_HEADER_LEN);
    put_le32(h, SPOOL_MAGIC);
    put_le32(h + 8, (uint32_t)len);
    put_le32(h + 12, nrows);
    h[16] = (uint8_t)kind;
    h[17] = SPOOL_FORMAT_VERSION;
    put_le64(h + 24, created_ms);
    uint32_t crc = crc32c(0, h + 8, SPOOL_HEADER_LEN - 8);
    crc = crc32c(crc, rows, len);
    put_le32(h + 4, crc);
}

/* Checks the record at p (avail bytes): returns its total length, or 0 when it is not a whole,
 * valid record of this table. */
size_t spool_file_check_record(const uint8_t *p, size_t avail, enum event_kind kind)
{
    if (avail < SPOOL_HEADER_LEN || spool_file_le32(p) != SPOOL_MAGIC)
        return 0;
    uint32_t len = spool_file_le32(p + 8);
    if (len > SPOOL_MAX_RECORD_LEN || len > avail - SPOOL_HEADER_LEN || p[16] != kind ||
        p[17] != SPOOL_FORMAT_VERSION)
        return 0;
    uint32_t crc = crc32c(0, p + 8, SPOOL_HEADER_LEN - 8);
    crc = crc32c(crc, p + SPOOL_HEADER_LEN, len);
    if (crc != spool_file_le32(p + 4))
        return 0;
    return SPOOL_HEADER_LEN + len;
}

void spool_file_segment_path(const char *dir, uint64_t id, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%016" PRIx64 ".seg", dir, id);
}

struct spool_segment *spool_file_segment_new(uint64_t id)
{
    struct spool_segment *seg = xcalloc(1, sizeof(*seg));
    seg->id = id;
    return seg;
}

void spool_file_segment_add(struct spool_segment *seg, uint64_t offset, uint32_t len,
                            uint32_t nrows, uint64_t created_ms)
{
    if (seg->nrecords == seg->cap) {
        seg->cap = seg->cap ? seg->cap * 2 : 16;
        seg->records = xrealloc(seg->records, seg->cap * sizeof(*seg->records));
    }
    seg->records[seg->nrecords++] = (struct spool_index){offset, len, nrows, created_ms, false};
    if (offset + len > seg->size)
        seg->size = offset + len;
}

void spool_file_segment_free(struct spool_segment *seg)
{
    free(seg->records);
    free(seg);
}

int spool_file_mkdir_p(const char *path)
{
    char tmp[600];
    snprintf(tmp, sizeof(tmp), "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

int spool_file_fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return rc;
}

/* Copies damaged bytes into quarantine/ so that a person can look at them. */
void spool_file_quarantine(const char *dir, uint64_t id, uint64_t offset, const uint8_t *p,
                           size_t len)
{
    char qdir[600], path[700];
    snprintf(qdir, sizeof(qdir), "%s/quarantine", dir);
    spool_file_mkdir_p(qdir);
    snprintf(path, sizeof(path), "%s/%016" PRIx64 "-%" PRIu64 ".bad", qdir, id, offset);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, p + done, len - done);
        if (n <= 0)
            break;
        done += (size_t)n;
    }
    fsync(fd);
    close(fd);
}

/* ---- recovery ---- */

static int compare_ids(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Indexes one segment file: every valid record; damaged ranges go to quarantine, and the file
 * is rewritten without them so that replay reads only checked bytes. */
static void recover_segment(const char *dir, enum event_kind kind, struct spool_recovery *rec,
                            uint64_t id)
{
    char path[700];
    spool_file_segment_path(dir, id, path, sizeof(path));
    int fd = open(path, O_RDWR | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        if (fd >= 0)
            close(fd);
        return;
    }
    size_t size = (size_t)st.st_size;
    struct spool_segment *seg = spool_file_segment_new(id);
    uint8_t *map = size ? mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    if (size && map == MAP_FAILED) {
        close(fd);
        spool_file_segment_free(seg);
        rec->error = errno;
        return;
    }
    bool damaged = false;
    size_t off = 0;
    while (off < size) {
        size_t n = spool_file_check_record(map + off, size - off, kind);
        if (n) {
            spool_file_segment_add(seg, off, (uint32_t)n, spool_file_le32(map + off + 12),
                                   spool_file_le64(map + off + 24));
            off += n;
            continue;
        }
        /* Damage: find the next offset where a valid record starts, and quarantine the rest. */
        damaged = true;
        size_t next = off + 1;
        while (next + 4 <= size && !(spool_file_le32(map + next) == SPOOL_MAGIC &&
                                     spool_file_check_record(map + next, size - next, kind)))
            next++;
        if (next + 4 > size)
            next = size;
        spool_file_quarantine(dir, id, off, map + off, next - off);
        rec->corrupt_records++;
        rec->quarantined_bytes += next - off;
        off = next;
    }
    if (damaged && seg->nrecords > 0) {
        /* Rewrite the segment with its valid records only, then replace it atomically. */
        char tmp[720];
        snprintf(tmp, sizeof(tmp), "%s.tmp", path);
        int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        bool ok = out >= 0;
        for (uint32_t i = 0; ok && i < seg->nrecords; i++) {
            const struct spool_index *r = &seg->records[i];
            size_t w = 0;
            while (ok && w < r->len) {
                ssize_t n = write(out, map + r->offset + w, r->len - w);
                ok = n > 0;
                w += n > 0 ? (size_t)n : 0;
            }
        }
        ok = ok && fsync(out) == 0;
        if (out >= 0)
            close(out);
        if (ok && rename(tmp, path) == 0 && spool_file_fsync_dir(dir) == 0) {
            /* Only now do the records sit at their new offsets. */
            uint64_t at = 0;
            for (uint32_t i = 0; i < seg->nrecords; i++) {
                seg->records[i].offset = at;
                at += seg->records[i].len;
            }
            seg->size = at;
        } else {
            unlink(tmp);
            rec->error = errno ? errno : EIO;
        }
    }
    if (map)
        munmap(map, size);
    close(fd);
    if (seg->nrecords == 0) {
        unlink(path); /* nothing valid left in it */
        spool_file_segment_free(seg);
        return;
    }
    rec->bytes += seg->size;
    if (rec->tail)
        rec->tail->next = seg;
    else
        rec->head = seg;
    rec->tail = seg;
}

void spool_file_recover(const char *dir, enum event_kind kind, struct spool_recovery *rec)
{
    int rc = spool_file_mkdir_p(dir);
    if (rc < 0) {
        rec->error = -rc;
        return;
    }
    DIR *d = opendir(dir);
    if (!d) {
        rec->error = errno;
        return;
    }
    uint64_t *ids = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char *end;
        unsigned long long id = strtoull(e->d_name, &end, 16);
        if (end != e->d_name + 16 || strcmp(end, ".seg") != 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            ids = xrealloc(ids, cap * sizeof(*ids));
        }
        ids[n++] = id;
    }
    closedir(d);
    if (n > 0)
        qsort(ids, n, sizeof(*ids), compare_ids);
    for (size_t i = 0; i < n; i++)
        recover_segment(dir, kind, rec, ids[i]);
    rec->next_id = n ? ids[n - 1] + 1 : 1;
    free(ids);
}
