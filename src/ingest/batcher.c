/* batcher: see batcher.h.
 *
 * A batch's life: filling (rows appended by requests) -> sealed (in its table's list) -> written
 * (one COPY per range of rows still to write; rows of unknown users are set aside at once, any
 * other data error splits the range in two until a bad row stands alone; bad rows go to
 * usaged.rejects) -> done (durable acks answered, memory freed).
 * Each table has its own connection, so the two tables' batches are written in parallel. */
#include "batcher.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "uuid.h"
#include "xalloc.h"

#define RETRY_START_MS 100

static void batcher_kick(struct batcher_table *t);
static void write_range(struct batcher_writer *w);
static void spill_for_room(struct batcher *b, uint64_t rows);

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- batches ---- */

static struct batch *batch_new(struct batcher_table *t, uint32_t expected_rows)
{
    struct batch *batch = xcalloc(1, sizeof(*batch));
    batch->t = t;
    buf_init(&batch->rows);
    batch->cap_rows = expected_rows ? expected_rows : 64;
    batch->row_off = xmalloc((batch->cap_rows + 1) * sizeof(uint32_t));
    batch->row_off[0] = 0;
    return batch;
}

static void batch_free(struct batch *batch)
{
    buf_free(&batch->rows);
    free(batch->row_off);
    free(batch->acks);
    free(batch->ranges);
    free(batch->reject_error);
    free(batch);
}

/* Makes room for one more row offset. */
static void batch_reserve_row(struct batch *batch)
{
    if (batch->nrows == batch->cap_rows) {
        batch->cap_rows *= 2;
        batch->row_off = xrealloc(batch->row_off, (batch->cap_rows + 1) * sizeof(uint32_t));
    }
}

static void batch_end_row(struct batch *batch)
{
    batch->nrows++;
    batch->row_off[batch->nrows] = (uint32_t)batch->rows.len;
}

static void batch_push_range(struct batch *batch, uint32_t lo, uint32_t hi, bool reject)
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

static void batch_add_ack(struct batch *batch, struct batch_ack *ack)
{
    if (batch->nacks == batch->cap_acks) {
        batch->cap_acks = batch->cap_acks ? batch->cap_acks * 2 : 8;
        batch->acks = xrealloc(batch->acks, batch->cap_acks * sizeof(*batch->acks));
    }
    batch->acks[batch->nacks++] = ack;
}

/* ---- setup ---- */

static void report_state(struct batcher_table *t)
{
    if (t->b->on_state)
        t->b->on_state(t->b->state_arg);
}

/* A writer's connection came up, went idle, went down or failed to connect: the table may
 * have batches for it, or batches to spill. */
static void on_writer_state(struct pg_conn *pg, void *arg)
{
    (void)pg;
    struct batcher_writer *w = arg;
    batcher_kick(w->t);
    report_state(w->t);
}

static const struct pg_callbacks writer_callbacks = {
    .ready = on_writer_state,
    .lost = on_writer_state,
    .notify = NULL,
    .connect_failed = on_writer_state,
};

void batcher_configure(struct batcher *b, const struct config *config)
{
    b->batch_rows = config->ingest.batch_rows;
    b->batch_ms = config->ingest.batch_ms;
    b->queue_rows = config->ingest.queue_rows;
    b->queue_bytes = config->ingest.queue_bytes;
    b->batch_bytes = config->ingest.batch_bytes;
    b->default_ack = config->ingest.ack;
    b->spill_after_ms = config->ingest.spill_after_ms;
    b->drain_timeout_s = config->ingest.drain_timeout_s;
}

void batcher_init(struct batcher *b, uv_loop_t *loop, const struct config *config)
{
    memset(b, 0, sizeof(*b));
    b->loop = loop;
    batcher_configure(b, config);
    uuid_v7_init(&b->ids, (uint64_t)wall_ms() ^ ((uint64_t)uv_hrtime() << 17));
    for (int k = 0; k < EVENT_KIND_COUNT; k++) {
        struct batcher_table *t = &b->tables[k];
        t->b = b;
        t->kind = (enum event_kind)k;
        t->table = event_table(t->kind);
        t->reject_log.period_ms = 10000;
        t->reject_log.burst = 10;
        t->nwriters = config->ingest.connections;
        for (uint32_t i = 0; i < t->nwriters; i++) {
            struct batcher_writer *w = &t->writers[i];
            w->t = t;
            buf_init(&w->sql);
            buf_init(&w->json);
            w->retry_ms = RETRY_START_MS;
            char name[32];
            snprintf(name, sizeof(name), "ingest %s %u", k == EVENT_USAGE ? "usage" : "prompt",
                     i + 1);
            pg_init(&w->pg, loop, name, config->postgres.conninfo,
                    config->postgres.connect_timeout_s * 1000, config->postgres.reconnect_max_ms,
                    &writer_callbacks, w);
            uv_timer_init(loop, &w->retry_timer);
            w->retry_timer.data = w;
        }
        uv_timer_init(loop, &t->flush_timer);
        t->flush_timer.data = t;
        uv_timer_init(loop, &t->spill_timer);
        t->spill_timer.data = t;
    }
    uv_timer_init(loop, &b->drain_timer);
    b->drain_timer.data = b;
}

void batcher_start(struct batcher *b)
{
    for (int k = 0; k < EVENT_KIND_COUNT; k++)
        for (uint32_t i = 0; i < b->tables[k].nwriters; i++)
            pg_start(&b->tables[k].writers[i].pg);
}

/* ---- backpressure ---- */

/* Room for `rows` more, by count and by bytes (rows can be large: a prompt's text). Bytes are
 * checked before the rows are encoded, so the queue may pass queue_bytes by one message at most. A
 * request larger than the whole queue could never fit: it is taken when the queue is empty. */
static bool queue_has_room(const struct batcher *b, uint64_t rows)
{
    return (b->queued_rows + rows <= b->queue_rows && b->queued_bytes < b->queue_bytes) ||
           b->queued_rows == 0;
}

/* Batches handed to the spool stay in memory until their fsync; a disk slower than the clients
 * would otherwise let them pile up without bound. At most an eighth of queue_bytes is on its way
 * there; past that, requests wait (overloaded, a short retry_after) as for a full queue. */
static bool spooling_has_room(const struct batcher *b)
{
    return b->spooling_bytes < b->queue_bytes / 8;
}

static bool has_room(const struct batcher *b, uint64_t rows)
{
    return queue_has_room(b, rows) && spooling_has_room(b);
}

static uint32_t retry_after_ms(const struct batcher *b, uint64_t rows)
{
    if (queue_has_room(b, rows))
        return 20; /* only the spool's writes are behind: a group commit takes milliseconds */
    uint64_t excess = b->queued_rows + rows - b->queue_rows;
    double ms = b->rows_per_ms > 0 ? (double)excess / b->rows_per_ms : 100;
    if (ms < 10)
        ms = 10;
    if (ms > 5000)
        ms = 5000;
    return (uint32_t)ms;
}

