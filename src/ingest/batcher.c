/* batcher: see batcher.h.
 *
 * A batch's life: filling (rows appended by requests) -> sealed (in its table's list) -> written
 * by a writer (writer.c) -> done (durable acks answered, memory freed); or, while the writers
 * cannot write it, spilled to the spool (fsync'd: durable acks answered) and later read back and
 * written like any other batch. Each table has its own connections, so the two tables' batches
 * are written in parallel. */
#include "batcher.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "copy.h"
#include "log.h"
#include "uuid.h"
#include "xalloc.h"

static void spill_for_room(struct batcher *b, uint64_t rows);
static void lose_batch(struct batcher_table *t, struct batch *batch, bool queued);
static void maybe_spill(struct batcher_table *t);
static void on_spill_timer(uv_timer_t *timer);
static void check_drained(struct batcher *b);

/* ---- setup ---- */

void batcher_writer_changed(struct batcher_table *t)
{
    batcher_kick(t);
    if (t->b->on_state)
        t->b->on_state(t->b->state_arg);
}

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
    uuid_v7_init(&b->ids, (uint64_t)clock_wall_ms() ^ (clock_mono_us() << 17));
    for (int k = 0; k < EVENT_KIND_COUNT; k++) {
        struct batcher_table *t = &b->tables[k];
        t->b = b;
        t->kind = (enum event_kind)k;
        t->table = event_table(t->kind);
        t->reject_log.period_ms = 10000;
        t->reject_log.burst = 10;
        t->nwriters = config->ingest.connections;
        for (uint32_t i = 0; i < t->nwriters; i++)
            writer_init(&t->writers[i], t, loop, config, i);
        uv_timer_init(loop, &t->flush_timer);
        t->flush_timer.data = t;
        uv_timer_init(loop, &t->spill_timer);
        t->spill_timer.data = t;
    }
    uv_timer_init(loop, &b->drain_timer);
    b->drain_timer.data = b;
    uv_idle_init(loop, &b->room_idle);
    b->room_idle.data = b;
}

