/* check_answer: see check_answer.h. */
#include "check_answer.h"

#include <string.h>

#include "money.h"

/* A check's answer is the daemon's most frequent message, so it is encoded here into one buffer
 * and handed to the packer in one write: ten keys that never change go out as ready-made bytes
 * (fixstr header and text), and the integers take msgpack-c's encodings (the shortest form; a
 * negative one as signed). Through the packer, key by key, it cost 2.5k instructions per check. */
#define KEY(lit) lit, sizeof(lit) - 1

static uint8_t *put_bytes(uint8_t *p, const char *bytes, size_t len)
{
    memcpy(p, bytes, len);
    return p + len;
}

static uint8_t *put_be(uint8_t *p, uint8_t tag, uint64_t v, int len)
{
    *p++ = tag;
    for (int i = len - 1; i >= 0; i--)
        *p++ = (uint8_t)(v >> (8 * i));
    return p;
}

static uint8_t *put_uint(uint8_t *p, uint64_t v)
{
    if (v < 128) {
        *p++ = (uint8_t)v;
        return p;
    }
    if (v <= UINT8_MAX)
        return put_be(p, 0xcc, v, 1);
    if (v <= UINT16_MAX)
        return put_be(p, 0xcd, v, 2);
    if (v <= UINT32_MAX)
        return put_be(p, 0xce, v, 4);
    return put_be(p, 0xcf, v, 8);
}

static uint8_t *put_int(uint8_t *p, int64_t v)
{
    if (v >= 0)
        return put_uint(p, (uint64_t)v);
    if (v >= -32) {
        *p++ = (uint8_t)(int8_t)v;
        return p;
    }
    if (v >= INT8_MIN)
        return put_be(p, 0xd0, (uint64_t)v, 1);
    if (v >= INT16_MIN)
        return put_be(p, 0xd1, (uint64_t)v, 2);
    if (v >= INT32_MIN)
        return put_be(p, 0xd2, (uint64_t)v, 4);
    return put_be(p, 0xd3, (uint64_t)v, 8);
}

static uint8_t *put_optional(uint8_t *p, const char *key, size_t keylen, int64_t v)
{
    p = put_bytes(p, key, keylen);
    if (v == RULES_UNLIMITED) {
        *p++ = 0xc0;
        return p;
    }
    return put_int(p, v);
}

static uint8_t *put_str(uint8_t *p, const char *s, size_t len)
{
    if (len < 32)
        *p++ = (uint8_t)(0xa0 | len);
    else
        p = put_be(p, 0xd9, len, 1);
    return put_bytes(p, s, len);
}

static uint8_t *put_cstr(uint8_t *p, const char *s)
{
    return put_str(p, s, strlen(s));
}

/* A count of a rule: nil when unknown or unlimited; spend as a decimal string. */
static uint8_t *put_amount(uint8_t *p, int64_t v, bool spend)
{
    if (v == RULES_UNLIMITED) {
        *p++ = 0xc0;
        return p;
    }
    if (!spend)
        return put_int(p, v);
    char text[MONEY_TEXT_MAX];
    return put_str(p, text, money_format(v, text));
}

/* A rule map's first keys depend on the rule alone, and come from two tables of ready-made
 * bytes: dimension and window, then scope and the key of limit. Each is copied whole, slack
 * included: what follows in the map (at least the used, remaining and reset_ms keys) overwrites
 * the slack, so no copy reaches past the bytes the map takes in the end. Held to msgpack-c's
 * encoding by tests/unit/test_limiter.c like the rest. */
struct piece {
    uint8_t len;
    char bytes[39];
};
/* The literals stay whole lines (a hex escape must end where its string does). */
/* clang-format off */
#define PIECE(lit) {sizeof(lit) - 1, lit}
#define DIMENSION(name) "\xa9" "dimension" name
#define WINDOW(name) "\xa6" "window" name
#define WINDOWS(dimension)                                                                         \
    PIECE(dimension WINDOW("\xa6" "minute")), PIECE(dimension WINDOW("\xa4" "hour")),              \
        PIECE(dimension WINDOW("\xa3" "day")), PIECE(dimension WINDOW("\xa5" "month"))
