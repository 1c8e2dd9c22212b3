/* money: spend amounts, exact to the micro-dollar (PROTOCOL.md: budgets). A decimal with at
 * most 6 places is held as an int64 count of micro-dollars; nothing goes through a binary
 * fraction on the way. Pure. */
#ifndef USAGED_MONEY_H
#define USAGED_MONEY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MONEY_PLACES 6
#define MONEY_SCALE 1000000LL
/* The largest amount taken, in USD: a billion dollars keeps every sum of a day's charges far
 * inside what Redis's Lua (doubles) counts exactly (2^53 micro-dollars). */
#define MONEY_MAX_USD 1000000000LL
#define MONEY_MAX (MONEY_MAX_USD * MONEY_SCALE)
/* "1000000000.000000" and a NUL */
#define MONEY_TEXT_MAX 24

/* Parses a plain decimal ("5", "0.0035", "12.50"): digits, then optionally a point and 1 to 6
 * digits. No sign, no exponent, no spaces. False when it is not one, has more than 6 places, or
 * is above MONEY_MAX_USD. */
bool money_parse(const char *s, size_t len, int64_t *micros);
/* A float read as its shortest decimal (the one that reads back as the same double): 0.1 is
 * "0.1", not 0.1000000000000000055. False when negative, not finite, with more than 6 places
 * or too large. */
bool money_from_double(double v, int64_t *micros);
/* Writes micros as a decimal with 6 places ("5.000000"); returns the length. */
size_t money_format(int64_t micros, char out[MONEY_TEXT_MAX]);

#endif
