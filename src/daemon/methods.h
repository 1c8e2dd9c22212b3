/* methods: routes each valid request or notification to the module that serves it, and answers
 * the methods that need no module of their own (ping, auth, stats). Auth and shutdown gate every
 * method here, in one place. */
#ifndef USAGED_METHODS_H
#define USAGED_METHODS_H

#include "conn.h"

/* The conn dispatch function; ctx is the struct daemon. */
enum conn_dispatch_result methods_dispatch(void *ctx, struct conn *c, const struct rpc_message *m);

#endif
