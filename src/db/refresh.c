/* refresh: see refresh.h.
 *
 * Everything here is a chain of one-statement operations on a pg_conn: each completion callback
 * submits the next statement or ends the chain. Nothing blocks the loop; the only blocking libpq
 * call, PQcancel, runs on the thread pool inside pg_cancel.
 *
 * Why a timer per view that is re-armed after each attempt, rather than a repeating one: when the
 * attempt finds that another daemon refreshed the view `age` ms ago, the next look is due in
 * `every - age` ms, the moment that refresh goes stale. Daemons sharing a database thus all look
 * at about the same moment, one of them wins the advisory lock, and the others find the view
 * fresh: one refresh per interval between them, whatever the phases of their timers. */
#include "refresh.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "log.h"
#include "rpc.h"
#include "xalloc.h"

/* The same failure is logged again after this long, so a view that stays broken is not forgotten
 * but does not fill the log either. */
#define RELOG_MS (10 * 60 * 1000)

static void refresh_kick(struct refresh *r);

/* Every handle and connection counts in r->live until its close callback has run. */
static void refresh_release(struct refresh *r)
{
    if (--r->live > 0 || !r->closing)
        return;
    free(r->conninfo);
    r->conninfo = NULL;
    free(r->views);
    r->views = NULL;
    if (r->on_closed)
        r->on_closed(r, r->closed_arg);
}

/* ---- views ---- */

/* A skip is decided against the view's age with this much slack, so that a look that comes a few
 * milliseconds early (timer and round-trip jitter) still refreshes. */
static uint32_t slack_ms(uint32_t every_ms)
{
    uint32_t s = every_ms / 10;
    return s > 1000 ? 1000 : s;
}

static void on_view_timer_closed(uv_handle_t *h)
{
    struct refresh_view *v = h->data;
    struct refresh *r = v->r;
    free(v->name);
    free(v->lock_key);
    free(v);
    refresh_release(r);
}

static void due_unlink(struct refresh *r, struct refresh_view *v)
{
    struct refresh_view **p = &r->due_head;
    struct refresh_view *prev = NULL;
    while (*p && *p != v) {
        prev = *p;
        p = &(*p)->next_due;
    }
    if (!*p)
        return;
    *p = v->next_due;
    if (r->due_tail == v)
        r->due_tail = prev;
    v->next_due = NULL;
    v->queued = false;
}

/* Forgets a view that no attempt uses any more. */
static void view_discard(struct refresh_view *v)
{
    struct refresh *r = v->r;
    for (size_t i = 0; i < r->nviews; i++) {
        if (r->views[i] == v) {
            memmove(&r->views[i], &r->views[i + 1], (r->nviews - i - 1) * sizeof(*r->views));
            r->nviews--;
            break;
        }
    }
    due_unlink(r, v);
    uv_timer_stop(&v->timer);
    uv_close((uv_handle_t *)&v->timer, on_view_timer_closed);
}

static void on_view_timer(uv_timer_t *t)
{
    struct refresh_view *v = t->data;
    struct refresh *r = v->r;
    if (r->stopping || v->removed || v->queued || r->job.view == v)
        return;
    v->queued = true;
    v->next_due = NULL;
    if (r->due_tail)
        r->due_tail->next_due = v;
    else
        r->due_head = v;
    r->due_tail = v;
    refresh_kick(r);
}

static void view_arm(struct refresh_view *v, uint64_t delay_ms)
{
    if (v->r->stopping || v->removed)
        return;
    uv_timer_start(&v->timer, on_view_timer, delay_ms, 0);
}

static struct refresh_view *view_new(struct refresh *r, const struct config_refresh *c)
{
    struct refresh_view *v = xcalloc(1, sizeof(*v));
    v->r = r;
    v->name = xstrdup(c->view);
    size_t n = strlen("usaged.refresh:") + strlen(c->view) + 1;
    v->lock_key = xmalloc(n);
    snprintf(v->lock_key, n, "usaged.refresh:%s", c->view);
    v->every_ms = c->every_s * 1000;
    v->timeout_ms = c->timeout_s * 1000;
    uv_timer_init(r->loop, &v->timer);
    v->timer.data = v;
    r->live++;
    r->views = xrealloc(r->views, (r->nviews + 1) * sizeof(*r->views));
    r->views[r->nviews++] = v;
    return v;
}

