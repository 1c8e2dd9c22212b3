/* alerts_file: the file of alerts waiting on disk for PostgreSQL (DIR/alerts/pending, DIR being
 * spool.dir): fixed-size records, each with a CRC-32C, appended and fsync'd; read back in order;
 * emptied once every record is written. The encoding is pure; the file calls block and run in
 * the thread pool (alerts.c schedules them), except alerts_file_open at start. */
#ifndef USAGED_ALERTS_FILE_H
#define USAGED_ALERTS_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "alerts.h"

#define ALERTS_FILE_MAGIC 0x31414c55u /* "ULA1" read little-endian */
#define ALERTS_FILE_RECORD 464        /* bytes of one record */

void alerts_file_encode(const struct alerts_alert *al, uint8_t rec[ALERTS_FILE_RECORD]);
/* False when the record is damaged (its checksum, magic or lengths are wrong). */
bool alerts_file_decode(const uint8_t rec[ALERTS_FILE_RECORD], struct alerts_alert *al);

/* Opens (makes) DIR/alerts/pending: returns the descriptor, or a negative errno; *size gets the
 * bytes of its whole records (a torn record at its end, from a crash mid-append, is cut off). */
int alerts_file_open(const char *dir, uint64_t *size);
/* Writes len bytes at off, then fdatasync. 0 or a negative errno. */
int alerts_file_append(int fd, const uint8_t *buf, size_t len, uint64_t off);
/* Reads len bytes at off. 0 or a negative errno (-EIO when the file is shorter). */
int alerts_file_read(int fd, uint8_t *buf, size_t len, uint64_t off);
/* Empties the file, then fdatasync. 0 or a negative errno. */
int alerts_file_truncate(int fd);

#endif
