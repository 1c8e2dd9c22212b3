/* methods_check: the `check` and `settle` methods (params, answers, stats) over the limiter,
 * and the reservations log_prompt events carry. */
#ifndef USAGED_METHODS_CHECK_H
#define USAGED_METHODS_CHECK_H

#include <msgpack.h>

#include "conn.h"
#include "limiter.h"
#include "methods_log.h"

enum conn_dispatch_result methods_check(struct limiter *l, struct conn *c,
                                        const struct rpc_message *m);
enum conn_dispatch_result methods_settle(struct limiter *l, struct conn *c,
                                         const struct rpc_message *m);
/* usage: the user's standing under every rule that applies, spending nothing. */
enum conn_dispatch_result methods_usage(struct limiter *l, struct conn *c,
                                        const struct rpc_message *m);
/* log_prompt: the events go to methods_log without their `reservation`; once accepted, each
 * reservation is settled with the event's tokens_used and cost_usd (cancelled: cancelled). */
enum conn_dispatch_result methods_log_prompt(struct methods_log *ml, struct limiter *l,
                                             struct conn *c, const struct rpc_message *m);
/* Packs the limiter's part of `stats`. */
void methods_check_pack_stats(const struct limiter *l, msgpack_packer *pk);

#endif
