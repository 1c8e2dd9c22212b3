/* maintenance: see maintenance.h.
 *
 * A run is a chain of one-statement operations on a connection of its own: each completion
 * callback submits the next step or ends the run. Nothing blocks the loop; the only blocking
 * libpq call, PQcancel, runs on the thread pool inside pg_cancel. */
#include "maintenance.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "log.h"
#include "rpc.h"
#include "xalloc.h"

/* The timer looks at the wall clock this often: the run starts at most this late. */
#define MAINTENANCE_CHECK_MS 30000
/* A claim that keeps failing the same way is logged again after this long. */
#define RELOG_MS (10 * 60 * 1000)

static void maint_run_step(struct maintenance *m);

/* Every handle and connection counts in m->live until its close callback has run. */
static void maintenance_release(struct maintenance *m)
{
    if (--m->live > 0 || !m->closing)
        return;
    free(m->conninfo);
    m->conninfo = NULL;
    free(m->stats.last_result);
    m->stats.last_result = NULL;
    if (m->on_closed)
        m->on_closed(m, m->closed_arg);
}

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

static const char *maint_step_name(enum maintenance_step step)
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
    struct maintenance *m = (struct maintenance *)((char *)pg - offsetof(struct maintenance, pg));
    m->pg_open = false;
    m->pg_closing = false;
    maintenance_release(m);
}

static void maint_close_pg(struct maintenance *m)
{
    /* pg_close completes the op in flight, whose callback comes back here: close
     * once. */
    if (!m->pg_open || m->pg_closing)
        return;
    m->pg_closing = true;
    pg_close(&m->pg, on_maint_pg_closed);
}

static void maint_end(struct maintenance *m)
{
    m->running = false;
    m->connecting = false;
    maint_close_pg(m);
}

static void maint_set_error(struct maintenance *m, const char *error)
{
    if (!m->stats.last_error[0])
        snprintf(m->stats.last_error, sizeof(m->stats.last_error), "%s", error);
}

/* The run cannot go on (connection lost, stopping, or the claim failed). */
static void maint_abort(struct maintenance *m, const char *why)
{
    bool claimed = m->step > MAINTENANCE_CLAIM;
    if (claimed) {
        m->stats.failed++;
        m->stats.last_finished_ms = clock_wall_ms();
        maint_set_error(m, why);
        if (m->stopping)
            log_info("maintenance of %s interrupted at %s: the daemon is stopping", m->run_date,
                     maint_step_name(m->step));
        else
            log_warn("maintenance of %s stopped at %s: %s", m->run_date, maint_step_name(m->step),
                     why);
    } else if (!m->stopping) {
        /* Not claimed: the next look of the timer tries again. Say so once per error.
         */
        uint64_t now = uv_now(m->loop);
        if (strcmp(m->stats.last_error, why) != 0 || now - m->logged_ms >= RELOG_MS) {
            log_warn("maintenance of %s cannot start (retried in %d s): %s", m->run_date,
                     MAINTENANCE_CHECK_MS / 1000, why);
            m->logged_ms = now;
        }
        snprintf(m->stats.last_error, sizeof(m->stats.last_error), "%s", why);
    }
    maint_end(m);
}

static void on_maint_done(struct pg_conn *pg, const struct pg_outcome *o, void *arg);

static void maint_submit(struct maintenance *m, const char *sql, int nparams)
{
    m->op = (struct pg_op){
        .sql = sql,
        .nparams = nparams,
        .params = m->params,
        .done = on_maint_done,
        .arg = m,
    };
    if (pg_submit(&m->pg, &m->op) < 0) {
        struct pg_outcome lost = {.connection_lost = true, .error = "not connected"};
        on_maint_done(&m->pg, &lost, m);
    }
}

/* Records the outcome of the step just run under its name: its error, or (ms >= 0)
 * its time. */
static void maint_note(struct maintenance *m, const char *error, int64_t ms)
{
    snprintf(m->note_key, sizeof(m->note_key), "%s", maint_step_name(m->step));
    m->params[0] = m->run_date;
    m->params[1] = m->note_key;
    m->noting = true;
    if (error) {
        m->params[2] = error;
        maint_submit(m, note_error_sql, 3);
    } else {
        snprintf(m->number, sizeof(m->number), "%" PRId64, ms);
        m->params[2] = m->number;
        maint_submit(m, note_ms_sql, 3);
    }
}

