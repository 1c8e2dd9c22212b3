/* batch: see batch.h. */
#include "batch.h"

#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

struct batch *batch_new(struct batcher_table *t, uint32_t expected_rows)
{
    struct batch *batch = xcalloc(1, sizeof(*batch));
    batch->t = t;
    buf_init(&batch->rows);
    batch->cap_rows = expected_rows ? expected_rows : 64;
    batch->row_off = xmalloc((batch->cap_rows + 1) * sizeof(uint32_t));
    batch->row_off[0] = 0;
    return batch;
}

void batch_free(struct batch *batch)
{
    buf_free(&batch->rows);
    free(batch->row_off);
    free(batch->acks);
    free(batch->ranges);
    free(batch->reject_error);
    free(batch);
}

void batch_reserve_row(struct batch *batch)
{
    if (batch->nrows == batch->cap_rows) {
        batch->cap_rows *= 2;
        batch->row_off = xrealloc(batch->row_off, (batch->cap_rows + 1) * sizeof(uint32_t));
    }
}

void batch_end_row(struct batch *batch)
{
    batch->nrows++;
    batch->row_off[batch->nrows] = (uint32_t)batch->rows.len;
}

void batch_truncate(struct batch *batch, uint32_t nrows, size_t len)
{
    batch->rows.len = len;
    batch->nrows = nrows;
    batch->row_off[nrows] = (uint32_t)len;
}

void batch_push_range(struct batch *batch, uint32_t lo, uint32_t hi, bool reject)
{
    if (batch->nranges == batch->cap_ranges) {
        batch->cap_ranges = batch->cap_ranges ? batch->cap_ranges * 2 : 8;
        batch->ranges = xrealloc(batch->ranges, batch->cap_ranges * sizeof(*batch->ranges));
    }
    batch->ranges[batch->nranges].lo = lo;
    batch->ranges[batch->nranges].hi = hi;
    batch->ranges[batch->nranges].reject = reject;
    batch->nranges++;
}

void batch_add_ack(struct batch *batch, struct batch_ack *ack)
{
    if (batch->nacks == batch->cap_acks) {
        batch->cap_acks = batch->cap_acks ? batch->cap_acks * 2 : 8;
        batch->acks = xrealloc(batch->acks, batch->cap_acks * sizeof(*batch->acks));
    }
    batch->acks[batch->nacks++] = ack;
}

void batch_answer_acks(struct batch *batch, const struct rpc_error *err)
{
    uint32_t n = batch->nacks;
    batch->nacks = 0;
    for (uint32_t i = 0; i < n; i++)
        batch->acks[i]->done(batch->acks[i], err);
}

void batch_split_top(struct batch *batch)
{
    struct batch_range *r = batch_top(batch);
    /* The first half is written first (it ends up on top of the stack). */
    uint32_t lo = r->lo, hi = r->hi, mid = lo + (hi - lo) / 2;
    batch->nranges--;
    batch_push_range(batch, mid, hi, false);
    batch_push_range(batch, lo, mid, false);
}

static uint32_t be32_at(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

bool batch_row_user_id(const struct batch *batch, uint32_t i, uint8_t id[16])
{
    const uint8_t *row = batch->rows.data + batch->row_off[i];
    size_t len = batch->row_off[i + 1] - batch->row_off[i];
    /* int16 field count, then each field as int32 length (-1: NULL) and its bytes. */
    if (len < 2 + 4)
        return false;
    int32_t len0 = (int32_t)be32_at(row + 2);
    size_t off = 2 + 4 + (len0 > 0 ? (size_t)len0 : 0);
    if (off + 4 + 16 > len || (int32_t)be32_at(row + off) != 16)
        return false;
    memcpy(id, row + off + 4, 16);
    return true;
}

static int compare_ids(const void *a, const void *b)
{
    return memcmp(a, b, 16);
}

uint32_t batch_set_aside(struct batch *batch, const uint8_t (*unknown)[16], size_t nunknown)
{
    struct batch_range *r = batch_top(batch);
    /* Known users first (their order does not matter: acks are per batch), each part then gets
     * a range of its own. */
    uint32_t lo = r->lo, hi = r->hi;
    size_t start = batch->row_off[lo], bytes = batch->row_off[hi] - start;
    uint8_t *sorted = xmalloc(bytes ? bytes : 1);
    uint32_t *offs = xmalloc((hi - lo) * sizeof(*offs));
    size_t at = 0;
    uint32_t k = 0, ngood = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = lo; i < hi; i++) {
            uint8_t id[16];
            bool bad =
                batch_row_user_id(batch, i, id) && bsearch(id, unknown, nunknown, 16, compare_ids);
            if (bad != (pass == 1))
                continue;
            size_t len = batch->row_off[i + 1] - batch->row_off[i];
            memcpy(sorted + at, batch->rows.data + batch->row_off[i], len);
            offs[k++] = (uint32_t)(start + at);
            at += len;
            ngood += pass == 0;
        }
    }
    memcpy(batch->rows.data + start, sorted, bytes);
    memcpy(batch->row_off + lo, offs, (hi - lo) * sizeof(*offs));
    free(sorted);
    free(offs);
    batch->nranges--;
    /* The rejects go first, while batch->reject_error is still the error that refused them. */
    if (ngood > 0)
        batch_push_range(batch, lo, lo + ngood, false);
    batch_push_range(batch, lo + ngood, hi, true);
    return ngood;
}

bool batch_spill_due(const struct batch_spill_state *s, uint64_t sealed_ms)
{
    uint64_t grace = s->spill_after_ms < 200 ? s->spill_after_ms : 200;
    bool failing = s->failing_since && s->now_ms - s->failing_since >= s->spill_after_ms;
    /* Down: every writer is waiting out the backoff after a failed attempt, so no write can
     * happen soon. Connecting: an attempt is under way and may succeed within the grace. */
    bool down = s->writers_up == 0 && s->writers_connecting == 0;
    bool connecting = s->writers_up == 0 && s->writers_connecting > 0;
    return s->drain_expired || failing || down || (connecting && s->now_ms - sealed_ms >= grace);
}
