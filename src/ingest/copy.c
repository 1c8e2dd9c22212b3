/* copy: see copy.h. */
#include "copy.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "uuid.h"

const uint8_t copy_header[COPY_HEADER_LEN] = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', 0xff, '\r', '\n',
                                              0,   0,   0,   0,   0,   0,   0,    0,    0};
const uint8_t copy_trailer[COPY_TRAILER_LEN] = {0xff, 0xff};

#define NUMERIC_POS 0x0000
#define NUMERIC_NEG 0x4000
#define NUMERIC_MAX_GROUPS 64

bool copy_numeric(struct buf *b, const char *s, size_t len, size_t max_digits)
{
    const char *p = s, *end = s + len;
    bool negative = false;
    if (p < end && *p == '-') {
        negative = true;
        p++;
    }
    const char *int_start = p;
    while (p < end && *p >= '0' && *p <= '9')
        p++;
    size_t int_len = (size_t)(p - int_start);
    const char *frac_start = p;
    size_t frac_len = 0;
    if (p < end && *p == '.') {
        frac_start = ++p;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        frac_len = (size_t)(p - frac_start);
        if (frac_len == 0)
            return false;
    }
    if (p != end || int_len == 0 || int_len + frac_len > max_digits)
        return false;

    /* Base-10000 groups: the integer part grouped from the right, the fraction from the left. */
    int16_t groups[NUMERIC_MAX_GROUPS];
    int n = 0;
    size_t first = int_len % 4 ? int_len % 4 : 4;
    for (size_t i = 0; i < int_len;) {
        size_t take = i == 0 ? first : 4;
        int v = 0;
        for (size_t k = 0; k < take; k++)
            v = v * 10 + (int_start[i + k] - '0');
        if (n == NUMERIC_MAX_GROUPS)
            return false;
        groups[n++] = (int16_t)v;
        i += take;
    }
    int weight = n - 1;
    for (size_t i = 0; i < frac_len; i += 4) {
        int v = 0;
        for (size_t k = 0; k < 4; k++)
            v = v * 10 + (i + k < frac_len ? frac_start[i + k] - '0' : 0);
        if (n == NUMERIC_MAX_GROUPS)
            return false;
        groups[n++] = (int16_t)v;
    }
    int lead = 0;
    while (lead < n && groups[lead] == 0)
        lead++;
    while (n > lead && groups[n - 1] == 0)
        n--;
    int ndigits = n - lead;
    if (ndigits == 0) {
        weight = 0;
        negative = false;
    } else {
        weight -= lead;
    }
    buf_put_be32(b, (uint32_t)(8 + 2 * ndigits));
    buf_put_be16(b, (uint16_t)ndigits);
    buf_put_be16(b, (uint16_t)(int16_t)weight);
    buf_put_be16(b, negative ? NUMERIC_NEG : NUMERIC_POS);
    buf_put_be16(b, (uint16_t)frac_len);
    for (int i = lead; i < lead + ndigits; i++)
        buf_put_be16(b, (uint16_t)groups[i]);
    return true;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint16_t be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

int copy_row_fields(const uint8_t *row, size_t len, struct copy_field *fields, int max_fields,
                    size_t *row_len)
{
    if (len < 2)
        return -1;
    int n = (int16_t)be16(row);
    if (n < 0 || n > max_fields)
        return -1;
    size_t off = 2;
    for (int i = 0; i < n; i++) {
        if (len - off < 4)
            return -1;
        int32_t flen = (int32_t)be32(row + off);
        off += 4;
        if (flen < -1 || (flen > 0 && (size_t)flen > len - off))
            return -1;
        fields[i].len = flen;
        fields[i].data = row + off;
        if (flen > 0)
            off += (size_t)flen;
    }
    *row_len = off;
    return n;
}

static void json_string(struct buf *out, const uint8_t *s, size_t len)
{
    buf_put_u8(out, '"');
    for (size_t i = 0; i < len; i++) {
        uint8_t c = s[i];
        if (c == '"' || c == '\\') {
            buf_put_u8(out, '\\');
            buf_put_u8(out, c);
        } else if (c < 0x20) {
            char esc[8];
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            buf_append(out, esc, 6);
        } else {
            buf_put_u8(out, c);
        }
    }
    buf_put_u8(out, '"');
}

static void json_numeric(struct buf *out, const uint8_t *p, int32_t len)
{
    if (len < 8) {
        buf_append(out, "null", 4);
        return;
    }
    int ndigits = (int16_t)be16(p), weight = (int16_t)be16(p + 2);
    uint16_t sign = be16(p + 4);
    int dscale = (int16_t)be16(p + 6);
    if (len < 8 + 2 * ndigits || sign == 0xc000) {
        buf_append(out, "null", 4);
        return;
    }
    char text[512];
    size_t n = 0;
    if (sign == NUMERIC_NEG)
        text[n++] = '-';
    /* Integer part: groups 0..weight. */
    if (weight < 0) {
        text[n++] = '0';
    } else {
        for (int g = 0; g <= weight && n < sizeof(text) - 8; g++) {
            int v = g < ndigits ? be16(p + 8 + 2 * g) : 0;
            n += (size_t)snprintf(text + n, sizeof(text) - n, g == 0 ? "%d" : "%04d", v);
        }
    }
    if (dscale > 0) {
        text[n++] = '.';
        int written = 0;
        for (int g = weight + 1; written < dscale && n < sizeof(text) - 8; g++) {
            int idx = g;
            int v = idx >= 0 && idx < ndigits ? be16(p + 8 + 2 * idx) : 0;
            char four[8];
            snprintf(four, sizeof(four), "%04d", v);
            for (int k = 0; k < 4 && written < dscale; k++, written++)
                text[n++] = four[k];
        }
    }
    buf_append(out, text, n);
}

size_t copy_format_timestamp(int64_t pg_us, char sep, const char *zone, char *out, size_t cap)
{
    int64_t unix_us = pg_us + COPY_PG_EPOCH_US;
    time_t secs = (time_t)(unix_us / 1000000);
    int64_t frac = unix_us % 1000000;
    if (frac < 0) {
        frac += 1000000;
        secs--;
    }
    struct tm tm;
    if (!gmtime_r(&secs, &tm))
        return 0;
    /* The year in 4 digits at least (strftime's %Y writes year 55 as "55", which PostgreSQL
     * does not read as a year). */
    int m = snprintf(out, cap, "%04d-%02d-%02d%c%02d:%02d:%02d.%06" PRId64 "%s", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, sep, tm.tm_hour, tm.tm_min, tm.tm_sec, frac, zone);
    return m > 0 && (size_t)m < cap ? (size_t)m : 0;
}

static void json_field(struct buf *out, enum copy_type type, const struct copy_field *f)
{
    char tmp[64];
    if (f->len < 0) {
        buf_append(out, "null", 4);
        return;
    }
    switch (type) {
    case COPY_UUID:
        if (f->len == 16) {
            char s[UUID_STRING_LEN + 1];
            uuid_format(f->data, s);
            json_string(out, (const uint8_t *)s, UUID_STRING_LEN);
        } else {
            buf_append(out, "null", 4);
        }
        break;
    case COPY_TEXT:
        json_string(out, f->data, (size_t)f->len);
        break;
    case COPY_INT4:
        snprintf(tmp, sizeof(tmp), "%" PRId32, f->len == 4 ? (int32_t)be32(f->data) : 0);
        buf_append(out, tmp, strlen(tmp));
        break;
    case COPY_BOOL:
        if (f->len == 1 && f->data[0])
            buf_append(out, "true", 4);
        else
            buf_append(out, "false", 5);
        break;
    case COPY_NUMERIC:
        json_numeric(out, f->data, f->len);
        break;
    case COPY_TIMESTAMPTZ: {
        if (f->len != 8) {
            buf_append(out, "null", 4);
            break;
        }
        int64_t pg_us = (int64_t)((uint64_t)be32(f->data) << 32 | be32(f->data + 4));
        buf_put_u8(out, '"');
        buf_append(out, tmp, copy_format_timestamp(pg_us, 'T', "Z", tmp, sizeof(tmp)));
        buf_put_u8(out, '"');
        break;
    }
    }
}

void copy_row_to_json(const struct copy_column *columns, int ncolumns, const uint8_t *row,
                      size_t len, struct buf *out)
{
    struct copy_field fields[32];
    size_t row_len;
    int n = copy_row_fields(row, len, fields, 32, &row_len);
    if (n != ncolumns) {
        buf_append(out, "{}", 2);
        return;
    }
    buf_put_u8(out, '{');
    for (int i = 0; i < n; i++) {
        if (i)
            buf_put_u8(out, ',');
        json_string(out, (const uint8_t *)columns[i].name, strlen(columns[i].name));
        buf_put_u8(out, ':');
        json_field(out, columns[i].type, &fields[i]);
    }
    buf_put_u8(out, '}');
}