static void pause_sender(struct batcher *b, struct conn *c)
{
    for (uint32_t i = 0; i < b->npaused; i++)
        if (b->paused[i] == c)
            return;
    if (b->npaused == b->cap_paused) {
        b->cap_paused = b->cap_paused ? b->cap_paused * 2 : 16;
        b->paused = xrealloc(b->paused, b->cap_paused * sizeof(*b->paused));
    }
    conn_ref(c);
    conn_pause(c, CONN_PAUSE_BACKPRESSURE);
    b->paused[b->npaused++] = c;
    b->stats.notifications_paused++;
}

static void resume_senders(struct batcher *b)
{
    if (b->npaused == 0 || !spooling_has_room(b) ||
        !(b->queued_rows == 0 || (b->queued_rows + b->batch_rows <= b->queue_rows &&
                                  b->queued_bytes + b->batch_bytes / 4 <= b->queue_bytes)))
        return;
    /* Take the list first: a resumed connection may pause again and re-register. */
    struct conn **list = b->paused;
    uint32_t n = b->npaused;
    b->paused = NULL;
    b->npaused = 0;
    b->cap_paused = 0;
    for (uint32_t i = 0; i < n; i++) {
        conn_resume(list[i], CONN_PAUSE_BACKPRESSURE);
        conn_unref(list[i]);
    }
    free(list);
}

/* ---- accepting events ---- */

static void seal(struct batcher_table *t)
{
    struct batch *batch = t->filling;
    if (!batch)
        return;
    t->filling = NULL;
    uv_timer_stop(&t->flush_timer);
    batch->sealed_ms = uv_now(t->b->loop);
    batch_push_range(batch, 0, batch->nrows, false);
    if (t->tail)
        t->tail->next = batch;
    else
        t->head = batch;
    t->tail = batch;
    batcher_kick(t);
}

static void on_flush_timer(uv_timer_t *timer)
{
    seal(timer->data);
}

static struct batch *filling_batch(struct batcher_table *t)
{
    if (!t->filling) {
        t->filling = batch_new(t, t->b->batch_rows < 4096 ? t->b->batch_rows : 4096);
        t->filling->first_row_ms = uv_now(t->b->loop);
        uv_timer_start(&t->flush_timer, on_flush_timer, t->b->batch_ms, 0);
    }
    return t->filling;
}

/* Reads params: [[events]] or [[events], {"ack": ...}]. */
static bool parse_log_params(const struct batcher *b, const struct rpc_message *m,
                             const msgpack_object_array **events, enum config_ack *ack,
                             struct rpc_error *err)
{
    const msgpack_object_array *p = m->params;
    if (p->size < 1 || p->size > 2 || p->ptr[0].type != MSGPACK_OBJECT_ARRAY) {
        rpc_error_set(err, RPC_BAD_REQUEST,
                      "%s takes params [[event, ...]] or "
                      "[[event, ...], {\"ack\": \"queued\"|\"durable\"}]",
                      rpc_method_name(m->method));
        return false;
    }
    *events = &p->ptr[0].via.array;
    *ack = b->default_ack;
    if (p->size == 2) {
        const msgpack_object *opts = &p->ptr[1];
        if (opts->type != MSGPACK_OBJECT_MAP) {
            rpc_error_set(err, RPC_BAD_REQUEST, "the second param must be a map of options");
            return false;
        }
        for (uint32_t i = 0; i < opts->via.map.size; i++) {
            const msgpack_object *k = &opts->via.map.ptr[i].key;
            const msgpack_object *v = &opts->via.map.ptr[i].val;
            if (!rpc_str_eq(k, "ack")) {
                rpc_error_set(err, RPC_INVALID_FIELD, "unknown option; the only one is ack");
                err->field = "ack";
                return false;
            }
            if (i > 0) { /* only ack is known, so a second key is ack again */
                rpc_error_set(err, RPC_INVALID_FIELD, "ack is given twice");
                err->field = "ack";
                return false;
            }
            if (rpc_str_eq(v, "queued")) {
                *ack = CONFIG_ACK_QUEUED;
            } else if (rpc_str_eq(v, "durable")) {
                *ack = CONFIG_ACK_DURABLE;
            } else if (v->type != MSGPACK_OBJECT_NIL) {
                rpc_error_set(err, RPC_INVALID_FIELD, "ack must be \"queued\" or \"durable\"");
                err->field = "ack";
                return false;
            }
        }
    }
    return true;
}

static enum conn_dispatch_result refuse(struct batcher *b, struct conn *c,
                                        const struct rpc_message *m, const struct rpc_error *e,
                                        uint64_t events)
{
    b->stats.events_rejected[e->code] += events;
    if (m->kind == RPC_KIND_REQUEST)
        conn_reply_error(c, m->msgid, e);
    else
        conn_drop_notification(c, rpc_method_name(m->method), e);
    return CONN_DISPATCHED;
}

enum conn_dispatch_result batcher_submit(struct batcher *b, enum event_kind kind, struct conn *c,
                                         const struct rpc_message *m)
{
    struct rpc_error err;
    const msgpack_object_array *events;
    enum config_ack ack;
    if (!parse_log_params(b, m, &events, &ack, &err))
        return refuse(b, c, m, &err, 0);
    uint32_t n = events->size;
    if (!has_room(b, n))
        spill_for_room(b, n);
    if (!has_room(b, n)) {
        if (m->kind == RPC_KIND_NOTIFICATION) {
            pause_sender(b, c);
            return CONN_RETRY_LATER;
        }
        b->stats.requests_overloaded++;
        rpc_error_set(&err, RPC_OVERLOADED,
                      "the ingest queue is full (%u rows); nothing of this request was kept",
                      b->queue_rows);
        err.retry_after_ms = retry_after_ms(b, n);
        return refuse(b, c, m, &err, n);
    }
    b->stats.events_received += n;

    struct batcher_table *t = &b->tables[kind];
    struct batch *batch = filling_batch(t);
    size_t saved_len = batch->rows.len;
    uint32_t saved_rows = batch->nrows;
    struct event_context ctx = {.now_ms = wall_ms(), .ids = &b->ids};
    for (uint32_t i = 0; i < n; i++) {
        batch_reserve_row(batch);
        if (!event_encode(kind, &events->ptr[i], &ctx, &batch->rows, &err)) {
            batch->rows.len = saved_len;
            batch->nrows = saved_rows;
            batch->row_off[saved_rows] = (uint32_t)saved_len;
            err.index = i;
            if (batch->nrows == 0) {
                /* Nothing else is in it: drop the batch rather than keep an empty one. */
                uv_timer_stop(&t->flush_timer);
                t->filling = NULL;
                batch_free(batch);
            }
            return refuse(b, c, m, &err, n);
        }
        batch_end_row(batch);
    }
    b->stats.events_accepted += n;
    t->stats.rows_queued += n;
    t->queued_rows += n;
    b->queued_rows += n;
    b->queued_bytes += batch->rows.len - saved_len;

    if (m->kind == RPC_KIND_REQUEST) {
        if (ack == CONFIG_ACK_DURABLE && n > 0) {
            struct batch_ack *a = xmalloc(sizeof(*a));
            a->conn = c;
            a->msgid = m->msgid;
            a->accepted = n;
            conn_ref(c);
            batch_add_ack(batch, a);
        } else {
            msgpack_packer *pk = conn_reply(c, m->msgid);
            msgpack_pack_map(pk, 1);
            rpc_pack_str(pk, "accepted");
            msgpack_pack_uint32(pk, n);
        }
    }
    if (batch->nrows >= b->batch_rows || batch->rows.len >= b->batch_bytes)
        seal(t);
    else if (batch->nrows == 0) {
        uv_timer_stop(&t->flush_timer);
        t->filling = NULL;
        batch_free(batch);
    }
    return CONN_DISPATCHED;
}

