/* usage: a user's standing under every rule that applies to them (PROTOCOL.md, "`usage`"),
 * without spending: the numbers an app shows on its usage page.
 *
 * Made of peeks (checks that spend nothing) through the limiter, one per provider and model the
 * question covers: the named provider (or every provider the daemon knows), and the named model
 * (or no model, and each model a rule of that provider or of every provider names). They go to
 * Redis together in one script call. The rules they report are merged: a rule counting the same
 * thing (same provider or every provider, same model or any, dimension, window, shadow) is
 * listed once. */
#ifndef USAGED_USAGE_H
#define USAGED_USAGE_H

#include <stdbool.h>
#include <stdint.h>

#include "errors.h"
#include "limiter.h"

/* Peeks one question may make, at most: past this, the providers and models last in order are
 * left out (and the answer says `truncated`). */
#define USAGE_PEEKS_MAX 256

struct usage_rule {
    struct rules_applied rule;
    char provider[RULES_PROVIDER_BYTES + 1]; /* "": every provider */
    char model[RULES_MODEL_BYTES + 1];       /* "": any model */
    int64_t used;                            /* RULES_UNLIMITED: not counted */
    uint64_t now_ms;                         /* of the peek that read it */
};

struct usage_result {
    struct usage_rule *rules; /* sorted by provider, model, then as check lists them */
    size_t n;
    bool degraded;  /* some peek was answered without Redis */
    bool truncated; /* USAGE_PEEKS_MAX left some providers or models out */
};

typedef void (*usage_done_fn)(void *arg, uint64_t tag, const struct usage_result *r);

/* Asks for user_id's standing (provider and model: NULL or length 0 for all). done runs once,
 * possibly before this returns. False (done never runs) when it cannot be asked: e says why
 * (unknown_provider, or unavailable while the limits have not been read). */
bool usage_ask(struct limiter *l, const uint8_t user_id[16], const char *provider,
               size_t provider_len, const char *model, size_t model_len, usage_done_fn done,
               void *arg, uint64_t tag, struct rpc_error *e);

#endif
