/* shadows: how many checks each shadow rule would have denied, by the rule's pattern
 * ("provider/model/dimension/window", or "provider/model/concurrent"; "*" for a rule of every
 * provider or any model: the pattern as it applied to the check). Bounded: the first SHADOWS_MAX
 * patterns seen get a count each; later ones add to the pattern "other". A reload of the limits
 * keeps the counts. */
#ifndef USAGED_SHADOWS_H
#define USAGED_SHADOWS_H

#include <stddef.h>
#include <stdint.h>

#include "rules.h"

#define SHADOWS_MAX 64
#define SHADOWS_PATTERN_BYTES (RULES_PROVIDER_BYTES + RULES_MODEL_BYTES + 32)
#define SHADOWS_OTHER "other"

struct shadows_entry {
    char pattern[SHADOWS_PATTERN_BYTES];
    uint64_t count;
};

struct shadows {
    struct shadows_entry *entry; /* n of them, allocated up to SHADOWS_MAX */
    uint32_t n, cap;
    uint64_t other; /* denials of patterns past SHADOWS_MAX */
};

/* Counts one check that rule r (applied to provider and model) would have denied. */
void shadows_count(struct shadows *s, const struct rules_applied *r, const char *provider,
                   size_t provider_len, const char *model, size_t model_len);
void shadows_free(struct shadows *s);

#endif