void batcher_log_denied(struct batcher *b, const uint8_t user_id[16], const char *provider,
                        size_t provider_len, const char *reason, int64_t now_ms)
{
    if (b->draining)
        return;
    if (!has_room(b, 1)) {
        b->stats.events_rejected[RPC_OVERLOADED]++;
        return;
    }
    struct batcher_table *t = &b->tables[EVENT_USAGE];
    struct batch *batch = filling_batch(t);
    struct event_context ctx = {.now_ms = now_ms, .ids = &b->ids};
    char message[64];
    snprintf(message, sizeof(message), "usaged: rate limited (%s)", reason);
    struct event_usage_row row = {
        .user_id = user_id,
        .provider = provider,
        .provider_len = provider_len,
        .status_code = 429,
        .error_message = message,
        .created_at_ms = now_ms,
    };
    size_t before = batch->rows.len;
    batch_reserve_row(batch);
    event_encode_usage_row(&row, &ctx, &batch->rows);
    batch_end_row(batch);
    t->stats.rows_queued++;
    t->queued_rows++;
    b->queued_rows++;
    b->queued_bytes += batch->rows.len - before;
    if (batch->nrows >= b->batch_rows || batch->rows.len >= b->batch_bytes)
        seal(t);
}

/* ---- writing ---- */

/* Drained: every accepted row is committed or fsync'd in the spool. A batch replaying a spool
 * record does not count: its record stays in the spool until committed. */
static void check_drained(struct batcher *b)
{
    if (!b->draining || !b->on_drained || b->spooling)
        return;
    for (int k = 0; k < EVENT_KIND_COUNT; k++) {
        if (b->tables[k].filling)
            return;
        for (struct batch *batch = b->tables[k].head; batch; batch = batch->next)
            if (!batch->replay)
                return;
    }
    uv_timer_stop(&b->drain_timer);
    void (*cb)(struct batcher *, void *) = b->on_drained;
    b->on_drained = NULL;
    cb(b, b->drained_arg);
}

static void answer_acks(struct batch *batch)
{
    for (uint32_t i = 0; i < batch->nacks; i++) {
        struct batch_ack *a = batch->acks[i];
        msgpack_packer *pk = conn_reply(a->conn, a->msgid);
        msgpack_pack_map(pk, 1);
        rpc_pack_str(pk, "accepted");
        msgpack_pack_uint32(pk, a->accepted);
        conn_unref(a->conn);
        free(a);
    }
    batch->nacks = 0;
}

static void unlink_batch(struct batcher_table *t, struct batch *batch)
{
    struct batch **p = &t->head, *prev = NULL;
    while (*p && *p != batch) {
        prev = *p;
        p = &(*p)->next;
    }
    if (!*p)
        return;
    *p = batch->next;
    if (t->tail == batch)
        t->tail = prev;
    batch->next = NULL;
}

static void finish_batch(struct batcher_writer *w)
{
    struct batcher_table *t = w->t;
    struct batcher *b = t->b;
    struct batch *batch = w->current;
    unlink_batch(t, batch);
    w->current = NULL;
    batch->writer = NULL;
    t->stats.batches++;
    if (batch->replay) {
        t->stats.rows_replayed += batch->nrows;
        t->replays--;
        spool_release(b->spool, batch->replay, true);
        batch->replay = NULL;
    } else {
        t->queued_rows -= batch->nrows;
        b->queued_rows -= batch->nrows;
        b->queued_bytes -= batch->rows.len;
    }
    answer_acks(batch);
    batch_free(batch);
    resume_senders(b);
    check_drained(b);
}

/* ---- the spool: spilling and replay ---- */

static void on_spooled(void *arg, int status)
{
    struct batch *batch = arg;
    struct batcher_table *t = batch->t;
    struct batcher *b = t->b;
    b->spooling--;
    b->spooling_bytes -= batch->rows.len;
    if (status < 0) {
        /* Not on disk: the rows stay in memory, first in line again. */
        t->queued_rows += batch->nrows;
        b->queued_rows += batch->nrows;
        b->queued_bytes += batch->rows.len;
        batch->next = t->head;
        t->head = batch;
        if (!t->tail)
            t->tail = batch;
        batcher_kick(t);
        return;
    }
    t->stats.rows_spooled += batch->nrows;
    answer_acks(batch);
    batch_free(batch);
    resume_senders(b);
    check_drained(b);
}

/* Hands a sealed batch to the spool. False when the spool cannot take it. */
static bool spill(struct batcher_table *t, struct batch *batch)
{
    struct batcher *b = t->b;
    if (!b->spool || batch->replay || (batch->writer && batch->writer->writing))
        return false;
    if (spool_append(b->spool, t->kind, batch->rows.data, batch->rows.len, batch->nrows, on_spooled,
                     batch) < 0)
        return false;
    unlink_batch(t, batch);
    b->spooling++;
    b->spooling_bytes += batch->rows.len;
    t->queued_rows -= batch->nrows;
    b->queued_rows -= batch->nrows;
    b->queued_bytes -= batch->rows.len;
    return true;
}

/* Spills what cannot be written now: everything when the writer is down (after a short grace
 * for a quick reconnect) or has failed for ingest.spill_after_ms, or when the drain is out of
 * time. */
static void maybe_spill(struct batcher_table *t)
{
    struct batcher *b = t->b;
    if (!b->spool || !b->spool->ready)
        return;
    uint64_t now = uv_now(b->loop);
    uint64_t grace = b->spill_after_ms < 200 ? b->spill_after_ms : 200;
    bool failing = t->failing_since && now - t->failing_since >= b->spill_after_ms;
    /* Down: every writer is waiting out the backoff after a failed attempt, so no write can
     * happen soon. Connecting: an attempt is under way and may succeed within the grace. */
    uint32_t up = 0, connecting_writers = 0;
    for (uint32_t i = 0; i < t->nwriters; i++) {
        enum pg_state st = t->writers[i].pg.state;
        up += st == PG_IDLE || st == PG_BUSY;
        connecting_writers += st == PG_CONNECTING;
    }
    bool down = up == 0 && connecting_writers == 0;
    bool connecting = up == 0 && connecting_writers > 0;
    struct batch *batch = t->head;
    while (batch) {
        struct batch *next = batch->next;
        bool due =
            b->drain_expired || failing || down || (connecting && now - batch->sealed_ms >= grace);
        if (due && !spill(t, batch) && !batch->replay && !(batch->writer && batch->writer->writing))
            break; /* the spool is full: the rest waits in memory */
        batch = next;
    }
}

