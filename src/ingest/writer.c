/* writer: see writer.h.
 *
 * A range's life: COPY (statements_copy) -> committed, or refused: a repeated id makes the batch
 * idempotent and the range is written again; an unknown user (23503) asks which users are
 * unknown and sets their rows aside; any other data error splits the range; a range of one row,
 * or of rows set aside, goes to usaged.rejects. Any other failure: retry after a backoff. */
#include "writer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batcher.h"
#include "clock.h"
#include "copy.h"
#include "log.h"
#include "statements.h"
#include "uuid.h"
#include "xalloc.h"

#define RETRY_START_MS 100

/* JSON of rejected rows per statement, at most (past one row): far below jsonb's 256 MB. */
#define REJECT_JSON_MAX (4u << 20)

static void write_range(struct batcher_writer *w);

/* The writer's connection came up, went idle, went down or failed to connect: the table may
 * have batches for it, or batches to spill. */
static void on_writer_state(struct pg_conn *pg, void *arg)
{
    (void)pg;
    struct batcher_writer *w = arg;
    batcher_writer_changed(w->t);
}

static const struct pg_callbacks writer_callbacks = {
    .ready = on_writer_state,
    .lost = on_writer_state,
    .notify = NULL,
    .connect_failed = on_writer_state,
};

void writer_init(struct batcher_writer *w, struct batcher_table *t, uv_loop_t *loop,
                 const struct config *config, uint32_t index)
{
    w->t = t;
    buf_init(&w->sql);
    buf_init(&w->json);
    w->retry_ms = RETRY_START_MS;
    char name[32];
    snprintf(name, sizeof(name), "ingest %s %u", t->kind == EVENT_USAGE ? "usage" : "prompt",
             index + 1);
    pg_init(&w->pg, loop, name, config->postgres.conninfo,
            config->postgres.connect_timeout_s * 1000, config->postgres.reconnect_max_ms,
            &writer_callbacks, w);
    uv_timer_init(loop, &w->retry_timer);
    w->retry_timer.data = w;
}

void writer_start(struct batcher_writer *w)
{
    pg_start(&w->pg);
}

bool writer_up(const struct batcher_writer *w)
{
    return w->pg.state == PG_IDLE || w->pg.state == PG_BUSY;
}

void writer_cancel(struct batcher_writer *w)
{
    if (w->writing)
        pg_cancel(&w->pg);
}

static void on_timer_closed(uv_handle_t *h)
{
    batcher_part_closed(h->data);
}

static void on_pg_closed(struct pg_conn *pg)
{
    struct batcher_writer *w =
        (struct batcher_writer *)((char *)pg - offsetof(struct batcher_writer, pg));
    batcher_part_closed(w->t->b);
}

void writer_close(struct batcher_writer *w)
{
    w->retry_timer.data = w->t->b;
    uv_close((uv_handle_t *)&w->retry_timer, on_timer_closed);
    pg_close(&w->pg, on_pg_closed);
    buf_free(&w->sql);
    buf_free(&w->json);
}

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

static void on_write_done(struct pg_conn *pg, const struct pg_outcome *o, void *arg);

/* Stores the top range's rows, all refused, in usaged.rejects with the error that refused them:
 * in one statement, or in several when their JSON is large (the rest becomes a range of its
 * own, under this one). A row already there (a batch written again after a lost commit, or
 * replayed from the spool) is not stored twice. */
static void reject_rows(struct batcher_writer *w)
{
    struct batcher_table *t = w->t;
    struct batch *batch = w->current;
    struct batch_range *r = batch_top(batch);
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
        .sql = statements_rejects,
        .nparams = 4,
        .params = w->params,
        .done = on_write_done,
        .arg = w,
    };
    writer_submit(w, true);
}

static void on_users_checked(struct pg_conn *pg, const struct pg_outcome *o, void *arg);

/* A range was refused for a row of a user that does not exist (23503: the tables' one foreign
 * key). Rather than splitting it in halves until each such row stands alone (2n statements for
 * n of them), ask which of its users are unknown (one statement), set their rows aside and
 * write the rest in one COPY. */
static void check_users(struct batcher_writer *w)
{
    const struct batch_range *r = batch_top(w->current);
    statements_user_ids(&w->json, w->current, r->lo, r->hi);
    w->params[0] = (const char *)w->json.data;
    w->op = (struct pg_op){
        .sql = statements_unknown_users,
        .nparams = 1,
        .params = w->params,
        .done = on_users_checked,
        .arg = w,
    };
    writer_submit(w, false);
}

/* Goes on with the writer's batch: its next range, unless drain_timeout_s has passed, when the
 * batch is let go to be spilled (the drain timer cancels the statements then running; one begun
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

static int compare_ids(const void *a, const void *b)
{
    return memcmp(a, b, 16);
}

/* The error's detail names the one row PostgreSQL stopped at; each set-aside row gets the error
 * without it, and says why it is set aside. */
static void reword_unknown_user_error(struct batch *batch)
{
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
        batch_split_top(batch);
        continue_batch(w);
        return;
    }
    qsort(unknown, nunknown, 16, compare_ids);
    batch_set_aside(batch, (const uint8_t(*)[16])unknown, nunknown);
    free(unknown);
    reword_unknown_user_error(batch);
    continue_batch(w);
}

/* Writes the top range of the writer's batch. */
static void write_range(struct batcher_writer *w)
{
    struct batcher_table *t = w->t;
    struct batch *batch = w->current;
    const struct batch_range *r = batch_top(batch);
    if (r->reject) {
        reject_rows(w);
        return;
    }
    statements_copy(&w->sql, t->kind, batch, r->lo, r->hi, batch->idempotent);
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
    w->op_started_us = clock_mono_us();
    writer_submit(w, false);
}

static bool is_data_error(const char *sqlstate)
{
    /* Class 22: data exception; class 23: integrity constraint violation (foreign key, check,
     * not null, and a row that fits no partition). */
    return (sqlstate[0] == '2' && (sqlstate[1] == '2' || sqlstate[1] == '3'));
}

/* A statement of the range failed for its data: find the bad rows. */
static void on_data_error(struct batcher_writer *w, const struct pg_outcome *o)
{
    struct batch *batch = w->current;
    struct batch_range *r = batch_top(batch);
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
    batch_split_top(batch);
    continue_batch(w);
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
    struct batch_range *r = batch_top(batch);
    if (!w->rejecting)
        t->stats.copy_us += clock_mono_us() - w->op_started_us;

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
        on_data_error(w, o);
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
    w->current = NULL;
    batch->writer = NULL;
    batcher_batch_written(t, batch);
    batcher_kick(t);
}

void writer_kick(struct batcher_writer *w)
{
    if (w->writing || w->current || !pg_is_idle(&w->pg) ||
        uv_is_active((uv_handle_t *)&w->retry_timer))
        return;
    struct batch *batch = batcher_next_batch(w->t);
    if (!batch)
        return;
    batch->writer = w;
    w->current = batch;
    write_range(w);
}
