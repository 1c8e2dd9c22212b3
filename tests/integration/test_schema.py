"""The database schema of sql/ (DATABASE.md, issue 3) against a throwaway PostgreSQL 15:
migrations, constraints, row level security, partitions, retention, analytics, NOTIFY, the
daemon's privileges and API keys at rest. The SQL is tested on its own, applied with psql the
way `usaged --migrate` applies it (each file in one transaction)."""

import contextlib
import datetime
import io
import json
import re
import select
import subprocess
import uuid

import psycopg2
import psycopg2.errors
import pytest

from conftest import apply_migrations_with_psql, migration_files
import servers

USER_TABLES = ["user_profiles", "user_preferences", "user_sessions", "api_configurations",
               "api_usage_logs", "prompt_history", "prompt_templates", "feedback",
               "feedback_tags"]
ALL_TABLES = ["user_profiles", "user_preferences", "user_sessions", "api_providers",
              "api_configurations", "api_usage_logs", "prompt_frameworks", "prompt_history",
              "prompt_templates", "feedback", "feedback_categories", "feedback_tags",
              "feedback_analytics", "system_config", "usage_limits", "usage_alerts"]
VIEWS = ["analytics.api_usage_daily", "analytics.api_usage_hourly_provider",
         "analytics.prompt_generations_daily"]


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------

def migrate(pg, dbname):
    try:
        apply_migrations_with_psql(pg, dbname)
    except subprocess.CalledProcessError as e:
        pytest.fail(f"migration failed: {e.cmd[-1]}\n{e.stderr}")
    return dbname


def connect(pg, dbname, user=None, autocommit=True):
    conn = psycopg2.connect(pg.dsn(dbname, user))
    conn.autocommit = autocommit
    return conn


@pytest.fixture
def db(pg, fresh_db):
    """A freshly migrated database; yields a superuser connection (autocommit)."""
    migrate(pg, fresh_db)
    conn = connect(pg, fresh_db)
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def shared_db(pg):
    """One migrated database for tests that leave nothing behind (they roll back)."""
    pg.createdb("schema_shared")
    migrate(pg, "schema_shared")
    return "schema_shared"


def claims(user_id=None, role="authenticated", admin=False):
    c = {"role": role}
    if user_id is not None:
        c["sub"] = str(user_id)
    if admin:
        c["app_metadata"] = {"role": "admin"}
    return json.dumps(c)


@contextlib.contextmanager
def acting_as(conn, role, user_id=None, admin=False):
    """Runs the block as a database role with the JWT claims PostgREST would set."""
    with conn.cursor() as cur:
        cur.execute("SELECT set_config('request.jwt.claims', %s, false)",
                    (claims(user_id, role, admin),))
        cur.execute(f"SET ROLE {role}")
    try:
        yield conn
    finally:
        if not conn.autocommit and conn.status != psycopg2.extensions.STATUS_READY:
            conn.rollback()
        with conn.cursor() as cur:
            cur.execute("RESET ROLE")
            cur.execute("SELECT set_config('request.jwt.claims', '', false)")


def q(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else None


def q1(conn, sql, args=None):
    rows = q(conn, sql, args)
    return rows[0][0] if rows else None


def new_user(conn, email=None):
    uid = uuid.uuid4()
    q(conn, "INSERT INTO auth.users (id, email) VALUES (%s, %s)",
      (str(uid), email or f"{uid}@example.com"))
    return str(uid)


def month_start(conn, months_from_now):
    return q1(conn, "SELECT (date_trunc('month', now() AT TIME ZONE 'UTC') "
                    "+ make_interval(months => %s))::date", (months_from_now,))


def partition_of(conn, table, row_id):
    return q1(conn, f"SELECT tableoid::regclass::text FROM public.{table} WHERE id = %s",
              (row_id,))


def seed_rows_for(conn, uid, n=1):
    """n rows in every user table for one user; returns the ids of feedback rows."""
    feedback_ids = []
    q(conn, "INSERT INTO public.user_profiles (user_id, display_name) VALUES (%s, 'x')", (uid,))
    q(conn, "INSERT INTO public.user_preferences (user_id) VALUES (%s)", (uid,))
    q(conn, "INSERT INTO public.api_configurations (user_id, provider, api_key_encrypted) "
            "VALUES (%s, 'openai', extensions.armor(extensions.pgp_sym_encrypt('sk-x', 'k')))", (uid,))
    for _ in range(n):
        q(conn, "INSERT INTO public.user_sessions (user_id) VALUES (%s)", (uid,))
        q(conn, "INSERT INTO public.api_usage_logs (user_id, provider, status_code) "
                "VALUES (%s, 'openai', 200)", (uid,))
        q(conn, "INSERT INTO public.prompt_history (user_id, status) VALUES (%s, 'completed')",
          (uid,))
        q(conn, "INSERT INTO public.prompt_templates (user_id, name, template_content) "
                "VALUES (%s, 'mine', 'do {{x}}')", (uid,))
        fid = q1(conn, "INSERT INTO public.feedback (user_id, message) VALUES (%s, 'hi') "
                       "RETURNING id", (uid,))
        q(conn, "INSERT INTO public.feedback_tags (feedback_id, tag) VALUES (%s, 'triaged')",
          (fid,))
        feedback_ids.append(fid)
    return feedback_ids


def visible_owners(conn, table):
    """The user_id of every row of table that the current role can see."""
    if table == "feedback_tags":
        return [r[0] for r in q(conn, "SELECT f.user_id::text FROM public.feedback_tags t "
                                      "JOIN public.feedback f ON f.id = t.feedback_id")]
    if table == "prompt_templates":  # public templates are everyone's to read
        return [r[0] for r in q(conn, "SELECT user_id::text FROM public.prompt_templates "
                                      "WHERE NOT is_public")]
    return [r[0] for r in q(conn, f"SELECT user_id::text FROM public.{table}")]


# ------------------------------------------------------------------------------------------
# Migrations
# ------------------------------------------------------------------------------------------

def test_migrations_apply_to_an_empty_database(db):
    tables = {r[0] for r in q(db, "SELECT c.relname FROM pg_class c JOIN pg_namespace n "
                                  "ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
                                  "AND c.relkind IN ('r', 'p') AND NOT c.relispartition")}
    assert tables == set(ALL_TABLES)
    # Schema usaged: the daemon's own tables, and the monthly partitions of the log tables.
    assert {r[0] for r in q(db, "SELECT tablename FROM pg_tables WHERE schemaname = 'usaged'")
            if not re.match(r"^(api_usage_logs|prompt_history)_\d{4}_\d{2}$", r[0])} \
        == {"rejects", "refresh_state", "maintenance_runs"}
    # usaged_meta.schema_migrations belongs to `usaged --migrate`, not to the migrations.
    assert q1(db, "SELECT to_regclass('usaged_meta.schema_migrations')") is None


def test_migrations_hold_only_sql_that_runs_in_a_transaction():
    files = migration_files()
    assert len(files) >= 10
    for path in files:
        code = re.sub(r"--[^\n]*", "", open(path).read())
        assert not re.search(r"^\s*\\", code, re.M), f"{path}: psql meta-command"
        assert not re.search(r"(INDEX|DETACH PARTITION \S+)\s+CONCURRENTLY", code, re.I), path
        assert not re.search(r"^\s*(VACUUM|CREATE DATABASE|ALTER SYSTEM)\b", code, re.I | re.M), path


def test_compat_migration_can_run_again_on_a_migrated_database(pg, db):
    dbname = db.get_dsn_parameters()["dbname"]
    subprocess.run([servers.PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1",
                    "--single-transaction", "-d", pg.dsn(dbname), "-f", migration_files()[0]],
                   check=True, capture_output=True, text=True)


# What anon may do, table by table (everything else: nothing), and the functions it may call.
ANON_TABLE_PRIVILEGES = {"api_providers": {"SELECT"}, "prompt_frameworks": {"SELECT"},
                         "prompt_templates": {"SELECT"}, "feedback_categories": {"SELECT"},
                         "system_config": {"SELECT"}, "feedback": {"INSERT"}}
ANON_FUNCTIONS = {"is_admin", "validate_api_key_format", "prompt_history_search_document",
                  "prompt_template_search_document"}


def assert_anon_privileges_are_exactly_the_intended_ones(conn):
    relations = q(conn, "SELECT c.relname, c.oid FROM pg_class c WHERE c.relnamespace = "
                        "'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')")
    for name, oid in relations:
        granted = {p for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES",
                               "TRIGGER")
                   if q1(conn, "SELECT has_table_privilege('anon', %s::oid, %s)", (oid, p))}
        assert granted == ANON_TABLE_PRIVILEGES.get(name, set()), name
    functions = {r[0] for r in q(conn, "SELECT p.proname FROM pg_proc p WHERE p.pronamespace IN "
                                       "('public'::regnamespace, 'usaged'::regnamespace) "
                                       "AND has_function_privilege('anon', p.oid, 'EXECUTE')")}
    assert functions == ANON_FUNCTIONS
    assert not q1(conn, "SELECT has_schema_privilege('anon', 'analytics', 'USAGE')")
    assert not q1(conn, "SELECT has_schema_privilege('anon', 'usaged', 'USAGE')")
    assert not q1(conn, "SELECT has_schema_privilege('authenticated', 'analytics', 'USAGE')")


