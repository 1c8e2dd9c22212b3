/* crc32c: CRC-32C (Castagnoli), the checksum of spool records. Uses the CPU's crc32
 * instruction when it has one (SSE 4.2), a table otherwise. Pure. */
#ifndef USAGED_CRC32C_H
#define USAGED_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Extends crc (0 to start) with len bytes. */
uint32_t crc32c(uint32_t crc, const void *data, size_t len);

#endif