static void on_spill_timer(uv_timer_t *timer)
{
    struct batcher_table *t = timer->data;
    maybe_spill(t);
    bool waiting = false, writable = false;
    for (struct batch *batch = t->head; batch; batch = batch->next)
        if (!batch->replay)
            waiting = true;
    for (uint32_t i = 0; i < t->nwriters; i++)
        writable |= pg_is_idle(&t->writers[i].pg);
    if (!waiting || writable)
        uv_timer_stop(timer);
}

/* Makes room for `rows` more by spilling sealed batches (the filling ones sealed first). */
static void spill_for_room(struct batcher *b, uint64_t rows)
{
    if (!b->spool || !b->spool->ready)
        return;
    /* Room in the queue: spilling more cannot help while the spool's writes are behind. */
    for (int k = 0; k < EVENT_KIND_COUNT && !queue_has_room(b, rows) && spooling_has_room(b); k++) {
        struct batcher_table *t = &b->tables[k];
        seal(t);
        struct batch *batch = t->head;
        while (batch && !queue_has_room(b, rows) && spooling_has_room(b)) {
            struct batch *next = batch->next;
            if (!spill(t, batch) && !batch->replay && !(batch->writer && batch->writer->writing))
                return;
            batch = next;
        }
    }
}

/* A record read back from the spool becomes a batch, written idempotently before the others. */
static void on_record(void *arg, struct spool_record *rec)
{
    struct batcher_table *t = arg;
    struct batcher *b = t->b;
    t->fetching = false;
    if (!rec) {
        batcher_kick(t);
        return;
    }
    struct batch *batch = batch_new(t, rec->nrows ? rec->nrows : 1);
    free(batch->rows.data);
    batch->rows.data = rec->rows;
    batch->rows.len = batch->rows.cap = rec->len;
    rec->rows = NULL;
    size_t off = 0;
    bool ok = true;
    for (uint32_t i = 0; i < rec->nrows && ok; i++) {
        struct copy_field f[32];
        size_t row_len;
        ok = copy_row_fields(batch->rows.data + off, batch->rows.len - off, f, 32, &row_len) ==
             t->table->ncolumns;
        batch->row_off[i] = (uint32_t)off;
        off += row_len;
    }
    if (!ok || off != batch->rows.len) {
        /* The checksum held but the rows do not parse: keep the record, do not loop on it. */
        rec->rows = batch->rows.data;
        batch->rows.data = NULL;
        batch_free(batch);
        spool_discard(b->spool, rec);
        batcher_kick(t);
        return;
    }
    batch->nrows = rec->nrows;
    batch->row_off[batch->nrows] = (uint32_t)off;
    batch->replay = rec;
    t->replays++;
    /* A plain COPY first, like any batch: if some of its rows are already stored (a commit
     * whose outcome was unknown, a replay cut short by a crash), the unique violation switches
     * it to the staging table, which stores each row once. */
    batch->idempotent = false;
    batch->first_row_ms = batch->sealed_ms = uv_now(b->loop);
    batch_push_range(batch, 0, batch->nrows, false);
    batch->next = t->head;
    t->head = batch;
    if (!t->tail)
        t->tail = batch;
    batcher_kick(t);
}

void batcher_spool_changed(struct batcher *b)
{
    resume_senders(b);
    for (int k = 0; k < EVENT_KIND_COUNT; k++)
        batcher_kick(&b->tables[k]);
}

static bool is_data_error(const char *sqlstate)
{
    /* Class 22: data exception; class 23: integrity constraint violation (foreign key, check,
     * not null, and a row that fits no partition). */
    return (sqlstate[0] == '2' && (sqlstate[1] == '2' || sqlstate[1] == '3'));
}

static void append_str(struct buf *b, const char *s)
{
    buf_append(b, s, strlen(s));
}

