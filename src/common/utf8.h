/* utf8: strict UTF-8 validation (RFC 3629: no overlong forms, no surrogates, nothing above
 * U+10FFFF), and counting of characters for length limits. PostgreSQL refuses invalid UTF-8
 * and NUL in text, so the daemon refuses them at the socket. Pure. */
#ifndef USAGED_UTF8_H
#define USAGED_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* True when s[0 .. len) is valid UTF-8 without NUL; sets *chars to its character count. */
bool utf8_valid(const char *s, size_t len, size_t *chars);

#endif
