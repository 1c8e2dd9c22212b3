/* shadows: see shadows.h. */
#include "shadows.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

void shadows_count(struct shadows *s, const struct rules_applied *r, const char *provider,
                   size_t provider_len, const char *model, size_t model_len)
{
    char pattern[SHADOWS_PATTERN_BYTES];
    bool concurrent = r->dimension == RULES_CONCURRENT; /* no window: calls in flight */
    snprintf(pattern, sizeof(pattern), "%.*s/%.*s/%s%s%s", r->by_provider ? (int)provider_len : 1,
             r->by_provider ? provider : "*", r->by_model && model_len ? (int)model_len : 1,
             r->by_model && model_len ? model : "*", rules_dimension_name(r->dimension),
             concurrent ? "" : "/", concurrent ? "" : rules_window_name(r->window));
    for (uint32_t i = 0; i < s->n; i++) {
        if (strcmp(s->entry[i].pattern, pattern) == 0) {
            s->entry[i].count++;
            return;
        }
    }
    if (s->n == SHADOWS_MAX) {
        s->other++;
        return;
    }
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4;
        s->entry = xrealloc(s->entry, s->cap * sizeof(*s->entry));
    }
    struct shadows_entry *e = &s->entry[s->n++];
    memcpy(e->pattern, pattern, sizeof(pattern));
    e->count = 1;
}

void shadows_free(struct shadows *s)
{
    free(s->entry);
    memset(s, 0, sizeof(*s));
}
