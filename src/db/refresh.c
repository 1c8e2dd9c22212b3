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
#include <time.h>

#include "log.h"
#include "rpc.h"
#include "xalloc.h"

/* The maintenance timer looks at the wall clock this often: the run starts at most this late. */
#define MAINT_CHECK_MS 30000
/* The same failure is logged again after this long, so a view that stays broken is not forgotten
 * but does not fill the log either. */
#define RELOG_MS (10 * 60 * 1000)

static void refresh_kick(struct refresh *r);
static void maint_check(struct refresh *r);
static void maint_run_step(struct refresh *r);

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* "SQLSTATE: message", or why the connection went. */
static void outcome_error(const struct pg_outcome *o, char *out, size_t outlen)
{
    const char *msg = o->error ? o->error : "unknown error";
    /* libpq prefixes the severity ("ERROR:  "); the SQLSTATE already says it is one. */
    if (!o->connection_lost && strncmp(msg, "ERROR:  ", 8) == 0)
        msg += 8;
    if (o->connection_lost)
        snprintf(out, outlen, "connection lost: %s", msg);
    else if (o->sqlstate[0])
        snprintf(out, outlen, "%s: %s", o->sqlstate, msg);
    else
        snprintf(out, outlen, "%s", msg);
}

/* Every handle and connection counts in r->live until its close callback has run. */
static void refresh_release(struct refresh *r)
{
    if (--r->live > 0 || !r->closing)
        return;
    free(r->conninfo);
    r->conninfo = NULL;
    free(r->views);
    r->views = NULL;
    free(r->maint.stats.last_result);
    r->maint.stats.last_result = NULL;
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
    outcome_error(o, r->job.error, sizeof(r->job.error));
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
        j->refresh_started_us = uv_hrtime() / 1000;
        job_submit(r, REFRESH_STEP_REFRESH, j->sql, 0);
        return;
    }
    case REFRESH_STEP_REFRESH: {
        uint64_t us = uv_hrtime() / 1000 - j->refresh_started_us;
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
            outcome_error(o, why, sizeof(why));
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
        j->started_wall_ms = wall_ms();
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

/* ---- maintenance ---- */

/* The daemon running the day holds a session advisory lock on the run's connection until the
 * run ends; PostgreSQL frees it when that session ends in any way. So a day whose row has no
 * finished_at while nobody holds the lock was cut short (its daemon stopped, crashed or lost the
 * connection), and is claimed again: every step can run twice. While the lock is held elsewhere,
 * the day is claimed elsewhere. */
static const char claim_sql[] =
    "INSERT INTO usaged.maintenance_runs AS m (run_date, started_at) "
    "SELECT $1::date, now() "
    "WHERE pg_catalog.pg_try_advisory_lock(pg_catalog.hashtext('usaged maintenance')) "
    "ON CONFLICT (run_date) DO UPDATE SET started_at = now(), finished_at = NULL, "
    "result = jsonb_build_object('resumed_after', m.result) "
    "WHERE m.finished_at IS NULL "
    "RETURNING run_date";

/* Each step adds its outcome to the day's result in the statement that runs it, so the table
 * shows how far a run has come. */
#define MAINT_ADD(expr)                                                                            \
    "UPDATE usaged.maintenance_runs SET result = coalesce(result, '{}'::jsonb) || "                \
    "jsonb_build_object(" expr ") WHERE run_date = $1::date"

/* A macro, not an array: the compiler checks the format of a literal only. */
#define PARTITIONS_SQL_FMT                                                                         \
    MAINT_ADD("'create_partitions', (SELECT coalesce(jsonb_agg(to_jsonb(p)), '[]'::jsonb) "        \
              "FROM usaged.create_partitions(%" PRIu32 ") p)")

/* Retention runs as usaged, which owns the log tables and the function; daily_maintenance()
 * (deleting expired sessions and computing yesterday's feedback_analytics, which usaged may do
 * only through it) runs with its owner's rights and calls nothing usaged owns. */
static const char daily_sql[] = MAINT_ADD("'retention', usaged.apply_retention(), "
                                          "'daily_maintenance', public.daily_maintenance()");
static const char daily_skipped_sql[] =
    MAINT_ADD("'retention', 'skipped: maintenance.retention is false', "
              "'daily_maintenance', public.daily_maintenance()");
static const char analyze_sql[] =
    MAINT_ADD("'analyze', (SELECT jsonb_build_object('tables', count(*), 'ms', "
              "coalesce(sum(a.duration_ms), 0)) FROM public.analyze_all_tables() a)");
static const char note_ms_sql[] = MAINT_ADD("$2::text, jsonb_build_object('ms', $3::bigint)");
static const char note_error_sql[] = MAINT_ADD("$2::text, jsonb_build_object('error', $3::text)");
static const char finish_sql[] =
    "UPDATE usaged.maintenance_runs SET finished_at = now(), "
    "result = coalesce(result, '{}'::jsonb) || jsonb_build_object('ok', $2::boolean) "
    "WHERE run_date = $1::date RETURNING result::text";

static const char *maint_step_name(enum refresh_maint_step step)
{
    static const char *const names[] = {
        "set statement_timeout", "claim",   "create_partitions",
        "daily_maintenance",     "analyze", "vacuum_api_usage_logs",
        "vacuum_prompt_history", "finish",
    };
    return names[step];
}

static void on_maint_pg_closed(struct pg_conn *pg)
{
    struct refresh_maintenance *m =
        (struct refresh_maintenance *)((char *)pg - offsetof(struct refresh_maintenance, pg));
    struct refresh *r = (struct refresh *)((char *)m - offsetof(struct refresh, maint));
    m->pg_open = false;
    m->pg_closing = false;
    refresh_release(r);
}

static void maint_close_pg(struct refresh *r)
{
    struct refresh_maintenance *m = &r->maint;
    /* pg_close completes the op in flight, whose callback comes back here: close
     * once. */
    if (!m->pg_open || m->pg_closing)
        return;
    m->pg_closing = true;
    pg_close(&m->pg, on_maint_pg_closed);
}

static void maint_end(struct refresh *r)
{
    r->maint.running = false;
    r->maint.connecting = false;
    maint_close_pg(r);
}

static void maint_set_error(struct refresh_maintenance *m, const char *error)
{
    if (!m->stats.last_error[0])
        snprintf(m->stats.last_error, sizeof(m->stats.last_error), "%s", error);
}

/* The run cannot go on (connection lost, stopping, or the claim failed). */
static void maint_abort(struct refresh *r, const char *why)
{
    struct refresh_maintenance *m = &r->maint;
    bool claimed = m->step > REFRESH_MAINT_CLAIM;
    if (claimed) {
        m->stats.failed++;
        m->stats.last_finished_ms = wall_ms();
        maint_set_error(m, why);
        if (r->stopping)
            log_info("maintenance of %s interrupted at %s: the daemon is stopping", m->run_date,
                     maint_step_name(m->step));
        else
            log_warn("maintenance of %s stopped at %s: %s", m->run_date, maint_step_name(m->step),
                     why);
    } else if (!r->stopping) {
        /* Not claimed: the next look of the timer tries again. Say so once per error.
         */
        uint64_t now = uv_now(r->loop);
        if (strcmp(m->stats.last_error, why) != 0 || now - m->logged_ms >= RELOG_MS) {
            log_warn("maintenance of %s cannot start (retried in %d s): %s", m->run_date,
                     MAINT_CHECK_MS / 1000, why);
            m->logged_ms = now;
        }
        snprintf(m->stats.last_error, sizeof(m->stats.last_error), "%s", why);
    }
    maint_end(r);
}

static void on_maint_done(struct pg_conn *pg, const struct pg_outcome *o, void *arg);

static void maint_submit(struct refresh *r, const char *sql, int nparams)
{
    struct refresh_maintenance *m = &r->maint;
    m->op = (struct pg_op){
        .sql = sql,
        .nparams = nparams,
        .params = m->params,
        .done = on_maint_done,
        .arg = r,
    };
    if (pg_submit(&m->pg, &m->op) < 0) {
        struct pg_outcome lost = {.connection_lost = true, .error = "not connected"};
        on_maint_done(&m->pg, &lost, r);
    }
}

/* Records the outcome of the step just run under its name: its error, or (ms >= 0)
 * its time. */
static void maint_note(struct refresh *r, const char *error, int64_t ms)
{
    struct refresh_maintenance *m = &r->maint;
    snprintf(m->note_key, sizeof(m->note_key), "%s", maint_step_name(m->step));
    m->params[0] = m->run_date;
    m->params[1] = m->note_key;
    m->noting = true;
    if (error) {
        m->params[2] = error;
        maint_submit(r, note_error_sql, 3);
    } else {
        snprintf(m->number, sizeof(m->number), "%" PRId64, ms);
        m->params[2] = m->number;
        maint_submit(r, note_ms_sql, 3);
    }
}

static void maint_run_step(struct refresh *r)
{
    struct refresh_maintenance *m = &r->maint;
    m->params[0] = m->run_date;
    m->step_started_us = uv_hrtime() / 1000;
    switch (m->step) {
    case REFRESH_MAINT_SET:
        /* Session-wide on this connection of the run's own: it bounds every step. */
        snprintf(m->sql, sizeof(m->sql), "SET statement_timeout = %" PRIu64,
                 (uint64_t)m->timeout_s * 1000);
        maint_submit(r, m->sql, 0);
        return;
    case REFRESH_MAINT_CLAIM:
        maint_submit(r, claim_sql, 1);
        return;
    case REFRESH_MAINT_PARTITIONS:
        snprintf(m->sql, sizeof(m->sql), PARTITIONS_SQL_FMT, m->partitions_ahead);
        maint_submit(r, m->sql, 1);
        return;
    case REFRESH_MAINT_DAILY:
        maint_submit(r, m->retention ? daily_sql : daily_skipped_sql, 1);
        return;
    case REFRESH_MAINT_ANALYZE:
        maint_submit(r, analyze_sql, 1);
        return;
    case REFRESH_MAINT_VACUUM_USAGE:
    case REFRESH_MAINT_VACUUM_PROMPT:
        if (!m->vacuum) {
            m->step = REFRESH_MAINT_FINISH;
            maint_run_step(r);
            return;
        }
        /* VACUUM refuses to run in a transaction block: one statement per query, no
         * params. */
        maint_submit(r,
                     m->step == REFRESH_MAINT_VACUUM_USAGE
                         ? "VACUUM (ANALYZE) public.api_usage_logs"
                         : "VACUUM (ANALYZE) public.prompt_history",
                     0);
        return;
    case REFRESH_MAINT_FINISH:
        m->params[1] = m->step_failed ? "false" : "true";
        maint_submit(r, finish_sql, 2);
        return;
    }
}

static void maint_claimed(struct refresh *r)
{
    struct refresh_maintenance *m = &r->maint;
    m->done_day = m->run_day;
    snprintf(m->stats.last_run_date, sizeof(m->stats.last_run_date), "%s", m->run_date);
    m->stats.last_started_ms = wall_ms();
    m->stats.last_finished_ms = 0;
    m->stats.last_error[0] = '\0';
    free(m->stats.last_result);
    m->stats.last_result = NULL;
    log_info("maintenance of %s: claimed, running", m->run_date);
}

static void maint_finished(struct refresh *r, const struct pg_outcome *o)
{
    struct refresh_maintenance *m = &r->maint;
    char error[512];
    if (!o->ok) {
        outcome_error(o, error, sizeof(error));
        maint_set_error(m, error);
        m->step_failed = true;
    } else if (o->result && PQntuples(o->result) == 1) {
        m->stats.last_result = xstrdup(PQgetvalue(o->result, 0, 0));
    }
    m->stats.runs++;
    m->stats.last_finished_ms = wall_ms();
    if (m->step_failed) {
        m->stats.failed++;
        log_warn("maintenance of %s finished with errors in %" PRId64 " ms; the first: %s",
                 m->run_date, m->stats.last_finished_ms - m->stats.last_started_ms,
                 m->stats.last_error);
    } else {
        log_info("maintenance of %s finished in %" PRId64 " ms", m->run_date,
                 m->stats.last_finished_ms - m->stats.last_started_ms);
    }
    maint_end(r);
}

static void on_maint_done(struct pg_conn *pg, const struct pg_outcome *o, void *arg)
{
    (void)pg;
    struct refresh *r = arg;
    struct refresh_maintenance *m = &r->maint;
    char error[512];
    if (o->connection_lost || r->stopping) {
        outcome_error(o, error, sizeof(error));
        maint_abort(r, r->stopping ? "cancelled: the daemon is stopping" : error);
        return;
    }
    if (m->noting) {
        m->noting = false;
        if (!o->ok) {
            outcome_error(o, error, sizeof(error));
            log_warn("maintenance of %s: cannot record %s in usaged.maintenance_runs: %s",
                     m->run_date, m->note_key, error);
            maint_set_error(m, error);
            m->step_failed = true;
        }
        m->step++;
        maint_run_step(r);
        return;
    }
    switch (m->step) {
    case REFRESH_MAINT_SET:
    case REFRESH_MAINT_CLAIM:
        if (!o->ok) {
            outcome_error(o, error, sizeof(error));
            maint_abort(r, error);
            return;
        }
        if (m->step == REFRESH_MAINT_CLAIM) {
            if (!o->result || PQntuples(o->result) == 0) {
                m->done_day = m->run_day;
                m->stats.claimed_elsewhere++;
                log_info("maintenance of %s: already claimed by another daemon", m->run_date);
                maint_end(r);
                return;
            }
            maint_claimed(r);
        }
        break;
    case REFRESH_MAINT_PARTITIONS:
    case REFRESH_MAINT_DAILY:
    case REFRESH_MAINT_ANALYZE:
    case REFRESH_MAINT_VACUUM_USAGE:
    case REFRESH_MAINT_VACUUM_PROMPT:
        if (!o->ok) {
            outcome_error(o, error, sizeof(error));
            log_warn("maintenance of %s: %s failed: %s", m->run_date, maint_step_name(m->step),
                     error);
            maint_set_error(m, error);
            m->step_failed = true;
            maint_note(r, error, -1);
            return;
        }
        if (m->step == REFRESH_MAINT_VACUUM_USAGE || m->step == REFRESH_MAINT_VACUUM_PROMPT) {
            maint_note(r, NULL, (int64_t)(uv_hrtime() / 1000 - m->step_started_us) / 1000);
            return;
        }
        break;
    case REFRESH_MAINT_FINISH:
        maint_finished(r, o);
        return;
    }
    m->step++;
    maint_run_step(r);
}

static void on_maint_ready(struct pg_conn *pg, void *arg)
{
    (void)pg;
    struct refresh *r = arg;
    if (!r->maint.connecting)
        return;
    r->maint.connecting = false;
    maint_run_step(r);
}

static const struct pg_callbacks maint_callbacks = {
    .ready = on_maint_ready,
    .lost = on_pg_lost,
    .notify = NULL,
};

/* Starts the day's run when its time has come (or passed: a daemon that was down at
 * that time catches up) and the day is not known to be claimed. The claim decides who
 * runs it. */
static void maint_check(struct refresh *r)
{
    struct refresh_maintenance *m = &r->maint;
    if (!r->started || r->stopping || m->at_minute < 0 || m->running || m->pg_open)
        return;
    int64_t now_s = wall_ms() / 1000;
    int64_t day = now_s / 86400;
    if (day == m->done_day || (now_s % 86400) / 60 < m->at_minute)
        return;
    m->running = true;
    m->connecting = true;
    m->run_day = day;
    m->step = REFRESH_MAINT_SET;
    m->noting = false;
    m->step_failed = false;
    time_t t = (time_t)(day * 86400);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(m->run_date, sizeof(m->run_date), "%Y-%m-%d", &tm);
    pg_init(&m->pg, r->loop, "maintenance", r->conninfo, r->connect_timeout_ms, r->reconnect_max_ms,
            &maint_callbacks, r);
    m->pg_open = true;
    r->live++;
    pg_start(&m->pg);
}

static void on_maint_timer(uv_timer_t *t)
{
    maint_check(t->data);
}

static void on_maint_timer_closed(uv_handle_t *h)
{
    refresh_release(h->data);
}

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
    uv_timer_init(loop, &r->maint.timer);
    r->maint.timer.data = r;
    r->live++;
    r->maint.done_day = -1;
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
    uv_timer_start(&r->maint.timer, on_maint_timer, 0, MAINT_CHECK_MS);
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
    struct refresh_maintenance *m = &r->maint;
    m->at_minute = config->maintenance.at_minute;
    m->partitions_ahead = config->maintenance.partitions_ahead;
    m->retention = config->maintenance.retention;
    m->vacuum = config->maintenance.vacuum;
    m->timeout_s = config->maintenance.timeout_s;

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
    if (r->started) {
        start_connection(r);
        maint_check(r);
    }
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
    uv_timer_stop(&r->maint.timer);
    /* A refresh or a VACUUM may run for minutes: have the server stop it rather than
     * wait. */
    if (r->job.view)
        pg_cancel(&r->pg);
    if (r->maint.running && !r->maint.connecting)
        pg_cancel(&r->maint.pg);
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
    maint_close_pg(r);
    while (r->nviews > 0)
        view_discard(r->views[r->nviews - 1]);
    uv_timer_stop(&r->maint.timer);
    uv_close((uv_handle_t *)&r->maint.timer, on_maint_timer_closed);
}

