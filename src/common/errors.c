/* errors: see errors.h. */
#include "errors.h"

#include <stdarg.h>
#include <stdio.h>

#include "usaged/protocol.h"

static const char *const code_names[RPC_CODE_COUNT] = {
    [RPC_BAD_REQUEST] = USAGED_ERR_BAD_REQUEST,
    [RPC_INVALID_FIELD] = USAGED_ERR_INVALID_FIELD,
    [RPC_UNKNOWN_METHOD] = USAGED_ERR_UNKNOWN_METHOD,
    [RPC_UNKNOWN_PROVIDER] = USAGED_ERR_UNKNOWN_PROVIDER,
    [RPC_UNAUTHORIZED] = USAGED_ERR_UNAUTHORIZED,
    [RPC_OVERLOADED] = USAGED_ERR_OVERLOADED,
    [RPC_UNAVAILABLE] = USAGED_ERR_UNAVAILABLE,
    [RPC_TOO_LARGE] = USAGED_ERR_TOO_LARGE,
    [RPC_SHUTTING_DOWN] = USAGED_ERR_SHUTTING_DOWN,
    [RPC_INTERNAL] = USAGED_ERR_INTERNAL,
    [RPC_UNKNOWN_RESERVATION] = USAGED_ERR_UNKNOWN_RESERVATION,
};

const char *rpc_code_name(enum rpc_code code)
{
    return code < RPC_CODE_COUNT ? code_names[code] : USAGED_ERR_INTERNAL;
}

struct rpc_error *rpc_error_set(struct rpc_error *e, enum rpc_code code, const char *fmt, ...)
{
    e->code = code;
    e->field = NULL;
    e->index = -1;
    e->retry_after_ms = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
    return e;
}
