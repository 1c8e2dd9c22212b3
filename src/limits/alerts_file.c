/* alerts_file: see alerts_file.h.
 *
 * A record: magic (4), CRC-32C of the rest (4), user id (16), provider length (1) and bytes
 * (RULES_PROVIDER_BYTES), model length (1) and bytes (RULES_MODEL_BYTES), dimension, window,
 * shadow, percent (1 each), limit, used, window start, time (8 each, little-endian), zeros. */
#include "alerts_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crc32c.h"
#include "spool_file.h"

#define AT_PROVIDER 24
#define AT_MODEL (AT_PROVIDER + 1 + RULES_PROVIDER_BYTES)
#define AT_RULE (AT_MODEL + 1 + RULES_MODEL_BYTES)
#define AT_NUMBERS (AT_RULE + 4)
_Static_assert(AT_NUMBERS + 32 <= ALERTS_FILE_RECORD, "the record holds every field");

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

void alerts_file_encode(const struct alerts_alert *al, uint8_t rec[ALERTS_FILE_RECORD])
{
    memset(rec, 0, ALERTS_FILE_RECORD);
    put_le32(rec, ALERTS_FILE_MAGIC);
    memcpy(rec + 8, al->user_id, 16);
    size_t plen = strnlen(al->provider, RULES_PROVIDER_BYTES);
    size_t mlen = strnlen(al->model, RULES_MODEL_BYTES);
    rec[AT_PROVIDER] = (uint8_t)plen;
    memcpy(rec + AT_PROVIDER + 1, al->provider, plen);
    rec[AT_MODEL] = (uint8_t)mlen;
    memcpy(rec + AT_MODEL + 1, al->model, mlen);
    rec[AT_RULE] = al->dimension;
    rec[AT_RULE + 1] = al->window;
    rec[AT_RULE + 2] = al->shadow;
    rec[AT_RULE + 3] = al->percent;
    put_le64(rec + AT_NUMBERS, (uint64_t)al->limit);
    put_le64(rec + AT_NUMBERS + 8, (uint64_t)al->used);
    put_le64(rec + AT_NUMBERS + 16, al->window_start_ms);
    put_le64(rec + AT_NUMBERS + 24, al->now_ms);
    put_le32(rec + 4, crc32c(0, rec + 8, ALERTS_FILE_RECORD - 8));
}

bool alerts_file_decode(const uint8_t rec[ALERTS_FILE_RECORD], struct alerts_alert *al)
{
    if (spool_file_le32(rec) != ALERTS_FILE_MAGIC ||
        spool_file_le32(rec + 4) != crc32c(0, rec + 8, ALERTS_FILE_RECORD - 8) ||
        rec[AT_PROVIDER] > RULES_PROVIDER_BYTES || rec[AT_MODEL] > RULES_MODEL_BYTES)
        return false;
    memset(al, 0, sizeof(*al));
    memcpy(al->user_id, rec + 8, 16);
    memcpy(al->provider, rec + AT_PROVIDER + 1, rec[AT_PROVIDER]);
    memcpy(al->model, rec + AT_MODEL + 1, rec[AT_MODEL]);
    al->dimension = rec[AT_RULE];
    al->window = rec[AT_RULE + 1];
    al->shadow = rec[AT_RULE + 2] != 0;
    al->percent = rec[AT_RULE + 3];
    al->limit = (int64_t)spool_file_le64(rec + AT_NUMBERS);
    al->used = (int64_t)spool_file_le64(rec + AT_NUMBERS + 8);
    al->window_start_ms = spool_file_le64(rec + AT_NUMBERS + 16);
    al->now_ms = spool_file_le64(rec + AT_NUMBERS + 24);
    return al->dimension <= RULES_CONCURRENT && al->window < RULES_WINDOWS;
}

int alerts_file_open(const char *dir, uint64_t *size)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/alerts", dir);
    int rc = spool_file_mkdir_p(path);
    if (rc < 0)
        return rc;
    snprintf(path, sizeof(path), "%s/alerts/pending", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    *size = (uint64_t)st.st_size - (uint64_t)st.st_size % ALERTS_FILE_RECORD;
    snprintf(path, sizeof(path), "%s/alerts", dir);
    spool_file_fsync_dir(path); /* the file's name, made above, is on disk */
    return fd;
}

/* pwrite or pread of all len bytes at off. 0 or a negative errno (-EIO: the file ended). */
static int io_all(int fd, uint8_t *buf, size_t len, uint64_t off, bool write)
{
    while (len > 0) {
        ssize_t n = write ? pwrite(fd, buf, len, (off_t)off) : pread(fd, buf, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        buf += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

int alerts_file_append(int fd, const uint8_t *buf, size_t len, uint64_t off)
{
    int rc = io_all(fd, (uint8_t *)buf, len, off, true);
    if (rc == 0 && fdatasync(fd) < 0)
        rc = -errno;
    return rc;
}

int alerts_file_read(int fd, uint8_t *buf, size_t len, uint64_t off)
{
    return io_all(fd, buf, len, off, false);
}

int alerts_file_truncate(int fd)
{
    if (ftruncate(fd, 0) < 0)
        return -errno;
    return fdatasync(fd) < 0 ? -errno : 0;
}
