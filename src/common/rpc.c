/* rpc: see rpc.h. */
#include "rpc.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "usaged/protocol.h"

static const char *const method_names[RPC_METHOD_COUNT] = {
    [RPC_PING] = USAGED_METHOD_PING,
    [RPC_AUTH] = USAGED_METHOD_AUTH,
    [RPC_CHECK] = USAGED_METHOD_CHECK,
    [RPC_LOG_USAGE] = USAGED_METHOD_LOG_USAGE,
    [RPC_LOG_PROMPT] = USAGED_METHOD_LOG_PROMPT,
    [RPC_STATS] = USAGED_METHOD_STATS,
    [RPC_SETTLE] = USAGED_METHOD_SETTLE,
    [RPC_USAGE] = USAGED_METHOD_USAGE,
};

const char *rpc_method_name(enum rpc_method method)
{
    return method < RPC_METHOD_COUNT ? method_names[method] : "unknown";
}

bool rpc_str_eq(const msgpack_object *o, const char *s)
{
    size_t n = strlen(s);
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
           memcmp(o->via.str.ptr, s, n) == 0;
}

static enum rpc_method find_method(const msgpack_object *o)
{
    /* The first byte first: most names differ there, and rpc_str_eq measures the name. */
    if (o->type != MSGPACK_OBJECT_STR || o->via.str.size == 0)
        return RPC_METHOD_UNKNOWN;
    for (int i = 0; i < RPC_METHOD_COUNT; i++)
        if (method_names[i][0] == o->via.str.ptr[0] && rpc_str_eq(o, method_names[i]))
            return (enum rpc_method)i;
    return RPC_METHOD_UNKNOWN;
}

enum rpc_verdict rpc_parse(const msgpack_object *o, struct rpc_message *m, struct rpc_error *e)
{
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size == 0 ||
        o->via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        rpc_error_set(e, RPC_BAD_REQUEST,
                      "expected a MessagePack-RPC message: [0, msgid, method, params] or "
                      "[2, method, params]");
        return RPC_NOTIFY_ERROR;
    }
    const msgpack_object *a = o->via.array.ptr;
    uint32_t n = o->via.array.size;
    uint64_t type = a[0].via.u64;

    if (type == 0) {
        if (n != 4) {
            rpc_error_set(e, RPC_BAD_REQUEST, "a request has 4 elements, not %u", n);
            return RPC_NOTIFY_ERROR;
        }
        if (a[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER || a[1].via.u64 > UINT32_MAX) {
            rpc_error_set(e, RPC_BAD_REQUEST, "msgid must be an unsigned 32-bit integer");
            return RPC_NOTIFY_ERROR;
        }
        m->kind = RPC_KIND_REQUEST;
        m->msgid = (uint32_t)a[1].via.u64;
        if (a[2].type != MSGPACK_OBJECT_STR) {
            rpc_error_set(e, RPC_BAD_REQUEST, "method must be a string");
            return RPC_ANSWER_ERROR;
        }
        if (a[3].type != MSGPACK_OBJECT_ARRAY) {
            rpc_error_set(e, RPC_BAD_REQUEST, "params must be an array");
            return RPC_ANSWER_ERROR;
        }
        m->method = find_method(&a[2]);
        m->params = &a[3].via.array;
        return RPC_VALID;
    }
    if (type == 2) {
        if (n != 3) {
            rpc_error_set(e, RPC_BAD_REQUEST, "a notification has 3 elements, not %u", n);
            return RPC_NOTIFY_ERROR;
        }
        m->kind = RPC_KIND_NOTIFICATION;
        m->msgid = 0;
        if (a[1].type != MSGPACK_OBJECT_STR) {
            rpc_error_set(e, RPC_BAD_REQUEST, "method must be a string");
            return RPC_DROP_NOTIFICATION;
        }
        if (a[2].type != MSGPACK_OBJECT_ARRAY) {
            rpc_error_set(e, RPC_BAD_REQUEST, "params must be an array");
            return RPC_DROP_NOTIFICATION;
        }
        m->method = find_method(&a[1]);
        m->params = &a[2].via.array;
        return RPC_VALID;
    }
    rpc_error_set(e, RPC_BAD_REQUEST,
                  type == 1 ? "clients send requests and notifications, not responses"
                            : "unknown message type %llu (0: request, 2: notification)",
                  (unsigned long long)type);
    return RPC_NOTIFY_ERROR;
}