/* ---- stats ---- */

static void pack_i64(msgpack_packer *pk, const char *key, int64_t v)
{
    rpc_pack_str(pk, key);
    msgpack_pack_int64(pk, v);
}

static void pack_str(msgpack_packer *pk, const char *key, const char *v)
{
    rpc_pack_str(pk, key);
    rpc_pack_str(pk, v ? v : "");
}

void refresh_pack_stats(const struct refresh *r, msgpack_packer *pk)
{
    msgpack_pack_map(pk, 2);
    pack_str(pk, "postgres", r->pg_started ? pg_state_name(r->pg.state) : "unused");
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
        pack_i64(pk, "last_refresh_ms", v->stats.last_refresh_ms);
        rpc_pack_u64(pk, "duration_ms", v->stats.duration_ms);
        pack_str(pk, "last_error", v->last_error);
        rpc_pack_u64(pk, "refreshes", v->stats.refreshes);
        rpc_pack_u64(pk, "skipped", v->stats.skipped);
        rpc_pack_u64(pk, "failed", v->stats.failed);
    }
}

void refresh_pack_maintenance_stats(const struct refresh *r, msgpack_packer *pk)
{
    const struct refresh_maintenance *m = &r->maint;
    msgpack_pack_map(pk, 10);
    rpc_pack_str(pk, "at");
    if (m->at_minute < 0) {
        msgpack_pack_nil(pk);
    } else {
        char at[16];
        snprintf(at, sizeof(at), "%02d:%02d", (int)(m->at_minute / 60), (int)(m->at_minute % 60));
        rpc_pack_str(pk, at);
    }
    rpc_pack_str(pk, "running");
    if (m->running)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
    rpc_pack_u64(pk, "runs", m->stats.runs);
    rpc_pack_u64(pk, "claimed_elsewhere", m->stats.claimed_elsewhere);
    rpc_pack_u64(pk, "failed", m->stats.failed);
    pack_str(pk, "last_run_date", m->stats.last_run_date);
    pack_i64(pk, "last_started_ms", m->stats.last_started_ms);
    pack_i64(pk, "last_finished_ms", m->stats.last_finished_ms);
    pack_str(pk, "last_result", m->stats.last_result);
    pack_str(pk, "last_error", m->stats.last_error);
}
