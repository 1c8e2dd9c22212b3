/* methods_check: the `check` method's side of the protocol. Parses check's params, hands the
 * limiter a plain request with a completion callback, and packs its answer (and the limiter's
 * stats) for the client. The limiter never sees a connection. */
#include "methods_check.h"

#include <stdio.h>
#include <string.h>

#include "rpc.h"
#include "utf8.h"
#include "uuid.h"

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

void methods_check_pack_result(msgpack_packer *pk, const struct check_result *r)
{
    /* Keys 125 bytes; values at most 2 booleans, 2 + 255 (reason) and 7 integers of 9. */
    uint8_t out[512];
    uint8_t *p = out;
    p = put_bytes(p, KEY("\x8a\xa7"
                         "allowed"));
    *p++ = r->allowed ? 0xc3 : 0xc2;
    p = put_bytes(p, KEY("\xa6"
                         "reason"));
    size_t reason_len = r->reason ? strlen(r->reason) : 0;
    if (!r->reason) {
        *p++ = 0xc0;
    } else {
        /* The reasons are the daemon's own short words. */
        reason_len = reason_len > UINT8_MAX ? UINT8_MAX : reason_len;
        if (reason_len < 32)
            *p++ = (uint8_t)(0xa0 | reason_len);
        else
            p = put_be(p, 0xd9, reason_len, 1);
        p = put_bytes(p, r->reason, reason_len);
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
    pk->callback(pk->data, (const char *)out, (size_t)(p - out));
}

/* As in the log methods' events, a field given twice is invalid: no silent "last one wins". */
static bool given_twice(struct rpc_error *e, const char *field)
{
    rpc_error_set(e, RPC_INVALID_FIELD, "%s is given twice", field);
    e->field = field;
    return false;
}

static bool parse_check(const struct rpc_message *m, uint8_t user_id[16], const char **provider,
                        size_t *provider_len, uint32_t *cost, struct rpc_error *e)
{
    if (m->params->size != 1 || m->params->ptr[0].type != MSGPACK_OBJECT_MAP) {
        rpc_error_set(
            e, RPC_BAD_REQUEST,
            "check takes params [{\"user_id\": uuid, \"provider\": str, \"cost\": uint}]");
        return false;
    }
    const msgpack_object_map *map = &m->params->ptr[0].via.map;
    bool has_user = false, has_provider = false, has_cost = false;
    *cost = 1;
    for (uint32_t i = 0; i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key, *v = &map->ptr[i].val;
        if (rpc_str_eq(k, "user_id")) {
            if (has_user)
                return given_twice(e, "user_id");
            bool ok = false;
            if (v->type == MSGPACK_OBJECT_STR) {
                ok = uuid_parse(v->via.str.ptr, v->via.str.size, user_id);
            } else if (v->type == MSGPACK_OBJECT_BIN && v->via.bin.size == 16) {
                memcpy(user_id, v->via.bin.ptr, 16);
                ok = true;
            }
            if (!ok) {
                rpc_error_set(e, RPC_INVALID_FIELD, "user_id must be a uuid");
                e->field = "user_id";
                return false;
            }
            has_user = true;
        } else if (rpc_str_eq(k, "provider")) {
            if (has_provider)
                return given_twice(e, "provider");
            size_t chars;
            if (v->type != MSGPACK_OBJECT_STR || v->via.str.size == 0 ||
                !utf8_valid(v->via.str.ptr, v->via.str.size, &chars) ||
                chars > RULES_PROVIDER_MAX) {
                rpc_error_set(e, RPC_INVALID_FIELD,
                              "provider must be a UTF-8 string of 1 to 50 characters");
                e->field = "provider";
                return false;
            }
            *provider = v->via.str.ptr;
            *provider_len = v->via.str.size;
            has_provider = true;
        } else if (rpc_str_eq(k, "cost")) {
            if (has_cost)
                return given_twice(e, "cost");
            has_cost = true;
            if (v->type == MSGPACK_OBJECT_NIL)
                continue;
            if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 > INT32_MAX) {
                rpc_error_set(e, RPC_INVALID_FIELD, "cost must be an integer from 0 to %d",
                              INT32_MAX);
                e->field = "cost";
                return false;
            }
            *cost = (uint32_t)v->via.u64;
        } else {
            rpc_error_set(e, RPC_INVALID_FIELD,
                          "unknown field; check takes user_id, provider "
                          "and cost");
            if (k->type == MSGPACK_OBJECT_STR) {
                snprintf(e->field_name, sizeof(e->field_name), "%.*s",
                         (int)(k->via.str.size < 60 ? k->via.str.size : 60), k->via.str.ptr);
                for (char *p = e->field_name; *p; p++)
                    if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
                        *p = '?';
                e->field = e->field_name;
            } else {
                e->field = "";
            }
            return false;
        }
    }
    if (!has_user || !has_provider) {
        rpc_error_set(e, RPC_INVALID_FIELD, "%s is required", has_user ? "provider" : "user_id");
        e->field = has_user ? "provider" : "user_id";
        return false;
    }
    return true;
}

