/* check_answer: the msgpack encoding of a check's answer (PROTOCOL.md, check and its budget
 * additions). The daemon's most frequent message, so it is written into one buffer by hand and
 * handed to the packer in one write; tests/unit/test_limiter.c holds it to what msgpack-c's own
 * packer makes of the same answer, byte for byte. Pure. */
#ifndef USAGED_CHECK_ANSWER_H
#define USAGED_CHECK_ANSWER_H

#include <msgpack.h>

#include "decision.h"
#include "usage.h"

void check_answer_pack(msgpack_packer *pk, const struct check_result *r);
/* The `usage` answer: {"limits": [rule maps with provider and model], "degraded", "truncated"}. */
void check_answer_pack_usage(msgpack_packer *pk, const struct usage_result *r);

#endif