static uint32_t be32_at(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* One (user, provider) pair of a batch and what it adds to api_configurations. */
struct bump {
    const uint8_t *user_id;
    const uint8_t *provider;
    int32_t provider_len;
    uint32_t count;
    int64_t last_pg_us; /* latest created_at, PostgreSQL epoch */
    uint32_t hash;
};

static uint32_t bump_hash(const uint8_t *user, const uint8_t *provider, int32_t len)
{
    uint32_t h = 2166136261u;
    for (int i = 0; i < 16; i++)
        h = (h ^ user[i]) * 16777619u;
    for (int32_t i = 0; i < len; i++)
        h = (h ^ provider[i]) * 16777619u;
    return h;
}

/* Appends the UPDATE of api_configurations for rows [lo, hi) of a usage batch, counted in C:
 * rows with status 429 (rate limited, including usaged's own denial records) are not calls. */
static void append_usage_bump(struct batcher_writer *w, const struct batch *batch, uint32_t lo,
                              uint32_t hi)
{
    struct batcher_table *t = w->t;
    uint32_t rows = hi - lo, cap = 16;
    while (cap < rows * 2)
        cap *= 2;
    struct bump *table = xcalloc(cap, sizeof(*table));
    uint32_t distinct = 0;
    for (uint32_t r = lo; r < hi; r++) {
        struct copy_field f[16];
        size_t row_len;
        const uint8_t *row = batch->rows.data + batch->row_off[r];
        if (copy_row_fields(row, batch->row_off[r + 1] - batch->row_off[r], f, 16, &row_len) !=
            t->table->ncolumns)
            continue;
        const struct copy_field *status = &f[EVENT_USAGE_COL_STATUS_CODE];
        if (status->len == 4 && be32_at(status->data) == 429)
            continue;
        const uint8_t *user = f[EVENT_USAGE_COL_USER_ID].data;
        const struct copy_field *prov = &f[EVENT_USAGE_COL_PROVIDER];
        const uint8_t *ts = f[EVENT_USAGE_COL_CREATED_AT].data;
        int64_t pg_us = (int64_t)((uint64_t)be32_at(ts) << 32 | be32_at(ts + 4));
        uint32_t h = bump_hash(user, prov->data, prov->len);
        uint32_t i = h & (cap - 1);
        while (table[i].user_id && !(table[i].hash == h && table[i].provider_len == prov->len &&
                                     memcmp(table[i].user_id, user, 16) == 0 &&
                                     memcmp(table[i].provider, prov->data, (size_t)prov->len) == 0))
            i = (i + 1) & (cap - 1);
        if (!table[i].user_id) {
            table[i] = (struct bump){user, prov->data, prov->len, 0, pg_us, h};
            distinct++;
        }
        table[i].count++;
        if (pg_us > table[i].last_pg_us)
            table[i].last_pg_us = pg_us;
    }
    if (distinct > 0) {
        /* Four array literals unnested, rather than a VALUES list: PostgreSQL parses and plans
         * one constant per column instead of thousands of row expressions. Saturating: an
         * overflowing counter must not fail the batch as if its rows were bad. */
        struct buf ids, provs, counts, times;
        buf_init(&ids);
        buf_init(&provs);
        buf_init(&counts);
        buf_init(&times);
        bool first = true;
        for (uint32_t i = 0; i < cap; i++) {
            if (!table[i].user_id)
                continue;
            char id[UUID_STRING_LEN + 1], ts[48], num[16];
            uuid_format(table[i].user_id, id);
            copy_format_timestamp(table[i].last_pg_us, ' ', "+00", ts, sizeof(ts));
            snprintf(num, sizeof(num), "%u", table[i].count);
            const char *sep = first ? "{" : ",";
            append_str(&ids, sep);
            append_str(&ids, id);
            append_str(&counts, sep);
            append_str(&counts, num);
            append_str(&times, sep);
            append_str(&times, "\"");
            append_str(&times, ts);
            append_str(&times, "\"");
            /* An array element in double quotes, with " and \ escaped (any other byte is taken
             * as it is; providers are valid UTF-8 without NUL). */
            append_str(&provs, sep);
            buf_put_u8(&provs, '"');
            for (int32_t k = 0; k < table[i].provider_len; k++) {
                uint8_t ch = table[i].provider[k];
                if (ch == '"' || ch == '\\')
                    buf_put_u8(&provs, '\\');
                buf_put_u8(&provs, ch);
            }
            buf_put_u8(&provs, '"');
            first = false;
        }
        struct buf *arrays[4] = {&ids, &provs, &counts, &times};
        static const char *const casts[4] = {"::uuid[], ", "::text[], ", "::int[], ",
                                             "::timestamptz[]"};
        append_str(&w->sql, ";\nUPDATE public.api_configurations AS c SET usage_count = "
                            "LEAST(c.usage_count::bigint + v.n, 2147483647), "
                            "last_used_at = GREATEST(c.last_used_at, v.t) FROM unnest(");
        for (int a = 0; a < 4; a++) {
            buf_put_u8(arrays[a], '}');
            char *lit = PQescapeLiteral(w->pg.conn, (const char *)arrays[a]->data, arrays[a]->len);
            append_str(&w->sql, lit ? lit : "'{}'");
            append_str(&w->sql, casts[a]);
            PQfreemem(lit);
            buf_free(arrays[a]);
        }
        append_str(&w->sql, ") AS v(user_id, provider, n, t) WHERE c.user_id = v.user_id AND "
                            "c.provider = v.provider");
    }
    free(table);
}

static void build_copy_sql(struct batcher_writer *w, const struct batch *batch,
                           const struct batch_range *r)
{
    struct batcher_table *t = w->t;
    const struct event_table *tab = t->table;
    buf_clear(&w->sql);
    if (!batch->idempotent) {
        append_str(&w->sql, "COPY ");
        append_str(&w->sql, tab->relation);
        append_str(&w->sql, " ");
        append_str(&w->sql, tab->column_list);
        append_str(&w->sql, " FROM STDIN (FORMAT binary)");
        if (t->kind == EVENT_USAGE)
            append_usage_bump(w, batch, r->lo, r->hi);
    } else {
        /* Idempotent: stage the rows, insert what is not there yet, bump for what was
         * inserted. The temporary table lives as long as the connection; ON COMMIT DELETE ROWS
         * empties it with every transaction. */
        char stage[64];
        snprintf(stage, sizeof(stage), "usaged_stage_%s", tab->name);
        append_str(&w->sql, "CREATE TEMP TABLE IF NOT EXISTS ");
        append_str(&w->sql, stage);
        append_str(&w->sql, " (LIKE ");
        append_str(&w->sql, tab->relation);
        append_str(&w->sql, " INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;\nCOPY ");
        append_str(&w->sql, stage);
        append_str(&w->sql, " ");
        append_str(&w->sql, tab->column_list);
        append_str(&w->sql, " FROM STDIN (FORMAT binary);\n");
        if (t->kind == EVENT_USAGE)
            append_str(&w->sql, "WITH ins AS (");
        append_str(&w->sql, "INSERT INTO ");
        append_str(&w->sql, tab->relation);
        append_str(&w->sql, " ");
        append_str(&w->sql, tab->column_list);
        append_str(&w->sql, " SELECT ");
        /* the column list without its parentheses */
        append_str(&w->sql, tab->column_list + 1);
        w->sql.len--; /* drop ')' */
        append_str(&w->sql, " FROM ");
        append_str(&w->sql, stage);
        append_str(&w->sql, " ON CONFLICT DO NOTHING");
        if (t->kind == EVENT_USAGE)
            append_str(&w->sql,
                       " RETURNING user_id, provider, created_at, status_code)\n"
                       "UPDATE public.api_configurations AS c SET usage_count = "
                       "LEAST(c.usage_count::bigint + v.n, 2147483647), last_used_at = "
                       "GREATEST(c.last_used_at, v.t) FROM (SELECT user_id, "
                       "provider, count(*)::int AS n, max(created_at) AS t FROM ins WHERE "
                       "status_code IS DISTINCT FROM 429 GROUP BY user_id, provider) AS v WHERE "
                       "c.user_id = v.user_id AND c.provider = v.provider");
    }
    buf_put_u8(&w->sql, '\0');
}

static void on_write_done(struct pg_conn *pg, const struct pg_outcome *o, void *arg);

static void on_retry_timer(uv_timer_t *timer)
{
    struct batcher_writer *w = timer->data;
    batcher_kick(w->t);
}

/* The writer's attempt failed for a reason other than the rows: it backs off, and lets go of
 * its batch, which another writer (whose connection may be fine) can take meanwhile. */
static void schedule_retry(struct batcher_writer *w, const char *why)
{
    struct batcher_table *t = w->t;
    struct batch *batch = w->current;
    uint64_t now = uv_now(t->b->loop);
    if (!t->failing_since)
        t->failing_since = now;
    t->stats.retries++;
    if (strcmp(t->last_error, why) != 0 || w->retry_ms >= 1000)
        log_warn("ingest %s: batch of %u rows not written, retrying in %u ms: %s", t->table->name,
                 batch->nrows, w->retry_ms, why);
    snprintf(t->last_error, sizeof(t->last_error), "%s", why);
    batch->writer = NULL;
    w->current = NULL;
    uv_timer_start(&w->retry_timer, on_retry_timer, w->retry_ms, 0);
    w->retry_ms = w->retry_ms * 2 > 5000 ? 5000 : w->retry_ms * 2;
    batcher_kick(t); /* another writer may take the batch, or it spills */
}

/* Sends the writer's op (set up in w->op): the one statement in flight on its connection. */
static void writer_submit(struct batcher_writer *w, bool rejecting)
{
    w->rejecting = rejecting;
    w->writing = true;
    pg_submit(&w->pg, &w->op);
}

/* JSON of rejected rows per statement, at most (past one row): far below jsonb's 256 MB. */
#define REJECT_JSON_MAX (4u << 20)

/* Stores the top range's rows, all refused, in usaged.rejects with the error that refused them:
 * in one statement, or in several when their JSON is large (the rest becomes a range of its
 * own, under this one). A row already there (a batch written again after a lost commit, or
 * replayed from the spool) is not stored twice. */
static void reject_rows(struct batcher_writer *w)
{
    struct batcher_table *t = w->t;
    struct batch *batch = w->current;
    struct batch_range *r = &batch->ranges[batch->nranges - 1];
    uint32_t lo = r->lo, hi = r->hi, i;
    buf_clear(&w->json);
    buf_put_u8(&w->json, '[');
    for (i = lo; i < hi && (i == lo || w->json.len < REJECT_JSON_MAX); i++) {
        if (i > lo)
            buf_put_u8(&w->json, ',');
        copy_row_to_json(t->table->columns, t->table->ncolumns,
                         batch->rows.data + batch->row_off[i],
                         batch->row_off[i + 1] - batch->row_off[i], &w->json);
    }
    if (i < hi) {
        batch->nranges--;
        batch_push_range(batch, i, hi, true);
        batch_push_range(batch, lo, i, true);
    }
    buf_put_u8(&w->json, ']');
    buf_put_u8(&w->json, '\0');
    w->params[0] = t->table->name;
    w->params[1] = (const char *)w->json.data;
    w->params[2] = batch->reject_error ? batch->reject_error : "";
    w->params[3] = batch->reject_sqlstate;
    w->op = (struct pg_op){
        .sql = "INSERT INTO usaged.rejects (table_name, row_data, error, sqlstate) "
               "SELECT $1, r, $3, $4 FROM jsonb_array_elements($2::jsonb) AS r "
               "WHERE NOT EXISTS (SELECT 1 FROM usaged.rejects AS x "
               "WHERE x.table_name = $1 AND x.row_data->>'id' = r->>'id')",
        .nparams = 4,
        .params = w->params,
        .done = on_write_done,
        .arg = w,
    };
    writer_submit(w, true);
}

/* The user id of row i (column 1 of both tables, after the id); false when the row has none. */
static bool row_user_id(const struct batch *batch, uint32_t i, uint8_t id[16])
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

static void on_users_checked(struct pg_conn *pg, const struct pg_outcome *o, void *arg);

/* A range was refused for a row of a user that does not exist (23503: the tables' one foreign
 * key). Rather than splitting it in halves until each such row stands alone (2n statements for
 * n of them), ask which of its users are unknown (one statement), set their rows aside and
 * write the rest in one COPY. */
static void check_users(struct batcher_writer *w)
{
    struct batch *batch = w->current;
    const struct batch_range *r = &batch->ranges[batch->nranges - 1];
    buf_clear(&w->json);
    buf_put_u8(&w->json, '{');
    for (uint32_t i = r->lo; i < r->hi; i++) {
        uint8_t id[16];
        char text[UUID_STRING_LEN + 1];
        if (!row_user_id(batch, i, id))
            continue;
        uuid_format(id, text);
        if (w->json.len > 1)
            buf_put_u8(&w->json, ',');
        buf_append(&w->json, text, UUID_STRING_LEN);
    }
    buf_put_u8(&w->json, '}');
    buf_put_u8(&w->json, '\0');
    w->params[0] = (const char *)w->json.data;
    w->op = (struct pg_op){
        .sql = "SELECT public.usaged_unknown_users($1::uuid[])",
        .nparams = 1,
        .params = w->params,
        .done = on_users_checked,
        .arg = w,
    };
    writer_submit(w, false);
}

/* Goes on with the writer's batch: its next range, unless drain_timeout_s has passed, when the
 * batch is let go to be spilled (on_drain_timer cancels the statements then running; one begun
 * after it would not be cancelled, and could hold the exit). */
static void continue_batch(struct batcher_writer *w)
{
    struct batcher_table *t = w->t;
    if (!t->b->drain_expired) {
        write_range(w);
        return;
    }
    w->current->writer = NULL;
    w->current = NULL;
    batcher_kick(t);
}

/* Splits the top range in halves: the data error is in one of them. */
static void split_range(struct batcher_writer *w)
{
    struct batch *batch = w->current;
    struct batch_range *r = &batch->ranges[batch->nranges - 1];
    /* The first half is written first (it ends up on top of the stack). */
    uint32_t lo = r->lo, hi = r->hi, mid = lo + (hi - lo) / 2;
    batch->nranges--;
    batch_push_range(batch, mid, hi, false);
    batch_push_range(batch, lo, mid, false);
    continue_batch(w);
}

static int compare_ids(const void *a, const void *b)
{
    return memcmp(a, b, 16);
}

static void on_users_checked(struct pg_conn *pg, const struct pg_outcome *o, void *arg)
{
    (void)pg;
    struct batcher_writer *w = arg;
    struct batcher_table *t = w->t;
    w->writing = false;
    if (t->b->closing)
        return;
    if (o->connection_lost) {
        schedule_retry(w, o->error ? o->error : "connection lost");
        return;
    }
    struct batch *batch = w->current;
    struct batch_range *r = &batch->ranges[batch->nranges - 1];
    int n = o->ok && o->result ? PQntuples(o->result) : 0;
    uint8_t(*unknown)[16] = xcalloc(n > 0 ? (size_t)n : 1, 16);
    size_t nunknown = 0;
    for (int i = 0; i < n; i++)
        if (uuid_parse(PQgetvalue(o->result, i, 0), (size_t)PQgetlength(o->result, i, 0),
                       unknown[nunknown]))
            nunknown++;
    if (nunknown == 0) {
        /* Every user exists (one was deleted and created again?), or the question failed:
         * find the bad row by halves, as for any other data error. */
        if (!o->ok && log_limiter_allow(&t->reject_log, uv_now(t->b->loop)))
            log_warn("ingest %s: cannot ask which users are unknown (%s); splitting the batch "
                     "instead",
                     t->table->name, o->error ? o->error : "error");
        free(unknown);
        split_range(w);
        return;
    }
    qsort(unknown, nunknown, 16, compare_ids);
    /* Reorder the range's rows, known users first (their order does not matter: acks are per
     * batch), and give each part a range of its own. */
    uint32_t lo = r->lo, hi = r->hi;
    size_t start = batch->row_off[lo], bytes = batch->row_off[hi] - start;
    uint8_t *sorted = xmalloc(bytes);
    uint32_t *offs = xmalloc((hi - lo) * sizeof(*offs));
    size_t at = 0;
    uint32_t k = 0, ngood = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = lo; i < hi; i++) {
            uint8_t id[16];
            bool bad = row_user_id(batch, i, id) && bsearch(id, unknown, nunknown, 16, compare_ids);
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
    free(unknown);
    /* The error's detail names the one row PostgreSQL stopped at; each set-aside row gets the
     * error without it, and says why it is set aside. */
    char *detail = batch->reject_error ? strstr(batch->reject_error, "DETAIL:") : NULL;
    if (detail) {
        while (detail > batch->reject_error && (detail[-1] == ' ' || detail[-1] == '\n'))
            detail--;
        *detail = '\0';
    }
    size_t elen = strlen(batch->reject_error ? batch->reject_error : "") + 64;
    char *error = xmalloc(elen);
    snprintf(error, elen, "%s (user_id not in auth.users)",
             batch->reject_error ? batch->reject_error : "");
    free(batch->reject_error);
    batch->reject_error = error;
    batch->nranges--;
    /* The rejects go first, while batch->reject_error is still the error that refused them. */
    if (ngood > 0)
        batch_push_range(batch, lo, lo + ngood, false);
    batch_push_range(batch, lo + ngood, hi, true);
    continue_batch(w);
}

/* Writes the top range of the writer's batch. */
static void write_range(struct batcher_writer *w)
{
    struct batcher_table *t = w->t;
    struct batch *batch = w->current;
    const struct batch_range *r = &batch->ranges[batch->nranges - 1];
    if (r->reject) {
        reject_rows(w);
        return;
    }
    build_copy_sql(w, batch, r);
    w->copy_bufs[0] = uv_buf_init((char *)copy_header, COPY_HEADER_LEN);
    w->copy_bufs[1] = uv_buf_init((char *)batch->rows.data + batch->row_off[r->lo],
                                  batch->row_off[r->hi] - batch->row_off[r->lo]);
    w->copy_bufs[2] = uv_buf_init((char *)copy_trailer, COPY_TRAILER_LEN);
    w->op = (struct pg_op){
        .sql = (const char *)w->sql.data,
        .copy_bufs = w->copy_bufs,
        .copy_nbufs = 3,
        .done = on_write_done,
        .arg = w,
    };
    t->stats.statements++;
    if (batch->idempotent)
        t->stats.idempotent_writes++;
    w->op_started_us = uv_hrtime() / 1000;
    writer_submit(w, false);
}

static void on_write_done(struct pg_conn *pg, const struct pg_outcome *o, void *arg)
{
    (void)pg;
    struct batcher_writer *w = arg;
    struct batcher_table *t = w->t;
    w->writing = false;
    if (t->b->closing)
        return; /* the connection is being closed; the batch is dealt with by batcher_close */
    struct batch *batch = w->current;
    struct batch_range *r = &batch->ranges[batch->nranges - 1];
    if (!w->rejecting)
        t->stats.copy_us += uv_hrtime() / 1000 - w->op_started_us;

    if (o->connection_lost) {
        /* It may or may not have committed: from now on this batch is written idempotently. */
        batch->idempotent = true;
        schedule_retry(w, o->error ? o->error : "connection lost");
        return;
    }
    if (!o->ok) {
        if (w->rejecting || !is_data_error(o->sqlstate)) {
            char why[600];
            snprintf(why, sizeof(why), "%s%s%s", o->sqlstate, *o->sqlstate ? ": " : "",
                     o->error ? o->error : "error");
            schedule_retry(w, why);
            return;
        }
        if (strcmp(o->sqlstate, "23505") == 0 && !batch->idempotent) {
            /* A repeated id: the rows go through the staging table, stored once. */
            batch->idempotent = true;
            continue_batch(w);
            return;
        }
        /* Kept on the batch: another writer may store its rejects after a retry. */
        free(batch->reject_error);
        batch->reject_error = xstrdup(o->error ? o->error : "");
        snprintf(batch->reject_sqlstate, sizeof(batch->reject_sqlstate), "%s", o->sqlstate);
        if (r->hi - r->lo == 1) {
            reject_rows(w);
            return;
        }
        if (strcmp(o->sqlstate, "23503") == 0) {
            check_users(w);
            return;
        }
        split_range(w);
        return;
    }

    /* Success. */
    uint32_t rows = r->hi - r->lo;
    if (w->rejecting) {
        t->stats.rows_rejected += rows;
        if (log_limiter_allow(&t->reject_log, uv_now(t->b->loop)))
            log_warn("ingest %s: %u row%s refused (%s: %s) and stored in usaged.rejects",
                     t->table->name, rows, rows == 1 ? " was" : "s were", batch->reject_sqlstate,
                     batch->reject_error ? batch->reject_error : "");
    } else {
        t->stats.rows_written += rows;
    }
    w->retry_ms = RETRY_START_MS;
    t->failing_since = 0;
    t->last_error[0] = '\0';
    batch->nranges--;
    if (batch->nranges > 0) {
        continue_batch(w);
        return;
    }
    uint64_t elapsed = uv_now(t->b->loop) - batch->first_row_ms;
    if (elapsed > 0) {
        double rate = (double)batch->nrows / (double)elapsed;
        t->b->rows_per_ms = t->b->rows_per_ms > 0 ? 0.8 * t->b->rows_per_ms + 0.2 * rate : rate;
    }
    finish_batch(w);
    batcher_kick(t);
}

/* The first sealed batch no writer has taken. */
static struct batch *free_batch(struct batcher_table *t)
{
    /* While draining, records read back from the spool wait: the rows accepted in memory go
     * first, and the records stay in the spool for the next start. */
    for (struct batch *batch = t->head; batch; batch = batch->next)
        if (!batch->writer && !(batch->replay && t->b->draining))
            return batch;
    return NULL;
}

/* Gives an idle writer work: a batch from memory, or a record read back from the spool (they
 * take turns, so that neither starves the other). */
static void writer_kick(struct batcher_writer *w)
{
    struct batcher_table *t = w->t;
    struct batcher *b = t->b;
    if (w->writing || w->current || !pg_is_idle(&w->pg) ||
        uv_is_active((uv_handle_t *)&w->retry_timer))
        return;
    struct batch *batch = free_batch(t);
    /* Each writer may hold a record: the replay of a spilled burst keeps every writer busy. */
    bool spooled = b->spool && !b->draining && !t->fetching && t->replays < t->nwriters &&
                   spool_has_records(b->spool, t->kind);
    if (spooled && (!batch || t->replay_turn)) {
        t->fetching = true;
        t->replay_turn = false;
        spool_next(b->spool, t->kind, on_record, t); /* on_record kicks the writers again */
        batch = free_batch(t);
        if (!batch)
            return;
    }
    if (!batch)
        return;
    t->replay_turn = true;
    batch->writer = w;
    w->current = batch;
    write_range(w);
}

static void batcher_kick(struct batcher_table *t)
{
    struct batcher *b = t->b;
    if (b->closing)
        return;
    bool writable = false;
    for (uint32_t i = 0; i < t->nwriters; i++)
        writable |= pg_is_idle(&t->writers[i].pg);
    if (t->head && (!writable || t->failing_since || b->drain_expired)) {
        maybe_spill(t);
        if (t->head && !uv_is_active((uv_handle_t *)&t->spill_timer))
            uv_timer_start(&t->spill_timer, on_spill_timer, 100, 100);
    }
    for (uint32_t i = 0; i < t->nwriters; i++)
        writer_kick(&t->writers[i]);
}

/* ---- drain and close ---- */

static void on_drain_timer(uv_timer_t *timer)
{
    struct batcher *b = timer->data;
    b->drain_expired = true;
    log_warn("ingest: drain_timeout_s passed; spooling what is not written yet");
    for (int k = 0; k < EVENT_KIND_COUNT; k++) {
        /* A COPY stuck on a lock would hold the exit forever: cancel it, and the batch, failed,
         * goes to the spool like the rest (its replay is idempotent). */
        for (uint32_t i = 0; i < b->tables[k].nwriters; i++)
            if (b->tables[k].writers[i].writing)
                pg_cancel(&b->tables[k].writers[i].pg);
        batcher_kick(&b->tables[k]);
    }
    check_drained(b);
}

void batcher_drain(struct batcher *b, void (*on_drained)(struct batcher *b, void *arg), void *arg)
{
    b->draining = true;
    b->on_drained = on_drained;
    b->drained_arg = arg;
    for (int k = 0; k < EVENT_KIND_COUNT; k++)
        seal(&b->tables[k]);
    if (b->on_drained)
        uv_timer_start(&b->drain_timer, on_drain_timer, (uint64_t)b->drain_timeout_s * 1000, 0);
    check_drained(b);
}

static void part_closed(struct batcher *b)
{
    if (--b->closing == 0 && b->on_closed)
        b->on_closed(b, b->closed_arg);
}

static void on_handle_closed(uv_handle_t *h)
{
    part_closed(h->data);
}

static void on_pg_closed(struct pg_conn *pg)
{
    struct batcher_writer *w =
        (struct batcher_writer *)((char *)pg - offsetof(struct batcher_writer, pg));
    part_closed(w->t->b);
}

void batcher_close(struct batcher *b, void (*on_closed)(struct batcher *b, void *arg), void *arg)
{
    b->on_closed = on_closed;
    b->closed_arg = arg;
    /* Every handle and connection is counted before the first close: a callback may run
     * before the last close is started. */
    b->closing = 1;
    for (int k = 0; k < EVENT_KIND_COUNT; k++)
        b->closing += 2 + 2 * (int)b->tables[k].nwriters;
    b->drain_timer.data = b;
    uv_close((uv_handle_t *)&b->drain_timer, on_handle_closed);
    for (int k = 0; k < EVENT_KIND_COUNT; k++) {
        struct batcher_table *t = &b->tables[k];
        t->flush_timer.data = b;
        t->spill_timer.data = b;
        uv_close((uv_handle_t *)&t->flush_timer, on_handle_closed);
        uv_close((uv_handle_t *)&t->spill_timer, on_handle_closed);
        for (uint32_t i = 0; i < t->nwriters; i++) {
            struct batcher_writer *w = &t->writers[i];
            w->retry_timer.data = b;
            uv_close((uv_handle_t *)&w->retry_timer, on_handle_closed);
            pg_close(&w->pg, on_pg_closed);
            buf_free(&w->sql);
            buf_free(&w->json);
        }
        /* Whatever is left was not drained (the caller gave up): say so. */
        uint64_t left = t->queued_rows;
        if (left)
            log_error("ingest %s: %llu rows not written at exit", t->table->name,
                      (unsigned long long)left);
        if (t->filling)
            batch_free(t->filling);
        t->filling = NULL;
        while (t->head) {
            struct batch *next = t->head->next;
            if (t->head->replay) { /* not committed: it stays in the spool for the next start */
                t->replays--;
                spool_release(b->spool, t->head->replay, false);
            }
            for (uint32_t i = 0; i < t->head->nacks; i++) {
                conn_unref(t->head->acks[i]->conn);
                free(t->head->acks[i]);
            }
            batch_free(t->head);
            t->head = next;
        }
        t->tail = NULL;
    }
    for (uint32_t i = 0; i < b->npaused; i++)
        conn_unref(b->paused[i]);
    free(b->paused);
    b->paused = NULL;
    b->npaused = 0;
}

/* ---- stats ---- */

void batcher_pack_stats(const struct batcher *b, msgpack_packer *pk)
{
    msgpack_pack_map(pk, 9);
    rpc_pack_u64(pk, "events_received", b->stats.events_received);
    rpc_pack_u64(pk, "events_accepted", b->stats.events_accepted);
    rpc_pack_str(pk, "events_rejected");
    msgpack_pack_map(pk, RPC_CODE_COUNT);
    for (int i = 0; i < RPC_CODE_COUNT; i++)
        rpc_pack_u64(pk, rpc_code_name((enum rpc_code)i), b->stats.events_rejected[i]);
    rpc_pack_u64(pk, "queue_rows", b->queued_rows);
    rpc_pack_u64(pk, "queue_bytes", b->queued_bytes);
    rpc_pack_u64(pk, "spooling_bytes", b->spooling_bytes);
    rpc_pack_u64(pk, "requests_overloaded", b->stats.requests_overloaded);
    rpc_pack_u64(pk, "notification_senders_paused", b->stats.notifications_paused);
    rpc_pack_str(pk, "tables");
    msgpack_pack_map(pk, EVENT_KIND_COUNT);
    for (int k = 0; k < EVENT_KIND_COUNT; k++) {
        const struct batcher_table *t = &b->tables[k];
        rpc_pack_str(pk, t->table->name);
        msgpack_pack_map(pk, 16);
        rpc_pack_u64(pk, "queue_rows", t->queued_rows);
        rpc_pack_u64(pk, "rows_queued", t->stats.rows_queued);
        rpc_pack_u64(pk, "rows_written", t->stats.rows_written);
        rpc_pack_u64(pk, "rows_rejected", t->stats.rows_rejected);
        rpc_pack_u64(pk, "rows_spooled", t->stats.rows_spooled);
        rpc_pack_u64(pk, "batches", t->stats.batches);
        rpc_pack_u64(pk, "statements", t->stats.statements);
        rpc_pack_u64(pk, "idempotent_writes", t->stats.idempotent_writes);
        rpc_pack_u64(pk, "retries", t->stats.retries);
        rpc_pack_u64(pk, "copy_ms", t->stats.copy_us / 1000);
        uint64_t up = 0, connects = 0;
        for (uint32_t i = 0; i < t->nwriters; i++) {
            enum pg_state st = t->writers[i].pg.state;
            up += st == PG_IDLE || st == PG_BUSY;
            connects += t->writers[i].pg.stats.connects;
        }
        rpc_pack_u64(pk, "rows_replayed", t->stats.rows_replayed);
        rpc_pack_u64(pk, "writers", t->nwriters);
        rpc_pack_u64(pk, "writers_up", up);
        rpc_pack_str(pk, "postgres");
        rpc_pack_str(pk, up == t->nwriters ? "up" : up ? "partly up" : "down");
        rpc_pack_str(pk, "last_error");
        rpc_pack_str(pk, t->last_error);
        rpc_pack_u64(pk, "postgres_connects", connects);
    }
}