/* ---- one refresh attempt ---- */

static const char lock_sql[] = "SELECT pg_catalog.pg_try_advisory_xact_lock("
                               "pg_catalog.hashtext($1))";

/* Run after the lock is held, so that its snapshot sees any refresh committed before: the age of
 * the last refresh by any daemon (NULL: never), and whether the view holds data (NULL: no such
 * materialized view, which the REFRESH then reports). */
static const char check_sql[] =
    "SELECT (SELECT (extract(epoch FROM now() - s.refreshed_at) * 1000)::bigint"
    "          FROM usaged.refresh_state s WHERE s.view_name = $1),"
    "       (SELECT c.relispopulated FROM pg_catalog.pg_class c"
    "         WHERE c.oid = pg_catalog.to_regclass($2) AND c.relkind = 'm')";

/* now() is the transaction's start: when the refresh began. */
static const char record_sql[] =
    "INSERT INTO usaged.refresh_state AS s (view_name, refreshed_at, duration_ms, error) "
    "VALUES ($1, now(), $2::integer, NULL) "
    "ON CONFLICT (view_name) DO UPDATE SET refreshed_at = excluded.refreshed_at, "
    "duration_ms = excluded.duration_ms, error = NULL";

/* A failure counts as the attempt of that interval (refreshed_at is when it began): the other
 * daemons do not pile the same failing, maybe expensive, refresh onto the database. */
static const char record_error_sql[] =
    "INSERT INTO usaged.refresh_state AS s (view_name, refreshed_at, duration_ms, error) "
    "VALUES ($1, now() - $2::integer * interval '1 millisecond', $2::integer, $3) "
    "ON CONFLICT (view_name) DO UPDATE SET refreshed_at = excluded.refreshed_at, "
    "duration_ms = excluded.duration_ms, error = excluded.error";

static void on_job_done(struct pg_conn *pg, const struct pg_outcome *o, void *arg);

static uint32_t elapsed_ms(const struct refresh *r)
{
    uint64_t e = uv_now(r->loop) - r->job.started_ms;
    return e > UINT32_MAX ? UINT32_MAX : (uint32_t)e;
}

/* Must be the last thing its caller does: a connection that breaks on send completes the op (and
 * so the attempt) before pg_submit returns. */
static void job_submit(struct refresh *r, enum refresh_step step, const char *sql, int nparams)
{
    struct refresh_job *j = &r->job;
    j->step = step;
    j->op = (struct pg_op){
        .sql = sql,
        .nparams = nparams,
        .params = j->params,
        .done = on_job_done,
        .arg = r,
    };
    if (pg_submit(&r->pg, &j->op) < 0) {
        struct pg_outcome lost = {.connection_lost = true, .error = "not connected"};
        on_job_done(&r->pg, &lost, r);
    }
}

static void log_failure(struct refresh_view *v, const char *error)
{
    uint64_t now = uv_now(v->r->loop);
    if (strcmp(error, v->last_error) == 0 && now - v->last_logged_ms < RELOG_MS)
        return;
    log_warn("refresh %s failed (%" PRIu32 " in a row; retried every %" PRIu32 " s): %s", v->name,
             v->failures_in_row, v->every_ms / 1000, error);
    v->last_logged_ms = now;
}

/* The attempt has ended: count it, and arm the view's next one. */
static void job_end(struct refresh *r)
{
    struct refresh_job *j = &r->job;
    struct refresh_view *v = j->view;
    j->view = NULL;
    uint32_t elapsed = elapsed_ms(r);
    uint32_t delay = elapsed >= v->every_ms ? 0 : v->every_ms - elapsed;
    switch (j->outcome) {
    case REFRESH_REFRESHED:
        v->stats.refreshes++;
        v->stats.last_refresh_ms = j->started_wall_ms;
        v->stats.duration_ms = j->duration_ms;
        if (v->failures_in_row)
            log_info("refresh %s works again after %" PRIu32 " failed attempts", v->name,
                     v->failures_in_row);
        v->failures_in_row = 0;
        v->last_error[0] = '\0';
        log_debug("refreshed %s%s in %" PRIu32 " ms", v->name,
                  j->concurrently ? " concurrently" : " (first population)", j->duration_ms);
        break;
    case REFRESH_SKIPPED:
        v->stats.skipped++;
        delay = j->next_delay_ms;
        break;
    case REFRESH_FAILED:
        if (r->stopping) {
            log_info("refresh %s: cancelled, the daemon is stopping", v->name);
            break;
        }
        v->stats.failed++;
        v->failures_in_row++;
        log_failure(v, j->error);
        snprintf(v->last_error, sizeof(v->last_error), "%s", j->error);
        break;
    }
    if (v->removed)
        view_discard(v);
    else
        view_arm(v, delay);
    refresh_kick(r);
}

