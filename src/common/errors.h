/* errors: the protocol's error codes and the error every module fills when it refuses something
 * (PROTOCOL.md, "Errors"). Its own header so that the domain modules (ingest, limits) can say
 * why they refuse without seeing the RPC envelope. Pure. */
#ifndef USAGED_ERRORS_H
#define USAGED_ERRORS_H

#include <stdint.h>

enum rpc_code {
    RPC_BAD_REQUEST = 0,
    RPC_INVALID_FIELD,
    RPC_UNKNOWN_METHOD,
    RPC_UNKNOWN_PROVIDER,
    RPC_UNAUTHORIZED,
    RPC_OVERLOADED,
    RPC_UNAVAILABLE,
    RPC_TOO_LARGE,
    RPC_SHUTTING_DOWN,
    RPC_INTERNAL,
    RPC_UNKNOWN_RESERVATION,
    RPC_CODE_COUNT
};

const char *rpc_code_name(enum rpc_code code);

struct rpc_error {
    enum rpc_code code;
    char message[240];
    const char *field;       /* invalid_field: the first bad field; NULL: no field key */
    char field_name[64];     /* storage for field when it is not a constant */
    int64_t index;           /* invalid_field in log methods: the event's position; -1: none */
    uint32_t retry_after_ms; /* overloaded, unavailable: when to try again */
};

/* Fills e; the message is printf-formatted. Returns e for chaining. */
struct rpc_error *rpc_error_set(struct rpc_error *e, enum rpc_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