void batcher_start(struct batcher *b)
{
    for (int k = 0; k < EVENT_KIND_COUNT; k++)
        for (uint32_t i = 0; i < b->tables[k].nwriters; i++)
            writer_start(&b->tables[k].writers[i]);
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

static void on_room_idle(uv_idle_t *idle)
{
    struct batcher *b = idle->data;
    uv_idle_stop(idle);
    b->waiters = false;
    if (b->on_room)
        b->on_room(b->room_arg);
}

/* Room freed: requests told to wait may try again, when a batch's worth fits (not at the first
 * free row, or they would wait again at once). They are told from a loop callback of their own:
 * their retry runs batcher_submit, which must not run inside the work that freed the room. */
static void room_freed(struct batcher *b)
{
    if (!b->waiters || !spooling_has_room(b) ||
        !(b->queued_rows == 0 || (b->queued_rows + b->batch_rows <= b->queue_rows &&
                                  b->queued_bytes + b->batch_bytes / 4 <= b->queue_bytes)))
        return;
    if (!b->closing)
        uv_idle_start(&b->room_idle, on_room_idle);
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

/* A filling batch left empty (a refused request was all it had) is dropped, not kept. */
static void drop_if_empty(struct batcher_table *t, struct batch *batch)
{
    if (batch->nrows > 0)
        return;
    uv_timer_stop(&t->flush_timer);
    t->filling = NULL;
    batch_free(batch);
}

/* The filling batch took rows: seal it when full. */
static void after_append(struct batcher_table *t, struct batch *batch)
{
    if (batch->nrows >= t->b->batch_rows || batch->rows.len >= t->b->batch_bytes)
        seal(t);
    else
        drop_if_empty(t, batch);
}

static enum batcher_result refuse(struct batcher *b, const struct rpc_error *err, uint64_t events)
{
    b->stats.events_rejected[err->code] += events;
    return BATCHER_REFUSED;
}

/* Some writer of the table has not finished its first connect attempt: too early to judge. */
static bool table_starting(const struct batcher_table *t)
{
    for (uint32_t i = 0; i < t->nwriters; i++)
        if (t->writers[i].pg.stats.connects + t->writers[i].pg.stats.connect_failures == 0)
            return true;
    return false;
}

/* A durable ack waits until its rows are kept. One that can be kept neither in PostgreSQL (no
 * writer up, or failing) nor in the spool (full, its disk full, failing) would wait without
 * bound: it is refused at once, and nothing of it is kept. */
static bool durable_refused(struct batcher *b, const struct batcher_table *t, struct rpc_error *err)
{
    if ((batcher_table_writers_up(t) > 0 && !t->failing_since) || table_starting(t))
        return false;
    if (b->spool && spool_can_keep(b->spool))
        return false;
    bool broken = !b->spool || b->spool->error[0] || b->spool->write_failing;
    rpc_error_set(err, broken ? RPC_UNAVAILABLE : RPC_OVERLOADED,
                  "PostgreSQL cannot take rows now and the spool is %s: a durable request cannot "
                  "be kept; nothing of it was",
                  !b->spool ? "not there"
                  : broken  ? "failing"
                            : "full");
    err->retry_after_ms = 1000;
    return true;
}

/* A request refused for want of room is judged all the same: one that could never be accepted
 * gets its invalid_field, not overloaded or unavailable (which say: send it again). Each event
 * is encoded into a scratch row, one at a time, so judging takes no room. */
static bool events_valid(struct batcher *b, const struct batcher_request *req,
                         struct rpc_error *err)
{
    struct buf row;
    buf_init(&row);
    struct event_context ctx = {.now_ms = clock_wall_ms(), .ids = &b->ids};
    bool ok = true;
    for (uint32_t i = 0; ok && i < req->events->size; i++) {
        buf_clear(&row);
        if (!event_encode(req->kind, &req->events->ptr[i], &ctx, &row, err)) {
            err->index = i;
            ok = false;
        }
    }
    buf_free(&row);
    return ok;
}

enum batcher_result batcher_submit(struct batcher *b, const struct batcher_request *req,
                                   struct rpc_error *err)
{
    uint32_t n = req->events->size;
    if (!has_room(b, n))
        spill_for_room(b, n);
    if (!has_room(b, n) && req->can_wait) {
        b->waiters = true;
        b->stats.notifications_paused++;
        return BATCHER_WAIT; /* sent again once there is room: received then */
    }
    b->stats.events_received += n;
    struct batcher_table *t = &b->tables[req->kind];
    if (!has_room(b, n)) {
        if (!events_valid(b, req, err))
            return refuse(b, err, n);
        b->stats.requests_overloaded++;
        rpc_error_set(err, RPC_OVERLOADED,
                      "the ingest queue is full (%u rows); nothing of this request was kept",
                      b->queue_rows);
        err->retry_after_ms = retry_after_ms(b, n);
        return refuse(b, err, n);
    }
    if (req->ack && durable_refused(b, t, err)) {
        if (!events_valid(b, req, err))
            return refuse(b, err, n);
        b->stats.requests_overloaded += err->code == RPC_OVERLOADED;
        return refuse(b, err, n);
    }

    struct batch *batch = filling_batch(t);
    size_t saved_len = batch->rows.len;
    uint32_t saved_rows = batch->nrows;
    struct event_context ctx = {.now_ms = clock_wall_ms(), .ids = &b->ids};
    for (uint32_t i = 0; i < n; i++) {
        batch_reserve_row(batch);
        if (!event_encode(req->kind, &req->events->ptr[i], &ctx, &batch->rows, err)) {
            batch_truncate(batch, saved_rows, saved_len);
            err->index = i;
            drop_if_empty(t, batch);
            return refuse(b, err, n);
        }
        batch_end_row(batch);
    }
    b->stats.events_accepted += n;
    t->stats.rows_queued += n;
    t->queued_rows += n;
    b->queued_rows += n;
    b->queued_bytes += batch->rows.len - saved_len;
    if (req->ack && n > 0)
        batch_add_ack(batch, req->ack);
    after_append(t, batch);
    return BATCHER_ACCEPTED;
}

void batcher_log_denied(struct batcher *b, const uint8_t user_id[16], const char *provider,
                        size_t provider_len, const char *reason, int64_t now_ms)
{
    if (b->draining || !has_room(b, 1)) {
        b->stats.denied_rows_dropped++;
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
    after_append(t, batch);
}

/* ---- written ---- */

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
    if (b->stats.rows_lost)
        log_error("ingest: %llu accepted rows could be kept neither in PostgreSQL nor in the "
                  "spool (%s) and are lost",
                  (unsigned long long)b->stats.rows_lost,
                  !b->spool                 ? "none"
                  : b->spool->error[0]      ? b->spool->error
                  : b->spool->write_failing ? b->spool->write_error
                                            : "its disk is full");
    void (*cb)(struct batcher *, void *) = b->on_drained;
    b->on_drained = NULL;
    cb(b, b->drained_arg);
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

void batcher_batch_written(struct batcher_table *t, struct batch *batch)
{
    struct batcher *b = t->b;
    uint64_t elapsed = uv_now(b->loop) - batch->first_row_ms;
    if (elapsed > 0) {
        double rate = (double)batch->nrows / (double)elapsed;
        b->rows_per_ms = b->rows_per_ms > 0 ? 0.8 * b->rows_per_ms + 0.2 * rate : rate;
    }
    unlink_batch(t, batch);
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
    batch_answer_acks(batch, NULL);
    batch_free(batch);
    room_freed(b);
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
    if (status < 0 && b->drain_expired) {
        /* At the stop, past max_bytes: the disk itself cannot take them. */
        lose_batch(t, batch, false);
        return;
    }
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
    batch_answer_acks(batch, NULL);
    batch_free(batch);
    room_freed(b);
    check_drained(b);
}

/* At the stop, a batch neither PostgreSQL nor the disk could take (queued: still counted in the
 * queue). Its durable requests are told it was not kept; the stop ends with an error. */
static void lose_batch(struct batcher_table *t, struct batch *batch, bool queued)
{
    struct batcher *b = t->b;
    if (queued) {
        t->queued_rows -= batch->nrows;
        b->queued_rows -= batch->nrows;
        b->queued_bytes -= batch->rows.len;
    }
    b->stats.rows_lost += batch->nrows;
    struct rpc_error err;
    rpc_error_set(&err, RPC_UNAVAILABLE,
                  "the daemon stopped and could keep this neither in PostgreSQL nor on disk");
    batch_answer_acks(batch, &err);
    batch_free(batch);
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

/* A batch the spool could not take and that stays in memory for another reason than being
 * written or replayed: the spool is full, and the batches after it wait too. */
static bool spool_refused(struct batcher_table *t, struct batch *batch)
{
    return !spill(t, batch) && !batch->replay && !(batch->writer && batch->writer->writing);
}

/* Spills what cannot be written now (batch_spill_due). */
static void maybe_spill(struct batcher_table *t)
{
    struct batcher *b = t->b;
    if (b->drain_expired && (!b->spool || b->spool->error[0])) {
        /* The stop, and no spool to keep what is left: nothing else can be done with it. */
        for (struct batch *batch = t->head, *next; batch; batch = next) {
            next = batch->next;
            if (!batch->replay && !(batch->writer && batch->writer->writing)) {
                unlink_batch(t, batch);
                lose_batch(t, batch, true);
            }
        }
        return;
    }
    if (!b->spool || !b->spool->ready)
        return;
    struct batch_spill_state st = {
        .now_ms = uv_now(b->loop),
        .spill_after_ms = b->spill_after_ms,
        .failing_since = t->failing_since,
        .drain_expired = b->drain_expired,
    };
    for (uint32_t i = 0; i < t->nwriters; i++) {
        st.writers_up += writer_up(&t->writers[i]);
        st.writers_connecting += t->writers[i].pg.state == PG_CONNECTING;
    }
    struct batch *batch = t->head;
    while (batch) {
        struct batch *next = batch->next;
        if (batch_spill_due(&st, batch->sealed_ms) && spool_refused(t, batch))
            break; /* the spool is full: the rest waits in memory */
        batch = next;
    }
}

static bool any_writer_idle(const struct batcher_table *t)
{
    for (uint32_t i = 0; i < t->nwriters; i++)
        if (pg_is_idle(&t->writers[i].pg))
            return true;
    return false;
}

static void on_spill_timer(uv_timer_t *timer)
{
    struct batcher_table *t = timer->data;
    maybe_spill(t);
    bool waiting = false;
    for (struct batch *batch = t->head; batch; batch = batch->next)
        if (!batch->replay)
            waiting = true;
    if (!waiting || any_writer_idle(t))
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
            if (spool_refused(t, batch))
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
    room_freed(b);
    for (int k = 0; k < EVENT_KIND_COUNT; k++)
        batcher_kick(&b->tables[k]);
}

/* ---- handing batches to the writers ---- */

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

struct batch *batcher_next_batch(struct batcher_table *t)
{
    struct batcher *b = t->b;
    struct batch *batch = free_batch(t);
    /* Each writer may hold a record: the replay of a spilled burst keeps every writer busy. */
    bool spooled = b->spool && !b->draining && !t->fetching && t->replays < t->nwriters &&
                   spool_has_records(b->spool, t->kind);
    if (spooled && (!batch || t->replay_turn)) {
        t->fetching = true;
        t->replay_turn = false;
        spool_next(b->spool, t->kind, on_record, t); /* on_record kicks the writers again */
        batch = free_batch(t);
    }
    if (batch)
        t->replay_turn = true;
    return batch;
}

void batcher_kick(struct batcher_table *t)
{
    struct batcher *b = t->b;
    if (b->closing)
        return;
    if (t->head && (!any_writer_idle(t) || t->failing_since || b->drain_expired)) {
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
    /* spool.max_bytes is backpressure for a running daemon, not a reason to lose what was
     * accepted: at the stop only a disk that is really full refuses. */
    if (b->spool)
        spool_lift_cap(b->spool);
    for (int k = 0; k < EVENT_KIND_COUNT; k++) {
        /* A COPY stuck on a lock would hold the exit forever: cancel it, and the batch, failed,
         * goes to the spool like the rest (its replay is idempotent). */
        for (uint32_t i = 0; i < b->tables[k].nwriters; i++)
            writer_cancel(&b->tables[k].writers[i]);
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

void batcher_part_closed(struct batcher *b)
{
    if (--b->closing == 0 && b->on_closed)
        b->on_closed(b, b->closed_arg);
}

static void on_handle_closed(uv_handle_t *h)
{
    batcher_part_closed(h->data);
}

void batcher_close(struct batcher *b, void (*on_closed)(struct batcher *b, void *arg), void *arg)
{
    b->on_closed = on_closed;
    b->closed_arg = arg;
    /* Every handle and connection is counted before the first close: a callback may run
     * before the last close is started. */
    b->closing = 2; /* drain_timer, room_idle */
    for (int k = 0; k < EVENT_KIND_COUNT; k++)
        b->closing += 2 + 2 * (int)b->tables[k].nwriters;
    b->drain_timer.data = b;
    uv_close((uv_handle_t *)&b->drain_timer, on_handle_closed);
    uv_close((uv_handle_t *)&b->room_idle, on_handle_closed);
    struct rpc_error closing;
    rpc_error_set(&closing, RPC_SHUTTING_DOWN, "the daemon stopped before this was kept");
    for (int k = 0; k < EVENT_KIND_COUNT; k++) {
        struct batcher_table *t = &b->tables[k];
        t->flush_timer.data = b;
        t->spill_timer.data = b;
        uv_close((uv_handle_t *)&t->flush_timer, on_handle_closed);
        uv_close((uv_handle_t *)&t->spill_timer, on_handle_closed);
        for (uint32_t i = 0; i < t->nwriters; i++)
            writer_close(&t->writers[i]);
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
            batch_answer_acks(t->head, &closing);
            batch_free(t->head);
            t->head = next;
        }
        t->tail = NULL;
    }
}

/* ---- figures ---- */

uint32_t batcher_table_writers_up(const struct batcher_table *t)
{
    uint32_t up = 0;
    for (uint32_t i = 0; i < t->nwriters; i++)
        up += writer_up(&t->writers[i]);
    return up;
}

uint32_t batcher_writers_up(const struct batcher *b)
{
    uint32_t up = 0;
    for (int k = 0; k < EVENT_KIND_COUNT; k++)
        up += batcher_table_writers_up(&b->tables[k]);
    return up;
}

uint32_t batcher_writers(const struct batcher *b)
{
    uint32_t n = 0;
    for (int k = 0; k < EVENT_KIND_COUNT; k++)
        n += b->tables[k].nwriters;
    return n;
}

bool batcher_settled(const struct batcher *b)
{
    for (int k = 0; k < EVENT_KIND_COUNT; k++)
        if (table_starting(&b->tables[k]))
            return false;
    return true;
}

uint64_t batcher_rows_lost(const struct batcher *b)
{
    return b->stats.rows_lost;
}

uint64_t batcher_rows_written(const struct batcher *b)
{
    uint64_t n = 0;
    for (int k = 0; k < EVENT_KIND_COUNT; k++)
        n += b->tables[k].stats.rows_written;
    return n;
}
