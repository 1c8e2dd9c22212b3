/* rpc: the MessagePack-RPC envelope of PROTOCOL.md. Parses a decoded object into a request or a
 * notification, says what to do with one that is not valid, and packs responses, errors and the
 * "error" notification. Pure: no sockets, no clock. */
#ifndef USAGED_RPC_H
#define USAGED_RPC_H

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>

#include "errors.h"

enum rpc_method {
    RPC_PING = 0,
    RPC_AUTH,
    RPC_CHECK,
    RPC_LOG_USAGE,
    RPC_LOG_PROMPT,
    RPC_STATS,
    RPC_SETTLE,
    RPC_USAGE,
    RPC_METHOD_COUNT,
    RPC_METHOD_UNKNOWN = RPC_METHOD_COUNT
};

const char *rpc_method_name(enum rpc_method method);

enum rpc_kind { RPC_KIND_REQUEST = 0, RPC_KIND_NOTIFICATION };

struct rpc_message {
    enum rpc_kind kind;
    uint32_t msgid; /* requests only */
    enum rpc_method method;
    const msgpack_object_array *params;
};

enum rpc_verdict {
    RPC_VALID = 0,         /* a request or notification to dispatch */
    RPC_ANSWER_ERROR,      /* a request with a usable msgid but a bad envelope: reply with e */
    RPC_NOTIFY_ERROR,      /* not an envelope at all: send the "error" notification */
    RPC_DROP_NOTIFICATION, /* an invalid notification: no one to answer; count and log */
};

/* Classifies a decoded object. On anything but RPC_VALID, e says why. An unknown method is
 * valid here (method = RPC_METHOD_UNKNOWN) so that the caller answers it like any other. */
enum rpc_verdict rpc_parse(const msgpack_object *o, struct rpc_message *m, struct rpc_error *e);

/* Packs [1, msgid, nil, and leaves the result for the caller to pack. */
void rpc_pack_result_head(msgpack_packer *pk, uint32_t msgid);
/* Packs [1, msgid, {error}, nil]. */
void rpc_pack_error_response(msgpack_packer *pk, uint32_t msgid, const struct rpc_error *e);
/* Packs [2, "error", [{error}]]. */
void rpc_pack_error_notification(msgpack_packer *pk, const struct rpc_error *e);
/* Packs the error map alone. */
void rpc_pack_error(msgpack_packer *pk, const struct rpc_error *e);

/* Packing helpers for maps with C-string keys. */
void rpc_pack_str(msgpack_packer *pk, const char *s);
void rpc_pack_strn(msgpack_packer *pk, const char *s, size_t len);

/* Packs "key": value, for the stats maps. */
void rpc_pack_u64(msgpack_packer *pk, const char *key, uint64_t value);
void rpc_pack_i64(msgpack_packer *pk, const char *key, int64_t value);
/* "key": value, where a NULL value packs as "". */
void rpc_pack_str_value(msgpack_packer *pk, const char *key, const char *value);

/* True when o is a str equal to s. */
bool rpc_str_eq(const msgpack_object *o, const char *s);

#endif
