/* utf8: see utf8.h. */
#include "utf8.h"

#include <stdint.h>

bool utf8_valid(const char *s, size_t len, size_t *chars)
{
    const uint8_t *p = (const uint8_t *)s, *end = p + len;
    size_t n = 0;
    while (p < end) {
        uint8_t c = *p;
        if (c < 0x80) {
            if (c == 0)
                return false;
            p++;
        } else if (c >= 0xc2 && c <= 0xdf) {
            if (end - p < 2 || (p[1] & 0xc0) != 0x80)
                return false;
            p += 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            if (end - p < 3 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80)
                return false;
            if (c == 0xe0 && p[1] < 0xa0)
                return false; /* overlong */
            if (c == 0xed && p[1] >= 0xa0)
                return false; /* surrogate */
            p += 3;
        } else if (c >= 0xf0 && c <= 0xf4) {
            if (end - p < 4 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80 ||
                (p[3] & 0xc0) != 0x80)
                return false;
            if (c == 0xf0 && p[1] < 0x90)
                return false; /* overlong */
            if (c == 0xf4 && p[1] >= 0x90)
                return false; /* above U+10FFFF */
            p += 4;
        } else {
            return false;
        }
        n++;
    }
    if (chars)
        *chars = n;
    return true;
}