static void maint_run_step(struct maintenance *m)
{
    m->params[0] = m->run_date;
    m->step_started_us = clock_mono_us();
    switch (m->step) {
    case MAINTENANCE_SET:
        /* Session-wide on this connection of the run's own: it bounds every step. */
        snprintf(m->sql, sizeof(m->sql), "SET statement_timeout = %" PRIu64,
                 (uint64_t)m->timeout_s * 1000);
        maint_submit(m, m->sql, 0);
        return;
    case MAINTENANCE_CLAIM:
        maint_submit(m, claim_sql, 1);
        return;
    case MAINTENANCE_PARTITIONS:
        snprintf(m->sql, sizeof(m->sql), PARTITIONS_SQL_FMT, m->partitions_ahead);
        maint_submit(m, m->sql, 1);
        return;
    case MAINTENANCE_DAILY:
        maint_submit(m, m->retention ? daily_sql : daily_skipped_sql, 1);
        return;
    case MAINTENANCE_ANALYZE:
        maint_submit(m, analyze_sql, 1);
        return;
    case MAINTENANCE_VACUUM_USAGE:
    case MAINTENANCE_VACUUM_PROMPT:
        if (!m->vacuum) {
            m->step = MAINTENANCE_FINISH;
            maint_run_step(m);
            return;
        }
        /* VACUUM refuses to run in a transaction block: one statement per query, no
         * params. */
        maint_submit(m,
                     m->step == MAINTENANCE_VACUUM_USAGE ? "VACUUM (ANALYZE) public.api_usage_logs"
                                                         : "VACUUM (ANALYZE) public.prompt_history",
                     0);
        return;
    case MAINTENANCE_FINISH:
        m->params[1] = m->step_failed ? "false" : "true";
        maint_submit(m, finish_sql, 2);
        return;
    }
}

static void maint_claimed(struct maintenance *m)
{
    m->done_day = m->run_day;
    snprintf(m->stats.last_run_date, sizeof(m->stats.last_run_date), "%s", m->run_date);
    m->stats.last_started_ms = clock_wall_ms();
    m->stats.last_finished_ms = 0;
    m->stats.last_error[0] = '\0';
    free(m->stats.last_result);
    m->stats.last_result = NULL;
    log_info("maintenance of %s: claimed, running", m->run_date);
}

static void maint_finished(struct maintenance *m, const struct pg_outcome *o)
{
    char error[512];
    if (!o->ok) {
        pg_outcome_describe(o, error, sizeof(error));
        maint_set_error(m, error);
        m->step_failed = true;
    } else if (o->result && PQntuples(o->result) == 1) {
        m->stats.last_result = xstrdup(PQgetvalue(o->result, 0, 0));
    }
    m->stats.runs++;
    m->stats.last_finished_ms = clock_wall_ms();
    if (m->step_failed) {
        m->stats.failed++;
        log_warn("maintenance of %s finished with errors in %" PRId64 " ms; the first: %s",
                 m->run_date, m->stats.last_finished_ms - m->stats.last_started_ms,
                 m->stats.last_error);
    } else {
        log_info("maintenance of %s finished in %" PRId64 " ms", m->run_date,
                 m->stats.last_finished_ms - m->stats.last_started_ms);
    }
    maint_end(m);
}

static void on_maint_done(struct pg_conn *pg, const struct pg_outcome *o, void *arg)
{
    (void)pg;
    struct maintenance *m = arg;
    char error[512];
    if (o->connection_lost || m->stopping) {
        pg_outcome_describe(o, error, sizeof(error));
        maint_abort(m, m->stopping ? "cancelled: the daemon is stopping" : error);
        return;
    }
    if (m->noting) {
        m->noting = false;
        if (!o->ok) {
            pg_outcome_describe(o, error, sizeof(error));
            log_warn("maintenance of %s: cannot record %s in usaged.maintenance_runs: %s",
                     m->run_date, m->note_key, error);
            maint_set_error(m, error);
            m->step_failed = true;
        }
        m->step++;
        maint_run_step(m);
        return;
    }
    switch (m->step) {
    case MAINTENANCE_SET:
    case MAINTENANCE_CLAIM:
        if (!o->ok) {
            pg_outcome_describe(o, error, sizeof(error));
            maint_abort(m, error);
            return;
        }
        if (m->step == MAINTENANCE_CLAIM) {
            if (!o->result || PQntuples(o->result) == 0) {
                m->done_day = m->run_day;
                m->stats.claimed_elsewhere++;
                log_info("maintenance of %s: already claimed by another daemon", m->run_date);
                maint_end(m);
                return;
            }
            maint_claimed(m);
        }
        break;
    case MAINTENANCE_PARTITIONS:
    case MAINTENANCE_DAILY:
    case MAINTENANCE_ANALYZE:
    case MAINTENANCE_VACUUM_USAGE:
    case MAINTENANCE_VACUUM_PROMPT:
        if (!o->ok) {
            pg_outcome_describe(o, error, sizeof(error));
            log_warn("maintenance of %s: %s failed: %s", m->run_date, maint_step_name(m->step),
                     error);
            maint_set_error(m, error);
            m->step_failed = true;
            maint_note(m, error, -1);
            return;
        }
        if (m->step == MAINTENANCE_VACUUM_USAGE || m->step == MAINTENANCE_VACUUM_PROMPT) {
            maint_note(m, NULL, (int64_t)(clock_mono_us() - m->step_started_us) / 1000);
            return;
        }
        break;
    case MAINTENANCE_FINISH:
        maint_finished(m, o);
        return;
    }
    m->step++;
    maint_run_step(m);
}

