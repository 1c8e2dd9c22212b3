/* usaged wire protocol, version 1: the names a client needs (see docs/protocol.md).
 *
 * Messages are MessagePack-RPC: request [0, msgid, method, params], response
 * [1, msgid, error, result], notification [2, method, params]. */
#ifndef USAGED_PROTOCOL_H
#define USAGED_PROTOCOL_H

#define USAGED_PROTOCOL_VERSION 1

/* Message types of MessagePack-RPC. */
#define USAGED_MSG_REQUEST 0
#define USAGED_MSG_RESPONSE 1
#define USAGED_MSG_NOTIFICATION 2

/* Methods. */
#define USAGED_METHOD_PING "ping"
#define USAGED_METHOD_AUTH "auth"
#define USAGED_METHOD_CHECK "check"
#define USAGED_METHOD_LOG_USAGE "log_usage"
#define USAGED_METHOD_LOG_PROMPT "log_prompt"
#define USAGED_METHOD_STATS "stats"
#define USAGED_METHOD_SETTLE "settle"
#define USAGED_METHOD_USAGE "usage"
/* The notification the daemon sends when a stream cannot be answered message by message. */
#define USAGED_NOTIFY_ERROR "error"

/* Error codes (the "code" of an error map). */
#define USAGED_ERR_BAD_REQUEST "bad_request"
#define USAGED_ERR_INVALID_FIELD "invalid_field"
#define USAGED_ERR_UNKNOWN_METHOD "unknown_method"
#define USAGED_ERR_UNKNOWN_PROVIDER "unknown_provider"
#define USAGED_ERR_UNAUTHORIZED "unauthorized"
#define USAGED_ERR_OVERLOADED "overloaded"
#define USAGED_ERR_UNAVAILABLE "unavailable"
#define USAGED_ERR_TOO_LARGE "too_large"
#define USAGED_ERR_SHUTTING_DOWN "shutting_down"
#define USAGED_ERR_INTERNAL "internal"
#define USAGED_ERR_UNKNOWN_RESERVATION "unknown_reservation"

/* Reasons a check is denied. */
#define USAGED_REASON_MINUTE_LIMIT "minute_limit"
#define USAGED_REASON_HOUR_LIMIT "hour_limit"
#define USAGED_REASON_DAY_LIMIT "day_limit"
#define USAGED_REASON_MONTH_LIMIT "month_limit"
#define USAGED_REASON_CONCURRENCY_LIMIT "concurrency_limit"
#define USAGED_REASON_PROVIDER_DISABLED "provider_disabled"
#define USAGED_REASON_UNAVAILABLE "unavailable"

#endif
