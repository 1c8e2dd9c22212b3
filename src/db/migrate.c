/* migrate: see migrate.h. */
#include "migrate.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The bookkeeping lives in schema usaged_meta, owned by the migration runner, not in schema
 * usaged: usaged owns that one, and could put a view with a function of its own in place of the
 * table, which the runner (a superuser) would then run. */

/* An arbitrary constant naming the lock that keeps two migrators from running at once. */
#define MIGRATE_LOCK_KEY 7823465501LL

static bool exec_ok(PGconn *conn, const char *sql, char *err, size_t errlen, const char *what)
{
    PGresult *r = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(r);
    bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok) {
        const char *msg = PQresultErrorMessage(r);
        snprintf(err, errlen, "%s: %s", what, msg && *msg ? msg : PQerrorMessage(conn));
        size_t n = strlen(err);
        while (n > 0 && err[n - 1] == '\n')
            err[--n] = '\0';
    }
    PQclear(r);
    return ok;
}

static PGconn *connect_quiet(const char *conninfo, int timeout_s, char *err, size_t errlen)
{
    char timeout[16];
    snprintf(timeout, sizeof(timeout), "%d", timeout_s);
    const char *keys[] = {"dbname", "connect_timeout", NULL};
    const char *values[] = {conninfo, timeout, NULL};
    PGconn *conn = PQconnectdbParams(keys, values, 1);
    if (PQstatus(conn) != CONNECTION_OK) {
        snprintf(err, errlen, "cannot connect: %s", PQerrorMessage(conn));
        size_t n = strlen(err);
        while (n > 0 && err[n - 1] == '\n')
            err[--n] = '\0';
        PQfinish(conn);
        return NULL;
    }
    return conn;
}

static void no_notices(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

int migrate_apply(const char *conninfo, char *err, size_t errlen)
{
    PGconn *conn = connect_quiet(conninfo, 30, err, errlen);
    if (!conn)
        return -1;
    PQsetNoticeProcessor(conn, no_notices, NULL);
    int rc = -1;
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT pg_advisory_lock(%lld)", MIGRATE_LOCK_KEY);
    if (!exec_ok(conn, sql, err, errlen, "lock") ||
        !exec_ok(conn,
                 "CREATE SCHEMA IF NOT EXISTS usaged_meta;"
                 "CREATE TABLE IF NOT EXISTS usaged_meta.schema_migrations ("
                 " version integer PRIMARY KEY, name text NOT NULL,"
                 " applied_at timestamptz NOT NULL DEFAULT now())",
                 err, errlen, "usaged_meta.schema_migrations"))
        goto out;

    PGresult *r =
        PQexec(conn, "SELECT coalesce(max(version), 0) FROM usaged_meta.schema_migrations");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        snprintf(err, errlen, "reading usaged_meta.schema_migrations: %s", PQresultErrorMessage(r));
        PQclear(r);
        goto out;
    }
    int current = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    int applied = 0;
    for (size_t i = 0; i < migration_count; i++) {
        const struct migration *m = &migrations[i];
        if (m->version <= current)
            continue;
        char what[128];
        snprintf(what, sizeof(what), "migration %s", m->name);
        if (!exec_ok(conn, "BEGIN", err, errlen, what))
            goto out;
        if (!exec_ok(conn, m->sql, err, errlen, what)) {
            PQclear(PQexec(conn, "ROLLBACK"));
            goto out;
        }
        const char *params[2];
        char version[16];
        snprintf(version, sizeof(version), "%d", m->version);
        params[0] = version;
        params[1] = m->name;
        r = PQexecParams(
            conn, "INSERT INTO usaged_meta.schema_migrations (version, name) VALUES ($1, $2)", 2,
            NULL, params, NULL, NULL, 0);
        bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok)
            snprintf(err, errlen, "%s: recording it: %s", what, PQresultErrorMessage(r));
        PQclear(r);
        if (!ok || !exec_ok(conn, "COMMIT", err, errlen, what)) {
            PQclear(PQexec(conn, "ROLLBACK"));
            goto out;
        }
        printf("applied %s\n", m->name);
        applied++;
    }
    /* The daemon's role reads the bookkeeping at start (the migrations create the role). */
    if (!exec_ok(conn,
                 "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'usaged') THEN "
                 "GRANT USAGE ON SCHEMA usaged_meta TO usaged; "
                 "GRANT SELECT ON usaged_meta.schema_migrations TO usaged; END IF; END $$",
                 err, errlen, "granting usaged_meta.schema_migrations"))
        goto out;
    if ((size_t)current > migration_count)
        printf("nothing applied: the database is at migration %d, newer than this binary's %zu\n",
               current, migration_count);
    else if (applied == 0)
        printf("the database is up to date (migration %d)\n", current);
    rc = 0;
out:
    PQfinish(conn);
    return rc;
}

enum migrate_check migrate_check(const char *conninfo, int timeout_s, char *err, size_t errlen)
{
    PGconn *conn = connect_quiet(conninfo, timeout_s, err, errlen);
    if (!conn)
        return MIGRATE_UNREACHABLE;
    enum migrate_check result = MIGRATE_CURRENT;
    PGresult *r =
        PQexec(conn, "SELECT coalesce(max(version), 0) FROM usaged_meta.schema_migrations");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        if (state && strcmp(state, "42P01") == 0) {
            snprintf(err, errlen, "the database has no usaged schema; run usaged --migrate");
            result = MIGRATE_BEHIND;
        } else {
            snprintf(err, errlen, "cannot read usaged_meta.schema_migrations: %s",
                     PQresultErrorMessage(r));
            result = MIGRATE_UNREACHABLE;
        }
    } else {
        int current = atoi(PQgetvalue(r, 0, 0));
        if ((size_t)current < migration_count) {
            snprintf(err, errlen,
                     "the database is at migration %d of %zu; run usaged --migrate first", current,
                     migration_count);
            result = MIGRATE_BEHIND;
        } else if ((size_t)current > migration_count) {
            snprintf(err, errlen,
                     "the database is at migration %d, newer than this binary's %zu (a newer "
                     "usaged migrated it); upgrade this one",
                     current, migration_count);
            result = MIGRATE_AHEAD;
        }
    }
    PQclear(r);
    PQfinish(conn);
    return result;
}