#define CONCURRENT PIECE(DIMENSION("\xaa" "concurrent") WINDOW("\xc0"))
/* By dimension * RULES_WINDOWS + window; a concurrent rule has no window (nil). */
static const struct piece dimension_window[(RULES_CONCURRENT + 1) * RULES_WINDOWS] = {
    WINDOWS(DIMENSION("\xa8" "requests")), WINDOWS(DIMENSION("\xa6" "tokens")),
    WINDOWS(DIMENSION("\xa5" "spend")), CONCURRENT, CONCURRENT, CONCURRENT, CONCURRENT,
};
/* By by_provider + 2 * by_model. */
#define SCOPE(name) PIECE("\xa5" "scope" name "\xa5" "limit")
static const struct piece scope_limit[4] = {
    SCOPE("\xa4" "user"), SCOPE("\xa8" "provider"), SCOPE("\xa5" "model"), SCOPE("\xa5" "model"),
};
#undef SCOPE
#undef CONCURRENT
#undef WINDOWS
#undef WINDOW
#undef DIMENSION
#undef PIECE
/* clang-format on */

static uint8_t *put_piece(uint8_t *p, const struct piece *piece)
{
    memcpy(p, piece->bytes, sizeof(piece->bytes));
    return p + piece->len;
}

/* A rule's map; `extra` keys the caller writes after it (usage's provider and model). */
static uint8_t *put_rule_map(uint8_t *p, const struct rules_applied *a, int64_t used,
                             uint64_t now_ms, int extra)
{
    bool spend = a->dimension == RULES_SPEND;
    int64_t left = a->limit == RULES_UNLIMITED || used == RULES_UNLIMITED ? RULES_UNLIMITED
                   : used >= a->limit                                     ? 0
                                                                          : a->limit - used;
    unsigned dimension = a->dimension < RULES_CONCURRENT ? a->dimension : RULES_CONCURRENT;
    /* A shadow rule's map has an eighth key, shadow: true. */
    *p++ = (uint8_t)(0x80 | (7 + a->shadow + extra));
    p = put_piece(p, &dimension_window[dimension * RULES_WINDOWS + a->window % RULES_WINDOWS]);
    p = put_piece(p, &scope_limit[a->by_provider + 2 * a->by_model]);
    p = put_amount(p, a->limit, spend);
    p = put_bytes(p, KEY("\xa4"
                         "used"));
    p = put_amount(p, used, spend);
    p = put_bytes(p, KEY("\xa9"
                         "remaining"));
    p = put_amount(p, left, spend);
    p = put_bytes(p, KEY("\xa8"
                         "reset_ms"));
    p = put_uint(p, decision_rule_reset_ms(a, now_ms));
    if (a->shadow) {
        p = put_bytes(p, KEY("\xa6"
                             "shadow"));
        *p++ = 0xc3;
    }
    return p;
}

static uint8_t *put_rule(uint8_t *p, const struct check_result *r, int i)
{
    return put_rule_map(p, &r->rules->rule[i], r->used[i], r->now_ms, 0);
}