static enum conn_dispatch_result refuse(struct conn *c, const struct rpc_message *m,
                                        const struct rpc_error *e)
{
    if (m->kind == RPC_KIND_REQUEST)
        conn_reply_error(c, m->msgid, e);
    else
        conn_drop_notification(c, "check", e);
    return CONN_DISPATCHED;
}

/* The tag carries the msgid, and whether the check came as a notification (bit 32). */
#define TAG_NOTIFICATION (1ULL << 32)

static void on_checked(void *arg, uint64_t tag, const struct check_result *r)
{
    struct conn *c = arg;
    if (tag & TAG_NOTIFICATION) {
        conn_release(c);
        return;
    }
    methods_check_pack_result(conn_reply(c, (uint32_t)tag), r);
    conn_unref(c);
}

enum conn_dispatch_result methods_check(struct limiter *l, struct conn *c,
                                        const struct rpc_message *m)
{
    struct rpc_error e;
    struct limiter_request req = {.cost = 1};
    if (!parse_check(m, req.user_id, &req.provider, &req.provider_len, &req.cost, &e))
        return refuse(c, m, &e);
    bool notification = m->kind == RPC_KIND_NOTIFICATION;
    /* Held before the limiter sees it: it may answer at once, from inside limiter_check. */
    if (notification)
        conn_hold(c); /* bounded by listen.max_pending_requests like requests */
    else
        conn_ref(c);
    uint64_t tag = notification ? TAG_NOTIFICATION : m->msgid;
    if (!limiter_check(l, &req, on_checked, c, tag, &e)) {
        if (notification)
            conn_release(c);
        else
            conn_unref(c);
        return refuse(c, m, &e);
    }
    return CONN_DISPATCHED;
}

/* ---- stats ---- */

void methods_check_pack_stats(const struct limiter *l, msgpack_packer *pk)
{
    const struct redis_stats *rs = &l->redis.stats;
    msgpack_pack_map(pk, 16);
    rpc_pack_u64(pk, "checks", l->stats.checks);
    rpc_pack_u64(pk, "allowed", l->stats.allowed);
    rpc_pack_str(pk, "denied");
    msgpack_pack_map(pk, 3);
    rpc_pack_u64(pk, "minute_limit", l->stats.denied_minute);
    rpc_pack_u64(pk, "day_limit", l->stats.denied_day);
    rpc_pack_u64(pk, "provider_disabled", l->stats.denied_disabled);
    rpc_pack_u64(pk, "degraded", l->stats.degraded);
    rpc_pack_u64(pk, "unknown_provider", l->stats.unknown_provider);
    rpc_pack_u64(pk, "unlimited", l->stats.unlimited);
    rpc_pack_u64(pk, "cache_hits", l->stats.cache_hits);
    rpc_pack_u64(pk, "coalesced", l->stats.coalesced);
    rpc_pack_u64(pk, "batched", l->stats.batched);
    rpc_pack_u64(pk, "key_errors", l->stats.key_errors);
    rpc_pack_u64(pk, "redis_round_trips", l->stats.script_calls);
    rpc_pack_u64(pk, "providers_loaded", l->rules.ndb);
    rpc_pack_u64(pk, "limits_loads", l->rules.loads);
    rpc_pack_u64(pk, "limits_notifications", l->rules.notifications);
    rpc_pack_str(pk, "redis");
    msgpack_pack_map(pk, 9);
    rpc_pack_str(pk, "state");
    rpc_pack_str(pk, l->redis.connected ? "up" : "down");
    rpc_pack_u64(pk, "connects", rs->connects);
    rpc_pack_u64(pk, "connect_failures", rs->connect_failures);
    rpc_pack_u64(pk, "commands", rs->commands);
    rpc_pack_u64(pk, "timeouts", rs->timeouts);
    rpc_pack_u64(pk, "noscript_retries", rs->noscript);
    uint64_t answered = 0;
    for (int i = 0; i < 24; i++)
        answered += rs->latency_buckets[i];
    rpc_pack_u64(pk, "latency_avg_us", answered ? rs->latency_us_total / answered : 0);
    rpc_pack_u64(pk, "latency_p50_us", redis_latency_quantile(rs, 0.5));
    rpc_pack_u64(pk, "latency_p99_us", redis_latency_quantile(rs, 0.99));
    rpc_pack_str(pk, "postgres");
    rpc_pack_str(pk, pg_state_name(l->rules.pg.state));
}