void rpc_pack_str(msgpack_packer *pk, const char *s)
{
    rpc_pack_strn(pk, s, strlen(s));
}

void rpc_pack_strn(msgpack_packer *pk, const char *s, size_t len)
{
    msgpack_pack_str(pk, len);
    msgpack_pack_str_body(pk, s, len);
}

void rpc_pack_u64(msgpack_packer *pk, const char *key, uint64_t value)
{
    rpc_pack_str(pk, key);
    msgpack_pack_uint64(pk, value);
}

void rpc_pack_i64(msgpack_packer *pk, const char *key, int64_t value)
{
    rpc_pack_str(pk, key);
    msgpack_pack_int64(pk, value);
}

void rpc_pack_str_value(msgpack_packer *pk, const char *key, const char *value)
{
    rpc_pack_str(pk, key);
    rpc_pack_str(pk, value ? value : "");
}

void rpc_pack_error(msgpack_packer *pk, const struct rpc_error *e)
{
    bool retry = e->code == RPC_OVERLOADED || e->code == RPC_UNAVAILABLE;
    size_t n = 2 + (e->field != NULL) + (e->index >= 0) + retry;
    msgpack_pack_map(pk, n);
    rpc_pack_str(pk, "code");
    rpc_pack_str(pk, rpc_code_name(e->code));
    rpc_pack_str(pk, "message");
    rpc_pack_str(pk, e->message);
    if (e->field) {
        rpc_pack_str(pk, "field");
        rpc_pack_str(pk, e->field);
    }
    if (e->index >= 0) {
        rpc_pack_str(pk, "index");
        msgpack_pack_int64(pk, e->index);
    }
    if (retry) {
        rpc_pack_str(pk, "retry_after_ms");
        msgpack_pack_uint32(pk, e->retry_after_ms);
    }
}

void rpc_pack_result_head(msgpack_packer *pk, uint32_t msgid)
{
    /* Every answer starts so: one write of the bytes msgpack-c would give, not four. */
    uint8_t head[9], *p = head;
    *p++ = 0x94; /* array of 4 */
    *p++ = 1;    /* a response */
    if (msgid < 128) {
        *p++ = (uint8_t)msgid;
    } else if (msgid < 256) {
        *p++ = 0xcc;
        *p++ = (uint8_t)msgid;
    } else if (msgid < 65536) {
        *p++ = 0xcd;
        *p++ = (uint8_t)(msgid >> 8);
        *p++ = (uint8_t)msgid;
    } else {
        *p++ = 0xce;
        for (int shift = 24; shift >= 0; shift -= 8)
            *p++ = (uint8_t)(msgid >> shift);
    }
    *p++ = 0xc0; /* no error */
    pk->callback(pk->data, (const char *)head, (size_t)(p - head));
}

void rpc_pack_error_response(msgpack_packer *pk, uint32_t msgid, const struct rpc_error *e)
{
    msgpack_pack_array(pk, 4);
    msgpack_pack_uint8(pk, 1);
    msgpack_pack_uint32(pk, msgid);
    rpc_pack_error(pk, e);
    msgpack_pack_nil(pk);
}

void rpc_pack_error_notification(msgpack_packer *pk, const struct rpc_error *e)
{
    msgpack_pack_array(pk, 3);
    msgpack_pack_uint8(pk, 2);
    rpc_pack_str(pk, USAGED_NOTIFY_ERROR);
    msgpack_pack_array(pk, 1);
    rpc_pack_error(pk, e);
}
