/* money: see money.h. */
#include "money.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool money_parse(const char *s, size_t len, int64_t *micros)
{
    size_t i = 0;
    int64_t whole = 0;
    if (len == 0)
        return false;
    for (; i < len && s[i] >= '0' && s[i] <= '9'; i++) {
        whole = whole * 10 + (s[i] - '0');
        if (whole > MONEY_MAX_USD)
            return false;
    }
    if (i == 0)
        return false; /* ".5" and "" are not written by anyone on purpose */
    int64_t frac = 0;
    int places = 0;
    if (i < len) {
        if (s[i] != '.' || i + 1 == len)
            return false;
        for (i++; i < len; i++) {
            if (s[i] < '0' || s[i] > '9' || places == MONEY_PLACES)
                return false;
            frac = frac * 10 + (s[i] - '0');
            places++;
        }
    }
    for (; places < MONEY_PLACES; places++)
        frac *= 10;
    int64_t v = whole * MONEY_SCALE + frac;
    if (v > MONEY_MAX)
        return false;
    *micros = v;
    return true;
}

/* Digits and exponent of the shortest decimal that reads back as v (v >= 0, finite). */
static void shortest(double v, char *digits, size_t cap, int *exp10)
{
    char text[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(text, sizeof(text), "%.*e", prec - 1, v);
        if (strtod(text, NULL) == v)
            break;
    }
    /* text is d[.ddd]e[+-]xx */
    size_t n = 0;
    const char *p = text;
    for (; *p && *p != 'e'; p++)
        if (*p != '.' && n + 1 < cap)
            digits[n++] = *p;
    digits[n] = '\0';
    *exp10 = *p == 'e' ? atoi(p + 1) : 0;
}

bool money_from_double(double v, int64_t *micros)
{
    if (v == 0) { /* -0.0 too: no amount is not a negative one */
        *micros = 0;
        return true;
    }
    if (!isfinite(v) || v < 0)
        return false;
    if (v > (double)MONEY_MAX_USD)
        return false;
    char digits[24];
    int e;
    shortest(v, digits, sizeof(digits), &e);
    /* value = 0.d1d2d3... x 10^(e+1); its places after the point: len - 1 - e */
    int len = (int)strlen(digits);
    while (len > 1 && digits[len - 1] == '0')
        digits[--len] = '\0';
    int places = len - 1 - e;
    if (places > MONEY_PLACES)
        return false;
    int64_t m = 0;
    for (int i = 0; i < len; i++)
        m = m * 10 + (digits[i] - '0');
    for (int i = places; i < MONEY_PLACES; i++)
        m *= 10;
    if (m > MONEY_MAX)
        return false;
    *micros = m;
    return true;
}

size_t money_format(int64_t micros, char out[MONEY_TEXT_MAX])
{
    if (micros < 0)
        micros = 0;
    int n = snprintf(out, MONEY_TEXT_MAX, "%lld.%06lld", (long long)(micros / MONEY_SCALE),
                     (long long)(micros % MONEY_SCALE));
    return n < 0 ? 0 : (size_t)n;
}