def test_anon_has_exactly_the_intended_privileges(db):
    assert_anon_privileges_are_exactly_the_intended_ones(db)


# The migrations as Supabase's non-superuser postgres: test_supabase.py.


def test_columns_keep_the_names_and_types_of_the_schema_document(db):
    expected = {
        "user_profiles": "id uuid, user_id uuid, display_name character varying(100), "
                         "avatar_url text, bio text, preferences jsonb, is_active boolean, "
                         "last_login_at timestamptz, created_at timestamptz, updated_at timestamptz",
        "user_preferences": "id uuid, user_id uuid, selected_model character varying(50), "
                            "selected_framework character varying(50), theme character varying(20), "
                            "language character varying(10), enable_notifications boolean, "
                            "enable_analytics boolean, enable_history boolean, enable_feedback boolean, "
                            "max_history_days integer, auto_cleanup boolean, created_at timestamptz, "
                            "updated_at timestamptz",
        "api_providers": "id uuid, name character varying(50), display_name character varying(100), "
                         "base_url text, api_key_pattern text, is_enabled boolean, "
                         "max_requests_per_minute integer, max_requests_per_day integer, "
                         "supported_models jsonb, validation_rules jsonb, created_at timestamptz, "
                         "updated_at timestamptz",
        "api_configurations": "id uuid, user_id uuid, provider character varying(50), "
                              "api_key_encrypted text, is_active boolean, is_validated boolean, "
                              "last_validated_at timestamptz, validation_error text, usage_count integer, "
                              "last_used_at timestamptz, created_at timestamptz, updated_at timestamptz",
        "api_usage_logs": "id uuid, user_id uuid, provider character varying(50), endpoint text, "
                          "request_size integer, response_size integer, response_time_ms integer, "
                          "status_code integer, error_message text, created_at timestamptz",
        "prompt_frameworks": "id uuid, name character varying(50), display_name character varying(100), "
                             "description text, components jsonb, template text, examples jsonb, "
                             "is_enabled boolean, sort_order integer, created_at timestamptz, "
                             "updated_at timestamptz",
        "prompt_history": "id uuid, user_id uuid, framework_id character varying(50), "
                          "framework_name character varying(100), model character varying(50), "
                          "provider character varying(50), user_input text, ai_response text, "
                          "tone character varying(50), length character varying(50), temperature numeric, "
                          "max_tokens integer, vibe_coding boolean, processing_time_ms integer, "
                          "tokens_used integer, cost_usd numeric, status character varying(20), "
                          "error_message text, error_code character varying(50), "
                          "created_at timestamptz, updated_at timestamptz",
        "prompt_templates": "id uuid, user_id uuid, name character varying(100), description text, "
                            "framework_id character varying(50), template_content text, "
                            "variables jsonb, is_public boolean, is_active boolean, usage_count integer, "
                            "created_at timestamptz, updated_at timestamptz",
        "feedback": "id uuid, user_id uuid, message text, feedback_type character varying(50), "
                    "priority character varying(20), status character varying(20), "
                    "contact_email character varying(255), contact_name character varying(100), "
                    "user_agent text, browser_info jsonb, device_info jsonb, admin_response text, "
                    "admin_user_id uuid, responded_at timestamptz, rating integer, "
                    "created_at timestamptz, updated_at timestamptz",
    }
    for table, columns in expected.items():
        actual = q(db, "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                       "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped "
                       "ORDER BY a.attnum", (f"public.{table}",))
        got = ", ".join(f"{n} {t}".replace("timestamp with time zone", "timestamptz")
                        for n, t in actual)
        assert got == columns, table


def test_every_table_has_row_level_security(db):
    missing = q(db, "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE n.nspname IN ('public', 'usaged') "
                    "AND c.relkind IN ('r', 'p') AND NOT c.relrowsecurity")
    assert missing == []
    forced = q(db, "SELECT c.oid::regclass::text FROM pg_class c WHERE c.relforcerowsecurity")
    assert forced == []


def test_every_foreign_key_has_an_index_leading_with_its_columns(db):
    unindexed = q(db, """
        SELECT con.conrelid::regclass::text, con.conname
          FROM pg_constraint con
          JOIN pg_class c ON c.oid = con.conrelid
         WHERE con.contype = 'f' AND NOT c.relispartition
           AND c.relnamespace IN ('public'::regnamespace, 'usaged'::regnamespace)
           AND NOT EXISTS (
               SELECT 1 FROM pg_index i
                WHERE i.indrelid = con.conrelid
                  AND (i.indkey::int2[])[0:array_length(con.conkey, 1) - 1] = con.conkey)""")
    assert unindexed == []


