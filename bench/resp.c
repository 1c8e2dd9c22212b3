/* resp: see resp.h. */
#include "resp.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

void resp_bulk(resp_write_fn write, void *data, const char *s, size_t len)
{
    char head[32];
    int n = snprintf(head, sizeof(head), "$%zu\r\n", len);
    write(data, head, (size_t)n);
    write(data, s, len);
    write(data, "\r\n", 2);
}

/* The line after a type byte: its end (the '\r') in *eol, or 0 / -1. */
static int line_end(const uint8_t *p, const uint8_t *end, const uint8_t **eol)
{
    const uint8_t *cr = memchr(p, '\r', (size_t)(end - p));
    if (!cr || cr + 1 >= end)
        return 0;
    if (cr[1] != '\n')
        return -1;
    *eol = cr;
    return 1;
}

/* A signed decimal number filling [p, eol). */
static bool parse_number(const uint8_t *p, const uint8_t *eol, int64_t *v)
{
    bool neg = p < eol && *p == '-';
    if (neg)
        p++;
    if (p == eol || eol - p > 18)
        return false;
    int64_t x = 0;
    for (; p < eol; p++) {
        if (*p < '0' || *p > '9')
            return false;
        x = x * 10 + (*p - '0');
    }
    *v = neg ? -x : x;
    return true;
}

/* One item's header: what follows it inline (*payload bytes of a bulk string, with its CRLF)
 * and how many items it contains (*children, for an array). */
static int header(const uint8_t *p, const uint8_t *end, size_t *hdr, int64_t *payload,
                  int64_t *children)
{
    if (p >= end)
        return 0;
    const uint8_t *eol;
    int r = line_end(p + 1, end, &eol);
    if (r <= 0)
        return r;
    *hdr = (size_t)(eol + 2 - p);
    *payload = 0;
    *children = 0;
    int64_t n = 0;
    switch (*p) {
    case '+':
    case '-':
        return 1;
    case ':':
        return parse_number(p + 1, eol, &n) ? 1 : -1;
    case '$':
        if (!parse_number(p + 1, eol, &n) || n < -1)
            return -1;
        *payload = n < 0 ? 0 : n + 2;
        return 1;
    case '*':
        if (!parse_number(p + 1, eol, &n) || n < -1)
            return -1;
        *children = n < 0 ? 0 : n;
        return 1;
    default:
        return -1;
    }
}

int resp_skip(const uint8_t **pp, const uint8_t *end)
{
    const uint8_t *p = *pp;
    int64_t remaining = 1;
    while (remaining > 0) {
        size_t hdr;
        int64_t payload, children;
        int r = header(p, end, &hdr, &payload, &children);
        if (r <= 0)
            return r;
        if ((uint64_t)(end - p) < hdr + (uint64_t)payload)
            return 0;
        p += hdr + (size_t)payload;
        remaining += children - 1;
    }
    *pp = p;
    return 1;
}

static int typed_number(const uint8_t **pp, const uint8_t *end, uint8_t type, int64_t *v)
{
    const uint8_t *p = *pp, *eol;
    if (p >= end)
        return 0;
    if (*p != type)
        return -1;
    int r = line_end(p + 1, end, &eol);
    if (r <= 0)
        return r;
    if (!parse_number(p + 1, eol, v))
        return -1;
    *pp = eol + 2;
    return 1;
}

int resp_array(const uint8_t **pp, const uint8_t *end, int64_t *n)
{
    return typed_number(pp, end, '*', n);
}

int resp_integer(const uint8_t **pp, const uint8_t *end, int64_t *v)
{
    return typed_number(pp, end, ':', v);
}