static void job_fail(struct refresh *r, const struct pg_outcome *o)
{
    pg_outcome_describe(o, r->job.error, sizeof(r->job.error));
    r->job.outcome = REFRESH_FAILED;
}

static void on_job_done(struct pg_conn *pg, const struct pg_outcome *o, void *arg)
{
    (void)pg;
    struct refresh *r = arg;
    struct refresh_job *j = &r->job;
    struct refresh_view *v = j->view;

    if (o->connection_lost) {
        /* The server rolled the transaction back with the connection. */
        if (j->step != REFRESH_STEP_ROLLBACK && j->step != REFRESH_STEP_RECORD_ERROR)
            job_fail(r, o);
        job_end(r);
        return;
    }
    if (r->stopping) {
        /* Cancelled, or finished as the cancel came: the closing connection rolls back. */
        snprintf(j->error, sizeof(j->error), "cancelled: the daemon is stopping");
        j->outcome = REFRESH_FAILED;
        job_end(r);
        return;
    }
    if (!o->ok && j->step < REFRESH_STEP_COMMIT) {
        job_fail(r, o);
        job_submit(r, REFRESH_STEP_ROLLBACK, "ROLLBACK", 0);
        return;
    }

    switch (j->step) {
    case REFRESH_STEP_BEGIN:
        j->params[0] = v->lock_key;
        job_submit(r, REFRESH_STEP_LOCK, lock_sql, 1);
        return;
    case REFRESH_STEP_LOCK:
        if (!o->result || PQntuples(o->result) != 1 || strcmp(PQgetvalue(o->result, 0, 0), "t")) {
            /* Another daemon is refreshing it now; look again an interval later. */
            j->outcome = REFRESH_SKIPPED;
            j->next_delay_ms = v->every_ms;
            job_submit(r, REFRESH_STEP_ROLLBACK, "ROLLBACK", 0);
            return;
        }
        j->params[0] = v->name;
        j->params[1] = j->quoted;
        job_submit(r, REFRESH_STEP_CHECK, check_sql, 2);
        return;
    case REFRESH_STEP_CHECK: {
        PGresult *res = o->result;
        if (!res || PQntuples(res) != 1 || PQnfields(res) != 2) {
            snprintf(j->error, sizeof(j->error), "unexpected answer to the refresh_state query");
            j->outcome = REFRESH_FAILED;
            job_submit(r, REFRESH_STEP_ROLLBACK, "ROLLBACK", 0);
            return;
        }
        if (!PQgetisnull(res, 0, 0)) {
            long long age = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
            if (age < (long long)(v->every_ms - slack_ms(v->every_ms))) {
                j->outcome = REFRESH_SKIPPED;
                j->next_delay_ms = age < 0 ? v->every_ms : v->every_ms - (uint32_t)age;
                job_submit(r, REFRESH_STEP_ROLLBACK, "ROLLBACK", 0);
                return;
            }
        }
        /* CONCURRENTLY refuses a view that holds no data; a plain REFRESH fills it (and locks out
         * readers meanwhile, who could not read it anyway). */
        j->concurrently = !PQgetisnull(res, 0, 1) && PQgetvalue(res, 0, 1)[0] == 't';
        snprintf(j->sql, sizeof(j->sql), "REFRESH MATERIALIZED VIEW %s%s",
                 j->concurrently ? "CONCURRENTLY " : "", j->quoted);
        j->refresh_started_us = clock_mono_us();
        job_submit(r, REFRESH_STEP_REFRESH, j->sql, 0);
        return;
    }
    case REFRESH_STEP_REFRESH: {
        uint64_t us = clock_mono_us() - j->refresh_started_us;
        j->duration_ms = us / 1000 > INT32_MAX ? INT32_MAX : (uint32_t)(us / 1000);
        snprintf(j->number, sizeof(j->number), "%" PRIu32, j->duration_ms);
        j->params[0] = v->name;
        j->params[1] = j->number;
        job_submit(r, REFRESH_STEP_RECORD, record_sql, 2);
        return;
    }
    case REFRESH_STEP_RECORD:
        job_submit(r, REFRESH_STEP_COMMIT, "COMMIT", 0);
        return;
    case REFRESH_STEP_COMMIT:
        if (o->ok) {
            j->outcome = REFRESH_REFRESHED;
            job_end(r);
            return;
        }
        /* A failed COMMIT has ended the transaction: record it like any other failure. */
        job_fail(r, o);
        break;
    case REFRESH_STEP_ROLLBACK:
        if (j->outcome != REFRESH_FAILED) {
            job_end(r);
            return;
        }
        break;
    case REFRESH_STEP_RECORD_ERROR:
        if (!o->ok) {
            char why[600];
            pg_outcome_describe(o, why, sizeof(why));
            log_debug("refresh %s: cannot record the failure in usaged.refresh_state: %s", v->name,
                      why);
        }
        job_end(r);
        return;
    }
    /* A failure, after the rollback: record it outside the failed transaction. */
    snprintf(j->number, sizeof(j->number), "%" PRIu32,
             elapsed_ms(r) > INT32_MAX ? (uint32_t)INT32_MAX : elapsed_ms(r));
    j->params[0] = v->name;
    j->params[1] = j->number;
    j->params[2] = j->error;
    job_submit(r, REFRESH_STEP_RECORD_ERROR, record_error_sql, 3);
}