void check_answer_pack_usage(msgpack_packer *pk, const struct usage_result *r)
{
    msgpack_pack_map(pk, 3);
    msgpack_pack_str(pk, 6);
    msgpack_pack_str_body(pk, "limits", 6);
    msgpack_pack_array(pk, r->n);
    for (size_t i = 0; i < r->n; i++) {
        const struct usage_rule *u = &r->rules[i];
        uint8_t out[512]; /* a rule map (at most 136) and a provider (at most 211) */
        uint8_t *p = put_rule_map(out, &u->rule, u->used, u->now_ms, 2);
        p = put_bytes(p, KEY("\xa8"
                             "provider"));
        p = u->provider[0] ? put_cstr(p, u->provider) : (*p = 0xc0, p + 1);
        pk->callback(pk->data, (const char *)out, (size_t)(p - out));
        /* A model name may take up to 200 bytes: through the packer. */
        msgpack_pack_str(pk, 5);
        msgpack_pack_str_body(pk, "model", 5);
        if (u->model[0]) {
            msgpack_pack_str(pk, strlen(u->model));
            msgpack_pack_str_body(pk, u->model, strlen(u->model));
        } else {
            msgpack_pack_nil(pk);
        }
    }
    msgpack_pack_str(pk, 8);
    msgpack_pack_str_body(pk, "degraded", 8);
    r->degraded ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    msgpack_pack_str(pk, 9);
    msgpack_pack_str_body(pk, "truncated", 9);
    r->truncated ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
}

/* Keys 142 bytes, values at most 2 booleans, 2 + 255 (reason) and 7 integers of 9: 530; the
 * reservation 55; each rule's map at most 130 (limits and the two denied_by). */
#define ANSWER_MAX (640 + (RULES_APPLY_MAX + 2) * 136)

void check_answer_pack(msgpack_packer *pk, const struct check_result *r)
{
    uint8_t out[ANSWER_MAX];
    uint8_t *p = out;
    p = put_bytes(p, KEY("\x8e\xa7"
                         "allowed"));
    *p++ = r->allowed ? 0xc3 : 0xc2;
    p = put_bytes(p, KEY("\xa6"
                         "reason"));
    if (!r->reason) {
        *p++ = 0xc0;
    } else {
        /* The reasons are the daemon's own short words. */
        size_t reason_len = strlen(r->reason);
        p = put_str(p, r->reason, reason_len > UINT8_MAX ? UINT8_MAX : reason_len);
    }
    p = put_optional(p,
                     KEY("\xac"
                         "limit_minute"),
                     r->limit_minute);
    p = put_optional(p,
                     KEY("\xa9"
                         "limit_day"),
                     r->limit_day);
    p = put_optional(p,
                     KEY("\xb0"
                         "remaining_minute"),
                     r->remaining_minute);
    p = put_optional(p,
                     KEY("\xad"
                         "remaining_day"),
                     r->remaining_day);
    p = put_bytes(p, KEY("\xaf"
                         "reset_minute_ms"));
    p = put_uint(p, r->reset_minute_ms);
    p = put_bytes(p, KEY("\xac"
                         "reset_day_ms"));
    p = put_uint(p, r->reset_day_ms);
    p = put_bytes(p, KEY("\xae"
                         "retry_after_ms"));
    p = put_uint(p, r->retry_after_ms);
    p = put_bytes(p, KEY("\xa8"
                         "degraded"));
    *p++ = r->degraded ? 0xc3 : 0xc2;
    p = put_bytes(p, KEY("\xab"
                         "reservation"));
    if (r->reservation[0])
        p = put_str(p, r->reservation, strlen(r->reservation));
    else
        *p++ = 0xc0;
    int n = r->rules ? r->rules->n : 0;
    p = put_bytes(p, KEY("\xa6"
                         "limits"));
    if (n < 16)
        *p++ = (uint8_t)(0x90 | n);
    else
        p = put_be(p, 0xdc, (uint64_t)n, 2);
    for (int i = 0; i < n; i++)
        p = put_rule(p, r, i);
    p = put_bytes(p, KEY("\xa9"
                         "denied_by"));
    if (r->denied_by >= 0 && r->rules)
        p = put_rule(p, r, r->denied_by);
    else
        *p++ = 0xc0;
    p = put_bytes(p, KEY("\xb0"
                         "shadow_denied_by"));
    if (r->shadow_denied_by >= 0 && r->rules)
        p = put_rule(p, r, r->shadow_denied_by);
    else
        *p++ = 0xc0;
    pk->callback(pk->data, (const char *)out, (size_t)(p - out));
}