static void on_maint_ready(struct pg_conn *pg, void *arg)
{
    (void)pg;
    struct maintenance *m = arg;
    if (!m->connecting)
        return;
    m->connecting = false;
    maint_run_step(m);
}

static void on_maint_lost(struct pg_conn *pg, void *arg)
{
    /* The step in flight, if any, has completed as lost and ended the run. */
    (void)pg;
    (void)arg;
}

static const struct pg_callbacks maint_callbacks = {
    .ready = on_maint_ready,
    .lost = on_maint_lost,
    .notify = NULL,
};

/* Starts the day's run when its time has come (or passed: a daemon that was down at
 * that time catches up) and the day is not known to be claimed. The claim decides who
 * runs it. */
static void maint_check(struct maintenance *m)
{
    if (!m->started || m->stopping || m->at_minute < 0 || m->running || m->pg_open)
        return;
    int64_t now_s = clock_wall_ms() / 1000;
    int64_t day = now_s / 86400;
    if (day == m->done_day || (now_s % 86400) / 60 < m->at_minute)
        return;
    m->running = true;
    m->connecting = true;
    m->run_day = day;
    m->step = MAINTENANCE_SET;
    m->noting = false;
    m->step_failed = false;
    time_t t = (time_t)(day * 86400);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(m->run_date, sizeof(m->run_date), "%Y-%m-%d", &tm);
    pg_init(&m->pg, m->loop, "maintenance", m->conninfo, m->connect_timeout_ms, m->reconnect_max_ms,
            &maint_callbacks, m);
    m->pg_open = true;
    m->live++;
    pg_start(&m->pg);
}

static void on_maint_timer(uv_timer_t *t)
{
    maint_check(t->data);
}

static void on_maint_timer_closed(uv_handle_t *h)
{
    maintenance_release(h->data);
}

/* ---- lifecycle ---- */

void maintenance_init(struct maintenance *m, uv_loop_t *loop, const struct config *config)
{
    memset(m, 0, sizeof(*m));
    m->loop = loop;
    m->conninfo = xstrdup(config->postgres.conninfo);
    m->connect_timeout_ms = config->postgres.connect_timeout_s * 1000;
    m->reconnect_max_ms = config->postgres.reconnect_max_ms;
    uv_timer_init(loop, &m->timer);
    m->timer.data = m;
    m->live++;
    m->done_day = -1;
    maintenance_configure(m, config);
}

void maintenance_start(struct maintenance *m)
{
    m->started = true;
    uv_timer_start(&m->timer, on_maint_timer, 0, MAINTENANCE_CHECK_MS);
}

void maintenance_configure(struct maintenance *m, const struct config *config)
{
    m->at_minute = config->maintenance.at_minute;
    m->partitions_ahead = config->maintenance.partitions_ahead;
    m->retention = config->maintenance.retention;
    m->vacuum = config->maintenance.vacuum;
    m->timeout_s = config->maintenance.timeout_s;
    maint_check(m);
}

void maintenance_stop(struct maintenance *m)
{
    if (m->stopping)
        return;
    m->stopping = true;
    uv_timer_stop(&m->timer);
    /* A VACUUM may run for minutes: have the server stop it rather than wait. */
    if (m->running && !m->connecting)
        pg_cancel(&m->pg);
}

void maintenance_close(struct maintenance *m, void (*on_closed)(struct maintenance *m, void *arg),
                       void *arg)
{
    maintenance_stop(m);
    m->closing = true;
    m->on_closed = on_closed;
    m->closed_arg = arg;
    maint_close_pg(m);
    uv_close((uv_handle_t *)&m->timer, on_maint_timer_closed);
}

/* ---- stats ---- */

void maintenance_pack_stats(const struct maintenance *m, msgpack_packer *pk)
{
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
    rpc_pack_str_value(pk, "last_run_date", m->stats.last_run_date);
    rpc_pack_i64(pk, "last_started_ms", m->stats.last_started_ms);
    rpc_pack_i64(pk, "last_finished_ms", m->stats.last_finished_ms);
    rpc_pack_str_value(pk, "last_result", m->stats.last_result);
    rpc_pack_str_value(pk, "last_error", m->stats.last_error);
}