/* Starts the next due view's attempt when the connection is free. */
static void refresh_kick(struct refresh *r)
{
    while (!r->stopping && !r->job.view && r->due_head && pg_is_idle(&r->pg)) {
        struct refresh_view *v = r->due_head;
        due_unlink(r, v);
        struct refresh_job *j = &r->job;
        j->view = v;
        j->outcome = REFRESH_SKIPPED;
        j->error[0] = '\0';
        j->duration_ms = 0;
        j->started_ms = uv_now(r->loop);
        j->started_wall_ms = clock_wall_ms();
        if (!pg_quote_qualified(r->pg.conn, v->name, j->quoted, sizeof(j->quoted))) {
            snprintf(j->error, sizeof(j->error), "cannot quote the view name \"%s\"", v->name);
            j->outcome = REFRESH_FAILED;
            job_end(r);
            continue;
        }
        snprintf(j->sql, sizeof(j->sql), "BEGIN; SET LOCAL statement_timeout = %" PRIu32,
                 v->timeout_ms);
        job_submit(r, REFRESH_STEP_BEGIN, j->sql, 0);
        return;
    }
}

static void on_pg_ready(struct pg_conn *pg, void *arg)
{
    (void)pg;
    refresh_kick(arg);
}

static void on_pg_lost(struct pg_conn *pg, void *arg)
{
    /* The attempt in flight, if any, has completed as lost; pg reconnects by itself and calls
     * ready, which resumes the due list. */
    (void)pg;
    (void)arg;
}

static const struct pg_callbacks refresh_callbacks = {
    .ready = on_pg_ready,
    .lost = on_pg_lost,
    .notify = NULL,
};

/* ---- lifecycle ---- */

void refresh_init(struct refresh *r, uv_loop_t *loop, const struct config *config)
{
    memset(r, 0, sizeof(*r));
    r->loop = loop;
    r->conninfo = xstrdup(config->postgres.conninfo);
    r->connect_timeout_ms = config->postgres.connect_timeout_s * 1000;
    r->reconnect_max_ms = config->postgres.reconnect_max_ms;
    pg_init(&r->pg, loop, "refresh", r->conninfo, r->connect_timeout_ms, r->reconnect_max_ms,
            &refresh_callbacks, r);
    r->live++;
    refresh_configure(r, config);
}

static void start_connection(struct refresh *r)
{
    if (r->pg_started || r->nviews == 0)
        return;
    r->pg_started = true;
    pg_start(&r->pg);
}

void refresh_start(struct refresh *r)
{
    r->started = true;
    /* Every view is looked at once at start: refresh_state says whether it is due. */
    for (size_t i = 0; i < r->nviews; i++)
        view_arm(r->views[i], 0);
    start_connection(r);
}