def test_api_usage_logs_has_at_most_three_secondary_indexes(db):
    n = q1(db, "SELECT count(*) FROM pg_index WHERE indrelid = 'public.api_usage_logs'::regclass "
               "AND NOT indisprimary")
    assert n <= 3


# ------------------------------------------------------------------------------------------
# Constraints
# ------------------------------------------------------------------------------------------

U = "'00000000-0000-0000-0000-00000000000a'"  # a user each case creates first

# Each bad row, and the constraint that must refuse it.
BAD_ROWS = {
    "usage_status_code_below_100": (
        f"INSERT INTO public.api_usage_logs (user_id, provider, status_code) VALUES ({U}, 'openai', 99)",
        "api_usage_logs_status_code_check"),
    "usage_status_code_above_599": (
        f"INSERT INTO public.api_usage_logs (user_id, provider, status_code) VALUES ({U}, 'openai', 600)",
        "api_usage_logs_status_code_check"),
    "usage_negative_request_size": (
        f"INSERT INTO public.api_usage_logs (user_id, provider, request_size) VALUES ({U}, 'openai', -1)",
        "api_usage_logs_request_size_check"),
    "usage_negative_response_size": (
        f"INSERT INTO public.api_usage_logs (user_id, provider, response_size) VALUES ({U}, 'openai', -1)",
        "api_usage_logs_response_size_check"),
    "usage_negative_response_time": (
        f"INSERT INTO public.api_usage_logs (user_id, provider, response_time_ms) VALUES ({U}, 'openai', -5)",
        "api_usage_logs_response_time_ms_check"),
    "usage_empty_provider": (
        f"INSERT INTO public.api_usage_logs (user_id, provider) VALUES ({U}, '')",
        "api_usage_logs_provider_check"),
    "history_unknown_status": (
        f"INSERT INTO public.prompt_history (user_id, status) VALUES ({U}, 'done')",
        "prompt_history_status_check"),
    "history_temperature_above_2": (
        f"INSERT INTO public.prompt_history (user_id, status, temperature) VALUES ({U}, 'completed', 2.5)",
        "prompt_history_temperature_check"),
    "history_negative_temperature": (
        f"INSERT INTO public.prompt_history (user_id, status, temperature) VALUES ({U}, 'completed', -0.1)",
        "prompt_history_temperature_check"),
    "history_negative_tokens": (
        f"INSERT INTO public.prompt_history (user_id, status, tokens_used) VALUES ({U}, 'completed', -1)",
        "prompt_history_tokens_used_check"),
    "history_negative_max_tokens": (
        f"INSERT INTO public.prompt_history (user_id, status, max_tokens) VALUES ({U}, 'completed', -1)",
        "prompt_history_max_tokens_check"),
    "history_negative_cost": (
        f"INSERT INTO public.prompt_history (user_id, status, cost_usd) VALUES ({U}, 'completed', -0.01)",
        "prompt_history_cost_usd_check"),
    "history_nan_cost": (
        f"INSERT INTO public.prompt_history (user_id, status, cost_usd) VALUES ({U}, 'completed', 'NaN')",
        "prompt_history_cost_usd_check"),
    "feedback_rating_0": (
        f"INSERT INTO public.feedback (user_id, message, rating) VALUES ({U}, 'm', 0)",
        "feedback_rating_check"),
    "feedback_rating_6": (
        f"INSERT INTO public.feedback (user_id, message, rating) VALUES ({U}, 'm', 6)",
        "feedback_rating_check"),
    "feedback_unknown_priority": (
        f"INSERT INTO public.feedback (user_id, message, priority) VALUES ({U}, 'm', 'critical')",
        "feedback_priority_check"),
    "feedback_unknown_status": (
        f"INSERT INTO public.feedback (user_id, message, status) VALUES ({U}, 'm', 'pending')",
        "feedback_status_check"),
    "feedback_empty_message": (
        f"INSERT INTO public.feedback (user_id, message) VALUES ({U}, '   ')",
        "feedback_message_check"),
    "preferences_unknown_theme": (
        f"INSERT INTO public.user_preferences (user_id, theme) VALUES ({U}, 'neon')",
        "user_preferences_theme_check"),
    "provider_zero_limit": (
        "INSERT INTO public.api_providers (name, display_name, max_requests_per_minute) VALUES ('p', 'P', 0)",
        "api_providers_max_requests_per_minute_check"),
    "provider_minute_limit_above_day_limit": (
        "INSERT INTO public.api_providers (name, display_name, max_requests_per_minute, "
        "max_requests_per_day) VALUES ('p', 'P', 100, 10)",
        "api_providers_minute_within_day"),
    "configuration_plaintext_key": (
        f"INSERT INTO public.api_configurations (user_id, provider, api_key_encrypted) "
        f"VALUES ({U}, 'openai', 'sk-abcdefghijklmnopqrstuvwxyz')",
        "api_configurations_api_key_encrypted_armored"),
    "builtin_template_not_public": (
        "INSERT INTO public.prompt_templates (name, template_content) VALUES ('t', 'c')",
        "prompt_templates_builtin_is_public"),
    "retention_days_zero": (
        "UPDATE public.system_config SET value = '0' WHERE key = 'api_usage_logs_retention_days'",
        "system_config_days_check"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_constraints_refuse_bad_row(pg, shared_db, case):
    sql, constraint = BAD_ROWS[case]
    conn = connect(pg, shared_db, autocommit=False)
    try:
        q(conn, f"INSERT INTO auth.users (id) VALUES ({U})")
        with pytest.raises(psycopg2.errors.CheckViolation) as e:
            q(conn, sql)
        assert e.value.diag.constraint_name == constraint
    finally:
        conn.rollback()
        conn.close()


def test_provider_without_key_pattern_is_accepted_and_invalid_pattern_refused(pg, shared_db):
    conn = connect(pg, shared_db, autocommit=False)
    try:
        q(conn, "INSERT INTO public.api_providers (name, display_name) VALUES ('local', 'Local')")
        with pytest.raises(psycopg2.errors.InvalidRegularExpression):
            q(conn, "INSERT INTO public.api_providers (name, display_name, api_key_pattern) "
                    "VALUES ('broken', 'Broken', '^sk-[')")
    finally:
        conn.rollback()
        conn.close()


def test_constraints_accept_a_complete_good_row(pg, shared_db):
    conn = connect(pg, shared_db, autocommit=False)
    try:
        uid = new_user(conn)
        q(conn, "INSERT INTO public.api_usage_logs (user_id, provider, endpoint, request_size, "
                "response_size, response_time_ms, status_code) "
                "VALUES (%s, 'openai', '/v1/chat', 0, 10, 0, 429)", (uid,))
        q(conn, "INSERT INTO public.prompt_history (user_id, status, temperature, max_tokens, "
                "tokens_used, cost_usd, vibe_coding) VALUES (%s, 'failed', 2, 0, 0, 0, true)",
          (uid,))
        assert q1(conn, "SELECT vibe_coding FROM public.prompt_history WHERE user_id = %s",
                  (uid,)) is True
    finally:
        conn.rollback()
        conn.close()


def test_updated_at_changes_on_update(pg, shared_db):
    conn = connect(pg, shared_db, autocommit=False)
    try:
        uid = new_user(conn)
        q(conn, "INSERT INTO public.user_profiles (user_id, updated_at) "
                "VALUES (%s, now() - interval '1 day')", (uid,))
        q(conn, "UPDATE public.user_profiles SET bio = 'b' WHERE user_id = %s", (uid,))
        assert q1(conn, "SELECT updated_at = now() FROM public.user_profiles WHERE user_id = %s",
                  (uid,))
    finally:
        conn.rollback()
        conn.close()


# ------------------------------------------------------------------------------------------
# Row level security
# ------------------------------------------------------------------------------------------

def test_each_user_sees_only_their_own_rows_in_every_user_table(db):
    a, b = new_user(db), new_user(db)
    seed_rows_for(db, a, n=1)
    seed_rows_for(db, b, n=2)
    for uid, own in ((a, 1), (b, 2)):
        with acting_as(db, "authenticated", uid):
            for table in USER_TABLES:
                owners = visible_owners(db, table)
                assert owners and set(owners) == {uid}, table
                if table not in ("user_profiles", "user_preferences", "api_configurations"):
                    assert len(owners) == own, table


def test_admin_sees_every_row(db):
    a, b, admin = new_user(db), new_user(db), new_user(db)
    seed_rows_for(db, a)
    seed_rows_for(db, b)
    with acting_as(db, "authenticated", admin, admin=True):
        for table in USER_TABLES:
            assert set(visible_owners(db, table)) == {a, b}, table
        assert q1(db, "SELECT public.is_admin()") is True
    with acting_as(db, "authenticated", a):
        assert q1(db, "SELECT public.is_admin()") is False


def test_users_cannot_write_rows_of_another_user(db):
    a, b = new_user(db), new_user(db)
    seed_rows_for(db, b)
    with acting_as(db, "authenticated", a):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            q(db, "INSERT INTO public.user_profiles (user_id) VALUES (%s)", (b,))
        with db.cursor() as cur:
            cur.execute("UPDATE public.user_preferences SET theme = 'dark'")
            assert cur.rowcount == 0
            cur.execute("DELETE FROM public.prompt_templates")
            assert cur.rowcount == 0
        # The logs are written by the daemon and service_role only.
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            q(db, "INSERT INTO public.api_usage_logs (user_id, provider) VALUES (%s, 'openai')",
              (a,))
    with acting_as(db, "service_role"):
        q(db, "INSERT INTO public.api_usage_logs (user_id, provider) VALUES (%s, 'openai')", (a,))


def test_anon_reads_enabled_providers_frameworks_and_public_templates_only(db):
    owner = new_user(db)
    q(db, "UPDATE public.api_providers SET is_enabled = false WHERE name = 'groq'")
    q(db, "UPDATE public.prompt_frameworks SET is_enabled = false WHERE name = 'tag'")
    q(db, "DELETE FROM public.prompt_templates")
    q(db, "INSERT INTO public.prompt_templates (user_id, name, template_content, is_public, "
          "is_active) VALUES (%(u)s, 'public', 'c', true, true), "
          "(%(u)s, 'retired', 'c', true, false), (%(u)s, 'private', 'c', false, true)",
      {"u": owner})
    with acting_as(db, "anon"):
        providers = {r[0] for r in q(db, "SELECT name FROM public.api_providers")}
        assert providers == {"openai", "anthropic", "google", "mistral"}
        frameworks = {r[0] for r in q(db, "SELECT name FROM public.prompt_frameworks")}
        assert "tag" not in frameworks and {"race", "care", "ape", "create", "risen"} <= frameworks
        assert [r[0] for r in q(db, "SELECT name FROM public.prompt_templates")] == ["public"]
        assert q1(db, "SELECT count(*) FROM public.system_config WHERE NOT is_public") == 0
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            q(db, "SELECT 1 FROM public.user_profiles")


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_anon_and_authenticated_cannot_read_analytics_or_partitions(db, role):
    uid = new_user(db)
    for view in VIEWS:
        with acting_as(db, role, uid):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege,
                               match="permission denied for schema analytics"):
                q(db, f"SELECT * FROM {view}")
    with acting_as(db, role, uid):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            q(db, "SELECT * FROM public.api_usage_logs_default")
    if role == "anon":
        with acting_as(db, role):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                q(db, "SELECT * FROM public.my_api_usage_daily")


def test_only_admins_set_feedback_status_or_respond(db):
    user, admin = new_user(db), new_user(db)
    with acting_as(db, "authenticated", user):
        fid = q1(db, "INSERT INTO public.feedback (user_id, message, rating) "
                     "VALUES (%s, 'slow', 3) RETURNING id", (user,))
        q(db, "UPDATE public.feedback SET rating = 4 WHERE id = %s", (fid,))
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            q(db, "UPDATE public.feedback SET status = 'resolved' WHERE id = %s", (fid,))
    with acting_as(db, "anon"):
        q(db, "INSERT INTO public.feedback (message) VALUES ('anonymous')")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            q(db, "INSERT INTO public.feedback (user_id, message) VALUES (%s, 'x')", (user,))
    with acting_as(db, "authenticated", admin, admin=True):
        q(db, "UPDATE public.feedback SET status = 'resolved', admin_response = 'fixed' "
              "WHERE id = %s", (fid,))
    row = q(db, "SELECT status, admin_user_id::text, responded_at IS NOT NULL "
                "FROM public.feedback WHERE id = %s", (fid,))[0]
    assert row == ("resolved", admin, True)


# ------------------------------------------------------------------------------------------
# Analytics
# ------------------------------------------------------------------------------------------

def test_every_view_refreshes_concurrently_as_usaged_with_right_aggregates(db):
    a, b = new_user(db), new_user(db)
    day = "2031-03-04"
    for status, ms, req, resp in ((200, 100, 10, 1000), (500, 200, 20, 2000),
                                  (429, 300, 30, 3000), (200, 400, 40, 4000)):
        q(db, "INSERT INTO public.api_usage_logs (user_id, provider, status_code, "
              "response_time_ms, request_size, response_size, created_at) "
              "VALUES (%s, 'openai', %s, %s, %s, %s, %s)", (a, status, ms, req, resp,
                                                             f"{day} 10:15:00+00"))
    q(db, "INSERT INTO public.api_usage_logs (user_id, provider, status_code, created_at) "
          "VALUES (%s, 'openai', 200, %s)", (b, f"{day} 23:59:59+00"))
    # 23:30 at UTC-02 is the next day in UTC.
    q(db, "INSERT INTO public.api_usage_logs (user_id, provider, status_code, created_at) "
          "VALUES (%s, 'openai', 200, %s)", (a, f"{day} 23:30:00-02"))
    for status, tokens, cost, framework in (("completed", 100, "0.01", "race"),
                                            ("completed", 50, "0.005", "race"),
                                            ("failed", None, None, "race"),
                                            ("completed", 7, "0.001", None)):
        q(db, "INSERT INTO public.prompt_history (user_id, framework_id, model, provider, status, "
              "tokens_used, cost_usd, created_at) VALUES (%s, %s, 'gpt-4o', 'openai', %s, %s, "
              "%s, %s)", (a, framework, status, tokens, cost, f"{day} 08:00:00+00"))

    with acting_as(db, "usaged"):
        for view in VIEWS:
            q(db, f"REFRESH MATERIALIZED VIEW {view}")
            q(db, f"REFRESH MATERIALIZED VIEW CONCURRENTLY {view}")

    daily = q(db, "SELECT requests, errors, rate_limited, avg_response_time_ms, "
                  "p95_response_time_ms, request_bytes, response_bytes "
                  "FROM analytics.api_usage_daily WHERE day = %s AND user_id = %s "
                  "AND provider = 'openai'", (day, a))
    assert daily == [(4, 2, 1, 250, 385.0, 100, 10000)]
    assert q1(db, "SELECT requests FROM analytics.api_usage_daily WHERE day = '2031-03-05' "
                  "AND user_id = %s", (a,)) == 1

    hourly = q(db, "SELECT hour, requests, errors, rate_limited FROM "
                   "analytics.api_usage_hourly_provider WHERE provider = 'openai' ORDER BY hour")
    assert [(h.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H"), r, e, rl)
            for h, r, e, rl in hourly] == [("2031-03-04 10", 4, 2, 1), ("2031-03-04 23", 1, 0, 0),
                                           ("2031-03-05 01", 1, 0, 0)]

    prompts = q(db, "SELECT framework_id, generations, completed, failed, tokens_used, cost_usd "
                    "FROM analytics.prompt_generations_daily WHERE day = %s ORDER BY 1", (day,))
    assert [(f, g, c, fl, t, str(cost)) for f, g, c, fl, t, cost in prompts] == \
        [("", 1, 1, 0, 7, "0.001"), ("race", 3, 2, 1, 150, "0.015")]

    with acting_as(db, "authenticated", a):
        mine = q(db, "SELECT day::text, requests FROM public.my_api_usage_daily ORDER BY 1")
        assert mine == [(day, 4), ("2031-03-05", 1)]
        assert q1(db, "SELECT sum(generations) FROM public.my_prompt_generations_daily") == 4
    with acting_as(db, "authenticated", b):
        assert q(db, "SELECT day::text, requests FROM public.my_api_usage_daily") == [(day, 1)]
        assert q(db, "SELECT * FROM public.my_prompt_generations_daily") == []


def test_analytics_views_are_owned_by_usaged_with_a_unique_index(db):
    for view in VIEWS:
        assert q1(db, "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = %s::regclass",
                  (view,)) == "usaged"
        assert q1(db, "SELECT count(*) FROM pg_index WHERE indrelid = %s::regclass "
                      "AND indisunique AND indpred IS NULL", (view,)) == 1


# ------------------------------------------------------------------------------------------
# Partitions and retention
# ------------------------------------------------------------------------------------------

def test_partitions_exist_for_this_month_and_the_next_three_owned_by_usaged(db):
    for table in ("api_usage_logs", "prompt_history"):
        parts = q(db, "SELECT c.relname, pg_get_userbyid(c.relowner), c.relrowsecurity "
                      "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                      "WHERE i.inhparent = %s::regclass ORDER BY 1", (f"public.{table}",))
        names = [p[0] for p in parts]
        expected = [f"{table}_{month_start(db, i).strftime('%Y_%m')}" for i in range(4)]
        assert names == sorted(expected + [f"{table}_default"])
        assert all(owner == "usaged" and rls for _, owner, rls in parts)


def test_row_of_a_month_without_partition_lands_in_default_and_moves_when_it_gets_one(db):
    uid = new_user(db)
    log_id = q1(db, "INSERT INTO public.api_usage_logs (user_id, provider, created_at) "
                    "VALUES (%s, 'openai', '2031-01-15 12:00:00+00') RETURNING id", (uid,))
    hist_id = q1(db, "INSERT INTO public.prompt_history (user_id, status, created_at) "
                     "VALUES (%s, 'completed', '2031-01-31 23:59:59+00') RETURNING id", (uid,))
    assert partition_of(db, "api_usage_logs", log_id) == "api_usage_logs_default"
    assert partition_of(db, "prompt_history", hist_id) == "prompt_history_default"

    with acting_as(db, "usaged"):
        assert q1(db, "SELECT usaged.create_partition('api_usage_logs', '2031-01-20')") == 1
        assert q1(db, "SELECT usaged.create_partition('prompt_history', '2031-01-01')") == 1
        # Again: the partition exists, nothing to do.
        assert q1(db, "SELECT usaged.create_partition('api_usage_logs', '2031-01-01')") is None

    assert partition_of(db, "api_usage_logs", log_id) == "usaged.api_usage_logs_2031_01"
    assert partition_of(db, "prompt_history", hist_id) == "usaged.prompt_history_2031_01"
    assert q1(db, "SELECT count(*) FROM public.api_usage_logs_default") == 0
    assert q1(db, "SELECT pg_get_userbyid(relowner) FROM pg_class "
                  "WHERE relname = 'api_usage_logs_2031_01'") == "usaged"
    # The default partition is attached again and still takes rows of months without one.
    other = q1(db, "INSERT INTO public.api_usage_logs (user_id, provider, created_at) "
                   "VALUES (%s, 'openai', '2031-02-01 00:00:00+00') RETURNING id", (uid,))
    assert partition_of(db, "api_usage_logs", other) == "api_usage_logs_default"


def test_create_partitions_moves_rows_out_of_default_and_is_idempotent(db):
    uid = new_user(db)
    far = month_start(db, 5)
    row = q1(db, "INSERT INTO public.api_usage_logs (user_id, provider, created_at) "
                 "VALUES (%s, 'openai', %s::timestamp AT TIME ZONE 'UTC' + interval '3 days') "
                 "RETURNING id", (uid, far))
    created = q(db, "SELECT parent_table, partition_name, rows_moved "
                    "FROM usaged.create_partitions(6) ORDER BY 1, 2")
    expected = []
    for table in ("api_usage_logs", "prompt_history"):
        for i in (4, 5, 6):
            moved = 1 if (table, i) == ("api_usage_logs", 5) else 0
            expected.append((table, f"usaged.{table}_{month_start(db, i).strftime('%Y_%m')}",
                             moved))
    assert created == expected
    assert partition_of(db, "api_usage_logs", row) == f"usaged.api_usage_logs_{far.strftime('%Y_%m')}"
    assert q(db, "SELECT * FROM usaged.create_partitions(6)") == []


def test_retention_removes_what_it_should_and_nothing_else(db):
    keep_user, clean_user, no_prefs_user = new_user(db), new_user(db), new_user(db)
    # api_usage_logs: retention is 90 days (seeded). An old month with a partition of its own
    # (dropped whole), old rows in the default partition (deleted), recent rows (kept).
    old_month = q1(db, "SELECT (date_trunc('month', now() AT TIME ZONE 'UTC' - interval '200 days'))::date")
    q(db, "SELECT usaged.create_partition('api_usage_logs', %s)", (old_month,))
    old_partition = f"api_usage_logs_{old_month.strftime('%Y_%m')}"
    ages = {"200 days": False, "120 days": False, "91 days": False,
            "89 days": True, "1 day": True, "1 hour": True}
    for age in ages:
        for uid in (keep_user, clean_user):
            q(db, "INSERT INTO public.api_usage_logs (user_id, provider, endpoint, created_at) "
                  "VALUES (%s, 'openai', %s, now() - %s::interval)", (uid, age, age))
    assert q1(db, f"SELECT count(*) FROM usaged.{old_partition}") == 2

    # prompt_history: only users with auto_cleanup lose rows older than their max_history_days.
    q(db, "INSERT INTO public.user_preferences (user_id, max_history_days, auto_cleanup) "
          "VALUES (%s, 30, false), (%s, 30, true)", (keep_user, clean_user))
    for uid in (keep_user, clean_user, no_prefs_user):
        for age in ("40 days", "20 days"):
            q(db, "INSERT INTO public.prompt_history (user_id, status, error_code, created_at) "
                  "VALUES (%s, 'completed', %s, now() - %s::interval)", (uid, age, age))

    with acting_as(db, "usaged"):
        result = q1(db, "SELECT usaged.apply_retention()")

    assert q1(db, "SELECT to_regclass(%s)", (f"usaged.{old_partition}",)) is None
    assert f"usaged.{old_partition}" in result["api_usage_logs"]["partitions_dropped"]
    assert result["api_usage_logs"]["retention_days"] == 90
    left = q(db, "SELECT endpoint, count(*) FROM public.api_usage_logs GROUP BY 1 ORDER BY 1")
    assert dict(left) == {age: 2 for age, kept in ages.items() if kept}
    history = q(db, "SELECT user_id::text, error_code FROM public.prompt_history")
    assert sorted(history) == sorted([(keep_user, "40 days"), (keep_user, "20 days"),
                                      (clean_user, "20 days"),
                                      (no_prefs_user, "40 days"), (no_prefs_user, "20 days")])
    assert result["prompt_history"]["rows_deleted"] == 1
    # The current month's partition is untouched.
    assert q1(db, "SELECT to_regclass(%s)",
              (f"usaged.api_usage_logs_{month_start(db, 0).strftime('%Y_%m')}",)) is not None


def test_retention_keeps_every_log_when_the_setting_is_missing(db):
    uid = new_user(db)
    q(db, "DELETE FROM public.system_config WHERE key = 'api_usage_logs_retention_days'")
    q(db, "INSERT INTO public.api_usage_logs (user_id, provider, created_at) "
          "VALUES (%s, 'openai', now() - interval '5 years')", (uid,))
    result = q1(db, "SELECT usaged.apply_retention()")
    assert result["api_usage_logs"]["rows_deleted"] == 0
    assert q1(db, "SELECT count(*) FROM public.api_usage_logs") == 1


# ------------------------------------------------------------------------------------------
# NOTIFY usaged_limits
# ------------------------------------------------------------------------------------------

def wait_notifications(conn, count, timeout=5.0):
    got = []
    while len(got) < count:
        if not select.select([conn], [], [], timeout)[0]:
            break
        conn.poll()
        while conn.notifies:
            n = conn.notifies.pop(0)
            got.append((n.channel, n.payload))
    return got


def test_notify_fires_on_a_limit_change_and_not_on_other_changes(pg, db):
    listener = connect(pg, db.get_dsn_parameters()["dbname"], user="usaged")
    try:
        q(listener, "LISTEN usaged_limits")
        q(db, "UPDATE public.api_providers SET display_name = 'Open AI' WHERE name = 'openai'")
        q(db, "UPDATE public.api_providers SET max_requests_per_minute = max_requests_per_minute "
              "WHERE name = 'openai'")
        q(db, "UPDATE public.api_providers SET max_requests_per_minute = 61 WHERE name = 'openai'")
        q(db, "UPDATE public.api_providers SET is_enabled = false WHERE name = 'groq'")
        q(db, "UPDATE public.api_providers SET max_requests_per_day = NULL WHERE name = 'mistral'")
        # Notifications arrive in commit order: the first two updates sent none.
        assert wait_notifications(listener, 3) == [("usaged_limits", "openai"),
                                                   ("usaged_limits", "groq"),
                                                   ("usaged_limits", "mistral")]
    finally:
        listener.close()


# ------------------------------------------------------------------------------------------
# The daemon's role
# ------------------------------------------------------------------------------------------

def test_usaged_can_copy_into_the_log_tables_despite_rls(pg, db):
    uid = new_user(db)
    daemon = connect(pg, db.get_dsn_parameters()["dbname"], user="usaged")
    try:
        with daemon.cursor() as cur:
            now = datetime.datetime.now(datetime.timezone.utc).isoformat()
            cur.copy_expert("COPY public.api_usage_logs (user_id, provider, endpoint, status_code, "
                            "response_time_ms, created_at) FROM STDIN WITH (FORMAT csv)",
                            io.StringIO(f"{uid},openai,/v1/chat,200,12,{now}\n"
                                        f"{uid},anthropic,,429,,2031-01-01 00:00:00+00\n"))
            cur.copy_expert("COPY public.prompt_history (user_id, status, vibe_coding) "
                            "FROM STDIN WITH (FORMAT csv)",
                            io.StringIO(f"{uid},completed,true\n{uid},failed,false\n"))
        assert q1(db, "SELECT count(*) FROM public.api_usage_logs") == 2
        assert q1(db, "SELECT count(*) FROM public.prompt_history") == 2
    finally:
        daemon.close()


def test_usaged_reads_only_what_the_daemon_needs(pg, db):
    uid = new_user(db)
    seed_rows_for(db, uid)
    q(db, "UPDATE public.api_providers SET is_enabled = false WHERE name = 'groq'")
    daemon = connect(pg, db.get_dsn_parameters()["dbname"], user="usaged")
    try:
        assert q1(daemon, "SELECT count(*) FROM public.api_providers") == 5  # disabled too
        with daemon.cursor() as cur:
            cur.execute("UPDATE public.api_configurations SET usage_count = usage_count + 3, "
                        "last_used_at = now() WHERE user_id = %s AND provider = 'openai'", (uid,))
            assert cur.rowcount == 1
        for sql in ("SELECT * FROM public.user_profiles",
                    "SELECT api_key_encrypted FROM public.api_configurations",
                    "SELECT theme FROM public.user_preferences",
                    "SELECT * FROM public.feedback",
                    "UPDATE public.api_configurations SET is_active = false",
                    "SELECT public.read_api_key('openai')"):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                q(daemon, sql)
        # Only the maintenance settings of system_config.
        assert {r[0] for r in q(daemon, "SELECT DISTINCT category FROM public.system_config")} \
            == {"maintenance"}
        # The maintenance functions, VACUUM of its own tables.
        summary = q1(daemon, "SELECT public.daily_maintenance()")
        assert {"expired_sessions_deleted", "feedback_analytics_rows"} <= set(summary)
        assert q1(daemon, "SELECT count(*) FROM usaged.create_partitions(3)") >= 0
        assert "api_usage_logs" in q1(daemon, "SELECT usaged.apply_retention()")
        assert q1(daemon, "SELECT count(*) FROM public.analyze_all_tables()") >= 14
        assert q1(daemon, "SELECT count(*) FROM public.get_database_stats()") >= 14
        # Which of some users do not exist (it cannot read auth.users itself).
        ghost = str(uuid.uuid4())
        assert [r[0] for r in q(daemon, "SELECT public.usaged_unknown_users(%s::uuid[])",
                                ([uid, ghost, ghost],))] == [ghost]
        for table, owner, statement in q(daemon, "SELECT * FROM public.vacuum_all_tables()"):
            if owner == "usaged":
                q(daemon, statement)
    finally:
        daemon.close()
    assert q1(db, "SELECT usage_count FROM public.api_configurations WHERE user_id = %s",
              (uid,)) == 3


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_users_cannot_run_maintenance_functions(db, role):
    for fn in ("public.daily_maintenance()", "public.analyze_all_tables()",
               "public.get_database_stats()", "public.vacuum_all_tables()",
               "usaged.create_partitions(3)", "usaged.apply_retention()",
               "public.usaged_unknown_users('{}')"):
        with acting_as(db, role, new_user(db) if role == "authenticated" else None):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                q(db, f"SELECT {fn}")


def test_daily_maintenance_deletes_expired_sessions_and_computes_feedback_analytics(db):
    uid = new_user(db)
    q(db, "INSERT INTO public.user_sessions (user_id, started_at, last_activity_at, expires_at) "
          "VALUES (%s, now() - interval '2 days', now() - interval '2 days', "
          "now() - interval '1 day'), (%s, now(), now(), now() + interval '1 day')", (uid, uid))
    q(db, "INSERT INTO public.feedback (user_id, message, feedback_type, rating, created_at) "
          "VALUES (%s, 'a', 'bug', 2, now() - interval '1 day'), "
          "(%s, 'b', 'praise', 5, now() - interval '1 day')", (uid, uid))
    q(db, "UPDATE public.feedback SET created_at = "
          "((now() AT TIME ZONE 'UTC')::date - 1)::timestamp AT TIME ZONE 'UTC' + interval '1 hour'")
    summary = q1(db, "SELECT public.daily_maintenance()")
    assert summary["expired_sessions_deleted"] == 1
    assert q1(db, "SELECT count(*) FROM public.user_sessions") == 1
    rows = dict(q(db, "SELECT feedback_type, total_count FROM public.feedback_analytics "
                      "WHERE period_type = 'day'"))
    assert rows == {"all": 2, "bug": 1, "praise": 1}


def test_daily_maintenance_catches_up_every_day_no_run_computed(db):
    """A day on which no maintenance ran leaves the day before it uncomputed; the next run
    computes each day since the last computed one, at most the last 31."""
    uid = new_user(db)
    today = q1(db, "SELECT (now() AT TIME ZONE 'UTC')::date")
    day = datetime.timedelta(days=1)
    q(db, "SELECT public.compute_feedback_analytics(%s, 'day')", (today - 5 * day,))
    for back in (3, 2, 2):
        q(db, "INSERT INTO public.feedback (user_id, message, feedback_type, created_at) "
              "VALUES (%s, 'x', 'bug', (%s::date)::timestamp AT TIME ZONE 'UTC' "
              "+ interval '12 hours')", (uid, today - back * day))
    summary = q1(db, "SELECT public.daily_maintenance()")
    assert summary["feedback_analytics_days"] == [str(today - 4 * day), str(today - day)]
    totals = dict(q(db, "SELECT period_start, total_count FROM public.feedback_analytics "
                        "WHERE period_type = 'day' AND feedback_type = 'all'"))
    assert totals == {today - 5 * day: 0, today - 4 * day: 0, today - 3 * day: 1,
                      today - 2 * day: 2, today - day: 0}
    # Run again the same day: yesterday only, recomputed.
    summary = q1(db, "SELECT public.daily_maintenance()")
    assert summary["feedback_analytics_days"] == [str(today - day), str(today - day)]
    # After a long gap, the last 31 days only.
    q(db, "DELETE FROM public.feedback_analytics")
    q(db, "SELECT public.compute_feedback_analytics(%s, 'day')", (today - 100 * day,))
    summary = q1(db, "SELECT public.daily_maintenance()")
    assert summary["feedback_analytics_days"] == [str(today - 31 * day), str(today - day)]
    assert q1(db, "SELECT count(*) FROM public.feedback_analytics WHERE period_type = 'day' "
                  "AND feedback_type = 'all'") == 32


# ------------------------------------------------------------------------------------------
# API keys at rest
# ------------------------------------------------------------------------------------------

OPENAI_KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"


def set_encryption_key(conn, key="test-encryption-key"):
    q(conn, "SELECT set_config('app.settings.encryption_key', %s, false)", (key,))


def test_api_key_roundtrip_for_its_owner_only(db):
    a, b = new_user(db), new_user(db)
    set_encryption_key(db)
    with acting_as(db, "authenticated", a):
        config_id = q1(db, "SELECT public.store_api_key('openai', %s)", (OPENAI_KEY,))
        assert config_id is not None
        assert q1(db, "SELECT public.read_api_key('openai')") == OPENAI_KEY
        assert q1(db, "SELECT public.read_api_key('anthropic')") is None
        # Storing again replaces the key.
        q(db, "SELECT public.store_api_key('openai', %s)", (OPENAI_KEY + "X",))
        assert q1(db, "SELECT public.read_api_key('openai')") == OPENAI_KEY + "X"
    with acting_as(db, "authenticated", b):
        assert q1(db, "SELECT public.read_api_key('openai')") is None


def test_stored_api_key_is_not_the_plaintext(db):
    a = new_user(db)
    set_encryption_key(db)
    with acting_as(db, "authenticated", a):
        q(db, "SELECT public.store_api_key('openai', %s)", (OPENAI_KEY,))
    stored = q1(db, "SELECT api_key_encrypted FROM public.api_configurations WHERE user_id = %s",
                (a,))
    assert OPENAI_KEY not in stored
    assert stored.startswith("-----BEGIN PGP MESSAGE-----")
    # Another encryption key cannot read it.
    set_encryption_key(db, "some-other-key")
    with acting_as(db, "authenticated", a):
        with pytest.raises(psycopg2.errors.DataCorrupted):
            q(db, "SELECT public.read_api_key('openai')")


@pytest.mark.parametrize("provider,key", [("openai", "not-a-key"), ("anthropic", OPENAI_KEY),
                                          ("google", "AIza-too-short"), ("openai", "")])
def test_store_api_key_rejects_a_key_that_does_not_match_the_provider_pattern(db, provider, key):
    a = new_user(db)
    set_encryption_key(db)
    with acting_as(db, "authenticated", a):
        with pytest.raises(psycopg2.errors.InvalidParameterValue) as e:
            q(db, "SELECT public.store_api_key(%s, %s)", (provider, key))
        assert key == "" or key not in str(e.value)
    assert q1(db, "SELECT count(*) FROM public.api_configurations") == 0


def test_store_api_key_fails_clearly_without_an_encryption_key(db):
    a = new_user(db)
    with acting_as(db, "authenticated", a):
        with pytest.raises(psycopg2.errors.ObjectNotInPrerequisiteState,
                           match="app.settings.encryption_key is not set"):
            q(db, "SELECT public.store_api_key('openai', %s)", (OPENAI_KEY,))


def test_users_cannot_insert_api_keys_around_store_api_key(db):
    a = new_user(db)
    with acting_as(db, "authenticated", a):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            q(db, "INSERT INTO public.api_configurations (user_id, provider, api_key_encrypted) "
                  "VALUES (%s, 'openai', 'x')", (a,))


def connect_as_daemon(db):
    p = db.get_dsn_parameters()
    conn = psycopg2.connect(host=p["host"], port=p["port"], dbname=p["dbname"], user="usaged")
    conn.autocommit = True
    return conn


def test_the_daemon_role_cannot_create_in_public(db):
    """A function usaged could put in public would be on everyone's search path
    (CVE-2018-1058); its tables there were handed over by the migrations."""
    daemon = connect_as_daemon(db)
    try:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            q(daemon, "CREATE FUNCTION public.lower(varchar) RETURNS text LANGUAGE sql "
                      "AS 'SELECT 1::text'")
    finally:
        daemon.close()


def test_daily_maintenance_runs_nothing_the_daemon_role_can_replace(db):
    """daily_maintenance() runs with its owner's rights: replacing a function of schema usaged
    (which usaged owns) must not get that function run by it."""
    daemon = connect_as_daemon(db)
    try:
        q(daemon, "CREATE OR REPLACE FUNCTION usaged.apply_retention() RETURNS jsonb "
                  "LANGUAGE sql SECURITY INVOKER AS $$ SELECT jsonb_build_object('ran_as', "
                  "current_user::text) $$")
        summary = q1(daemon, "SELECT public.daily_maintenance()")
        assert "ran_as" not in json.dumps(summary)
    finally:
        daemon.close()
    assert q1(db, "SELECT rolsuper FROM pg_roles WHERE rolname = 'usaged'") is False


def test_partitions_are_created_in_the_daemon_schema(db):
    q(db, "SET ROLE usaged")
    try:
        q(db, "SELECT usaged.create_partition('api_usage_logs', '2032-02-01')")
    finally:
        q(db, "RESET ROLE")
    assert q1(db, "SELECT relnamespace::regnamespace::text FROM pg_class "
                  "WHERE relname = 'api_usage_logs_2032_02'") == "usaged"


def test_usage_limits_users_read_their_own_and_every_user_rules_and_only_service_role_writes(db):
    alice, bob = new_user(db), new_user(db)
    q(db, "INSERT INTO public.usage_limits (user_id, provider, dimension, period, amount) VALUES "
      "(NULL, 'openai', 'tokens', 'day', 1000), (%s, 'openai', 'tokens', 'day', 5000), "
      "(%s, 'openai', 'spend', 'month', 12.5)", (alice, bob))
    with acting_as(db, "authenticated", alice):
        seen = q(db, "SELECT user_id::text, dimension FROM public.usage_limits ORDER BY 1")
        assert seen == [(alice, "tokens"), (None, "tokens")]
        with pytest.raises(psycopg2.Error):
            q(db, "INSERT INTO public.usage_limits (user_id, dimension, period, amount) "
              "VALUES (%s, 'tokens', 'day', 1)", (alice,))
    with acting_as(db, "service_role"):
        q(db, "UPDATE public.usage_limits SET amount = 2000 WHERE user_id IS NULL")
    assert q1(db, "SELECT amount FROM public.usage_limits WHERE user_id IS NULL") == 2000


def test_usage_limits_refuses_rules_the_daemon_could_not_apply(db):
    bad = [
        ("tokens", None, 1),          # a window is required but for concurrent
        ("concurrent", "day", 1),     # concurrent has none
        ("tokens", "day", 1.5),       # whole units
        ("spend", "day", -1),         # not negative
        ("spend", "week", 1),         # no such period
    ]
    for dimension, period, amount in bad:
        with pytest.raises(psycopg2.Error):
            q(db, "INSERT INTO public.usage_limits (dimension, period, amount) VALUES "
              "(%s, %s, %s)", (dimension, period, amount))
    q(db, "INSERT INTO public.usage_limits (dimension, period, amount) VALUES "
      "('spend', 'day', 0.000001)")
    with pytest.raises(psycopg2.Error):  # one rule per thing counted
        q(db, "INSERT INTO public.usage_limits (dimension, period, amount) VALUES "
          "('spend', 'day', 2)")


def test_a_change_of_usage_limits_notifies_the_daemons_once_per_statement(pg, fresh_db):
    migrate(pg, fresh_db)
    listener = connect(pg, fresh_db)
    q(listener, "LISTEN usaged_limits")
    writer = connect(pg, fresh_db)
    q(writer, "INSERT INTO public.usage_limits (dimension, period, amount) VALUES "
      "('tokens', 'day', 1), ('tokens', 'hour', 1)")
    servers.wait_for(lambda: listener.poll() or listener.notifies, 10, "the notification")
    assert [n.payload for n in listener.notifies] == ["usage_limits"]
    listener.close()
    writer.close()
