/* methods_check: the `check` method (params, answer, stats) over the limiter. */
#ifndef USAGED_METHODS_CHECK_H
#define USAGED_METHODS_CHECK_H

#include <msgpack.h>

#include "conn.h"
#include "limiter.h"

enum conn_dispatch_result methods_check(struct limiter *l, struct conn *c,
                                        const struct rpc_message *m);
/* Packs a check's answer: the daemon's most frequent message, encoded by hand. */
void methods_check_pack_result(msgpack_packer *pk, const struct check_result *r);
/* Packs the limiter's part of `stats`. */
void methods_check_pack_stats(const struct limiter *l, msgpack_packer *pk);

#endif