static const struct config_refresh *find_config(const struct config *c, const char *name)
{
    for (size_t i = 0; i < c->refresh_count; i++)
        if (strcmp(c->refresh[i].view, name) == 0)
            return &c->refresh[i];
    return NULL;
}

static struct refresh_view *find_view(const struct refresh *r, const char *name)
{
    for (size_t i = 0; i < r->nviews; i++)
        if (!r->views[i]->removed && strcmp(r->views[i]->name, name) == 0)
            return r->views[i];
    return NULL;
}

void refresh_configure(struct refresh *r, const struct config *config)
{
    /* Views no longer configured go; one in flight finishes its attempt first. */
    for (size_t i = r->nviews; i-- > 0;) {
        struct refresh_view *v = r->views[i];
        if (v->removed || find_config(config, v->name))
            continue;
        v->removed = true;
        log_info("refresh %s: no longer configured", v->name);
        if (r->job.view != v)
            view_discard(v);
    }
    for (size_t i = 0; i < config->refresh_count; i++) {
        const struct config_refresh *c = &config->refresh[i];
        struct refresh_view *v = find_view(r, c->view);
        if (!v) {
            v = view_new(r, c);
            if (r->started)
                view_arm(v, 0);
            continue;
        }
        uint32_t every_ms = c->every_s * 1000;
        v->timeout_ms = c->timeout_s * 1000;
        if (v->every_ms != every_ms) {
            v->every_ms = every_ms;
            /* Look now: the new interval may make it due already. */
            if (r->started && !v->queued && r->job.view != v)
                view_arm(v, 0);
        }
    }
    if (r->started)
        start_connection(r);
}

void refresh_stop(struct refresh *r)
{
    if (r->stopping)
        return;
    r->stopping = true;
    for (size_t i = 0; i < r->nviews; i++) {
        uv_timer_stop(&r->views[i]->timer);
        r->views[i]->queued = false;
        r->views[i]->next_due = NULL;
    }
    r->due_head = r->due_tail = NULL;
    /* A refresh may run for minutes: have the server stop it rather than wait. */
    if (r->job.view)
        pg_cancel(&r->pg);
}

static void on_refresh_pg_closed(struct pg_conn *pg)
{
    refresh_release((struct refresh *)((char *)pg - offsetof(struct refresh, pg)));
}

void refresh_close(struct refresh *r, void (*on_closed)(struct refresh *r, void *arg), void *arg)
{
    refresh_stop(r);
    r->closing = true;
    r->on_closed = on_closed;
    r->closed_arg = arg;
    /* First the connections: an attempt in flight completes (as lost) and lets go of
     * its view. */
    pg_close(&r->pg, on_refresh_pg_closed);
    while (r->nviews > 0)
        view_discard(r->views[r->nviews - 1]);
}

/* ---- stats ---- */

void refresh_pack_stats(const struct refresh *r, msgpack_packer *pk)
{
    msgpack_pack_map(pk, 2);
    rpc_pack_str_value(pk, "postgres", r->pg_started ? pg_state_name(r->pg.state) : "unused");
    uint32_t n = 0;
    for (size_t i = 0; i < r->nviews; i++)
        n += !r->views[i]->removed;
    rpc_pack_str(pk, "views");
    msgpack_pack_map(pk, n);
    for (size_t i = 0; i < r->nviews; i++) {
        const struct refresh_view *v = r->views[i];
        if (v->removed)
            continue;
        rpc_pack_str(pk, v->name);
        msgpack_pack_map(pk, 8);
        rpc_pack_u64(pk, "every_s", v->every_ms / 1000);
        rpc_pack_str(pk, "running");
        if (r->job.view == v)
            msgpack_pack_true(pk);
        else
            msgpack_pack_false(pk);
        rpc_pack_i64(pk, "last_refresh_ms", v->stats.last_refresh_ms);
        rpc_pack_u64(pk, "duration_ms", v->stats.duration_ms);
        rpc_pack_str_value(pk, "last_error", v->last_error);
        rpc_pack_u64(pk, "refreshes", v->stats.refreshes);
        rpc_pack_u64(pk, "skipped", v->stats.skipped);
        rpc_pack_u64(pk, "failed", v->stats.failed);
    }
}
