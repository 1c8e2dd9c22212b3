/* methods: see methods.h. */
#include "methods.h"

#include <string.h>

#include "log.h"
#include "methods_check.h"
#include "usaged/protocol.h"

static bool no_params(const struct rpc_message *m, struct rpc_error *e)
{
    if (m->params->size == 0)
        return true;
    rpc_error_set(e, RPC_BAD_REQUEST, "%s takes no params", rpc_method_name(m->method));
    return false;
}

static enum conn_dispatch_result do_ping(const struct methods *mt, struct conn *c,
                                         const struct rpc_message *m)
{
    struct rpc_error e;
    if (!no_params(m, &e))
        return conn_refuse(c, m, &e);
    if (m->kind == RPC_KIND_NOTIFICATION)
        return CONN_DISPATCHED;
    msgpack_packer *pk = conn_reply(c, m->msgid);
    msgpack_pack_map(pk, 3);
    rpc_pack_str(pk, "version");
    rpc_pack_str(pk, USAGED_VERSION);
    rpc_pack_str(pk, "protocol");
    msgpack_pack_uint8(pk, USAGED_PROTOCOL_VERSION);
    rpc_pack_str(pk, "uptime_ms");
    msgpack_pack_uint64(pk, stats_uptime_ms(mt->stats));
    return CONN_DISPATCHED;
}

/* Compares in time that depends on the lengths only, not on where the bytes differ. */
static bool token_equal(const char *a, size_t alen, const char *b, size_t blen)
{
    unsigned char diff = alen != blen;
    size_t n = alen < blen ? alen : blen;
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)(a[i] ^ b[i]);
    return diff == 0;
}

static enum conn_dispatch_result do_auth(const struct methods *mt, struct conn *c,
                                         const struct rpc_message *m)
{
    struct rpc_error e;
    if (m->params->size != 1 || m->params->ptr[0].type != MSGPACK_OBJECT_STR) {
        rpc_error_set(&e, RPC_BAD_REQUEST, "auth takes params [token]");
        return conn_refuse(c, m, &e);
    }
    const msgpack_object_str *t = &m->params->ptr[0].via.str;
    if (mt->token && !token_equal(t->ptr, t->size, mt->token, mt->token_len)) {
        rpc_error_set(&e, RPC_UNAUTHORIZED, "wrong token");
        /* A notification's refusal is logged as a dropped notification; say it for a request. */
        if (m->kind == RPC_KIND_REQUEST && conn_log_allowed(c))
            log_warn("conn %llu (%s): auth with a wrong token; closing", (unsigned long long)c->id,
                     c->peer);
        conn_refuse(c, m, &e);
        conn_close_after_flush(c);
        return CONN_DISPATCHED;
    }
    c->authed = true;
    if (m->kind == RPC_KIND_REQUEST)
        msgpack_pack_true(conn_reply(c, m->msgid));
    return CONN_DISPATCHED;
}

static enum conn_dispatch_result do_stats(const struct methods *mt, struct conn *c,
                                          const struct rpc_message *m)
{
    struct rpc_error e;
    if (!no_params(m, &e))
        return conn_refuse(c, m, &e);
    if (m->kind == RPC_KIND_REQUEST)
        stats_pack(mt->stats, conn_reply(c, m->msgid));
    return CONN_DISPATCHED;
}

enum conn_dispatch_result methods_dispatch(void *ctx, struct conn *c, const struct rpc_message *m)
{
    const struct methods *mt = ctx;
    struct rpc_error e;

    if (mt->token && !c->authed && m->method != RPC_AUTH) {
        rpc_error_set(&e, RPC_UNAUTHORIZED, "send auth with the token first");
        return conn_refuse(c, m, &e);
    }
    switch (m->method) {
    case RPC_PING:
        return do_ping(mt, c, m);
    case RPC_AUTH:
        return do_auth(mt, c, m);
    case RPC_STATS:
        return do_stats(mt, c, m);
    case RPC_USAGE:
        return methods_usage(mt->limiter, c, m);
    case RPC_CHECK:
    case RPC_SETTLE:
    case RPC_LOG_USAGE:
    case RPC_LOG_PROMPT:
        if (*mt->stopping) {
            rpc_error_set(&e, RPC_SHUTTING_DOWN, "the daemon is stopping and takes no new work");
            return conn_refuse(c, m, &e);
        }
        if (m->method == RPC_LOG_USAGE)
            return methods_log(mt->log, EVENT_USAGE, c, m);
        if (m->method == RPC_LOG_PROMPT)
            return methods_log_prompt(mt->log, mt->limiter, c, m);
        if (m->method == RPC_SETTLE)
            return methods_settle(mt->limiter, c, m);
        return methods_check(mt->limiter, c, m);
    case RPC_METHOD_UNKNOWN:
        break;
    }
    rpc_error_set(&e, RPC_UNKNOWN_METHOD,
                  "unknown method; the methods are ping, auth, check, settle, usage, "
                  "log_usage, log_prompt and stats");
    return conn_refuse(c, m, &e);
}
