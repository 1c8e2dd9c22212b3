"""The schema on a database shaped like a Supabase project (issue 18), and what Supabase
adds to the plain-PostgreSQL tests of test_schema.py.

The Supabase-shaped cluster is the module's own server when the suite runs on one
(USAGED_PG_SHAPE=supabase), else a second cluster of the same PostgreSQL started for these
tests (servers.py creates the roles and what Supabase puts in a new database)."""

import os
import subprocess

import psycopg2
import psycopg2.errors
import pytest

import servers
from conftest import apply_migrations_with_psql, base_config, migration_files
from test_schema import (OPENAI_KEY, USER_TABLES, acting_as, assert_anon_privileges_are_exactly_the_intended_ones,
                         connect, new_user, q, q1, seed_rows_for, visible_owners)
from usaged_client import USAGED_BIN

VAULT_SECRET = "usaged_api_key_encryption_key"


@pytest.fixture(scope="module")
def supabase_pg(pg, workdir):
    if pg.shape == "supabase":
        yield pg
        return
    server = servers.Postgres(os.path.join(workdir, "supabaseroot"), shape="supabase").start()
    yield server
    server.stop()


_counter = [0]


def supabase_db(server):
    _counter[0] += 1
    name = f"supa{os.getpid()}_{_counter[0]}"
    server.createdb(name)
    return name


def auth_objects(conn):
    """Every relation and function of schema auth, with its owner."""
    return sorted(q(conn, "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c "
                          "WHERE c.relnamespace = 'auth'::regnamespace "
                          "UNION ALL SELECT p.oid::regprocedure::text, pg_get_userbyid(p.proowner) "
                          "FROM pg_proc p WHERE p.pronamespace = 'auth'::regnamespace"))


def migrate_with_usaged(workdir, server, dbname):
    cfg = os.path.join(workdir, f"migrate-{dbname}.yaml")
    with open(cfg, "w") as f:
        f.write(base_config(workdir, pg=server, dbname=dbname).replace("@SOCKET@", "/tmp/unused"))
    return subprocess.run([USAGED_BIN, "--migrate", "-c", cfg], capture_output=True, text=True,
                          timeout=120)


# ------------------------------------------------------------------------------------------
# The migrations as Supabase's postgres, after Supabase Auth
# ------------------------------------------------------------------------------------------

def test_migrations_apply_as_supabases_postgres_role_and_rls_holds(supabase_pg):
    name = supabase_db(supabase_pg)
    conn = connect(supabase_pg, name)
    try:
        assert q1(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = %s",
                  (supabase_pg.migrator,)) is False
        auth_before = auth_objects(conn)
        apply_migrations_with_psql(supabase_pg, name)
        # Default privileges hand anon everything postgres creates in public: taken back.
        assert_anon_privileges_are_exactly_the_intended_ones(conn)
        assert q1(conn, "SELECT pg_get_userbyid(relowner) FROM pg_class "
                        "WHERE oid = 'public.api_usage_logs'::regclass") == "usaged"
        # Schema auth is Supabase Auth's: nothing created there, nothing handed to anyone.
        assert auth_objects(conn) == auth_before
        assert {owner for _, owner in auth_before} == {"supabase_auth_admin"}
        a, b = new_user(conn), new_user(conn)
        seed_rows_for(conn, a)
        seed_rows_for(conn, b)
        with acting_as(conn, "authenticated", a):
            for table in USER_TABLES:
                assert set(visible_owners(conn, table)) == {a}, table
        summary = q1(conn, "SET ROLE usaged; SELECT public.daily_maintenance()")
        assert "expired_sessions_deleted" in summary
    finally:
        conn.close()


@pytest.mark.parametrize("missing", ["DROP SCHEMA auth CASCADE", "DROP FUNCTION auth.uid()"])
def test_migrate_stops_naming_supabase_auth_until_auth_has_run(workdir, supabase_pg, missing):
    name = supabase_db(supabase_pg)
    supabase_pg.psql(missing, dbname=name)
    conn = connect(supabase_pg, name)
    try:
        before = q(conn, "SELECT to_regnamespace('auth')::text, to_regclass('auth.users')::text")
        r = migrate_with_usaged(workdir, supabase_pg, name)
        assert r.returncode == 1
        assert "migration 0001_compat_supabase" in r.stderr
        assert "Supabase Auth" in r.stderr
        assert "auth.uid()" in r.stderr
        # Nothing was created in auth, nor anything else (the migration rolled back).
        assert q(conn, "SELECT to_regnamespace('auth')::text, "
                       "to_regclass('auth.users')::text") == before
        assert q1(conn, "SELECT to_regprocedure('auth.uid()')") is None
        assert q1(conn, "SELECT count(*) FROM usaged_meta.schema_migrations") == 0
    finally:
        conn.close()


def test_migrate_runs_once_supabase_auth_has_run(workdir, supabase_pg):
    name = supabase_db(supabase_pg)
    r = migrate_with_usaged(workdir, supabase_pg, name)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == os.path.basename(migration_files()[-1])[:-4]


def test_migrate_leaves_what_supabase_auth_has_not_created_to_it(workdir, supabase_pg):
    """On plain PostgreSQL 0001 creates auth.role() where it is missing; Supabase Auth creates
    it itself, and must own it, so here 0001 leaves it alone."""
    name = supabase_db(supabase_pg)
    supabase_pg.psql("DROP FUNCTION auth.role()", dbname=name)
    r = migrate_with_usaged(workdir, supabase_pg, name)
    assert r.returncode == 0, r.stderr
    conn = connect(supabase_pg, name)
    try:
        assert q1(conn, "SELECT to_regprocedure('auth.role()')") is None
        assert {owner for _, owner in auth_objects(conn)} == {"supabase_auth_admin"}
    finally:
        conn.close()


def test_migrate_explains_a_usaged_role_that_postgres_may_not_grant_itself(workdir):
    """From PostgreSQL 16 on, a CREATEROLE role may grant only roles it holds WITH ADMIN OPTION:
    a usaged created by another role stops the migrations with what to do; on 15 they apply.
    (A cluster of its own: roles are cluster-wide.)"""
    server = servers.Postgres(os.path.join(workdir, "foreign_usaged"), shape="supabase").start()
    try:
        server.psql("CREATE ROLE usaged LOGIN")
        name = supabase_db(server)
        r = migrate_with_usaged(workdir, server, name)
        if int(server.psql("SHOW server_version_num")) < 160000:
            assert r.returncode == 0, r.stderr
            return
        assert r.returncode == 1
        assert "the role usaged exists, and postgres may not make itself a member" in r.stderr
        assert "GRANT usaged TO postgres WITH ADMIN OPTION" in r.stderr
        # Done as the hint says, the migrations apply.
        server.psql("GRANT usaged TO postgres WITH ADMIN OPTION")
        r = migrate_with_usaged(workdir, server, name)
        assert r.returncode == 0, r.stderr
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------
# The API-key secret: Supabase Vault where there is one, else app.settings.encryption_key
# ------------------------------------------------------------------------------------------

# Supabase Vault's view, column for column (decrypted_secret is plain here), with the grants
# Supabase gives postgres.
VAULT_STAND_IN = """
CREATE SCHEMA vault;
CREATE TABLE vault.secrets (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name text UNIQUE, description text NOT NULL
    DEFAULT '', secret text NOT NULL, key_id uuid, nonce bytea, created_at timestamptz NOT NULL
    DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
CREATE VIEW vault.decrypted_secrets AS
SELECT id, name, description, secret, secret AS decrypted_secret, key_id, nonce, created_at,
       updated_at FROM vault.secrets;
GRANT USAGE ON SCHEMA vault TO postgres WITH GRANT OPTION;
GRANT ALL ON vault.secrets, vault.decrypted_secrets TO postgres WITH GRANT OPTION;
"""


@pytest.fixture
def conn(pg, db):
    """A superuser connection to a migrated database."""
    c = connect(pg, db)
    yield c
    c.close()


@pytest.fixture
def vault_db(conn):
    """A migrated database with a stand-in for Supabase Vault; yields a superuser connection."""
    q(conn, VAULT_STAND_IN)
    return conn


def test_api_key_is_encrypted_under_the_vault_secret_where_there_is_a_vault(vault_db):
    q(vault_db, "INSERT INTO vault.secrets (name, secret) VALUES (%s, 'from-the-vault')",
      (VAULT_SECRET,))
    # The setting is not used where there is a Vault.
    q(vault_db, "SELECT set_config('app.settings.encryption_key', 'from-the-setting', false)")
    a = new_user(vault_db)
    with acting_as(vault_db, "authenticated", a):
        q(vault_db, "SELECT public.store_api_key('openai', %s)", (OPENAI_KEY,))
        assert q1(vault_db, "SELECT public.read_api_key('openai')") == OPENAI_KEY
    assert q1(vault_db, "SELECT extensions.pgp_sym_decrypt(extensions.dearmor(api_key_encrypted), "
                        "'from-the-vault') FROM public.api_configurations WHERE user_id = %s",
              (a,)) == OPENAI_KEY


def test_store_api_key_without_the_vault_secret_names_it_and_how_to_create_it(vault_db):
    q(vault_db, "SELECT set_config('app.settings.encryption_key', 'from-the-setting', false)")
    a = new_user(vault_db)
    with acting_as(vault_db, "authenticated", a):
        for call in ("SELECT public.store_api_key('openai', %s)", "SELECT public.read_api_key(%s)"):
            with pytest.raises(psycopg2.errors.ObjectNotInPrerequisiteState) as e:
                q(vault_db, call, (OPENAI_KEY if "store" in call else "openai",))
            assert VAULT_SECRET in e.value.diag.message_primary
            assert f"vault.create_secret('<a long random key>', '{VAULT_SECRET}')" \
                in e.value.diag.message_hint
            assert OPENAI_KEY not in str(e.value)
    assert q1(vault_db, "SELECT count(*) FROM public.api_configurations") == 0


def test_without_a_vault_the_hint_says_who_may_set_the_key(conn):
    a = new_user(conn)
    with acting_as(conn, "authenticated", a):
        with pytest.raises(psycopg2.errors.ObjectNotInPrerequisiteState,
                           match="app.settings.encryption_key is not set") as e:
            q(conn, "SELECT public.store_api_key('openai', %s)", (OPENAI_KEY,))
    assert "As a superuser: ALTER DATABASE" in e.value.diag.message_hint
    assert "Vault" in e.value.diag.message_hint


def test_users_cannot_call_the_key_lookup(conn):
    q(conn, "SELECT set_config('app.settings.encryption_key', 'k', false)")
    for role in ("anon", "authenticated", "service_role"):
        with acting_as(conn, role, new_user(conn)):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                q(conn, "SELECT public.api_key_encryption_key('x')")


# ------------------------------------------------------------------------------------------
# Supabase's security linter (splinter): the checks it would flag on this schema
# ------------------------------------------------------------------------------------------

OUR_SCHEMAS = ("public", "usaged", "analytics", "analytics_user")


def test_no_view_in_public_runs_with_its_owners_rights(conn):
    """splinter 0010 security_definer_view."""
    views = q(conn, "SELECT c.relname, coalesce(c.reloptions, '{}') FROM pg_class c "
                    "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'v'")
    assert {v for v, _ in views} >= {"my_api_usage_daily", "my_prompt_generations_daily"}
    for view, options in views:
        assert "security_invoker=true" in options, view


def test_every_function_of_the_schema_has_a_fixed_search_path(conn):
    """splinter 0011 function_search_path_mutable (functions of extensions aside)."""
    mutable = q(conn, "SELECT p.oid::regprocedure::text FROM pg_proc p "
                      "JOIN pg_namespace n ON n.oid = p.pronamespace "
                      "WHERE n.nspname = ANY(%s) AND NOT EXISTS ("
                      "  SELECT FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass "
                      "  AND d.objid = p.oid AND d.deptype = 'e') "
                      "AND NOT EXISTS (SELECT FROM unnest(coalesce(p.proconfig, '{}')) c "
                      "  WHERE c LIKE 'search_path=%%')", (list(OUR_SCHEMAS),))
    assert mutable == []


def seed_analytics(conn):
    a, b = new_user(conn), new_user(conn)
    for user, n in ((a, 3), (b, 1)):
        for _ in range(n):
            q(conn, "INSERT INTO public.api_usage_logs (user_id, provider, status_code) "
                    "VALUES (%s, 'openai', 200)", (user,))
        q(conn, "INSERT INTO public.prompt_history (user_id, status) VALUES (%s, 'completed')",
          (user,))
    with acting_as(conn, "usaged"):
        q(conn, "REFRESH MATERIALIZED VIEW analytics.api_usage_daily")
        q(conn, "REFRESH MATERIALIZED VIEW analytics.prompt_generations_daily")
    return a, b


def test_my_views_and_the_functions_under_them_return_only_the_callers_rows(conn):
    a, b = seed_analytics(conn)
    for user, requests in ((a, 3), (b, 1)):
        with acting_as(conn, "authenticated", user):
            assert q1(conn, "SELECT sum(requests) FROM public.my_api_usage_daily") == requests
            assert q1(conn, "SELECT sum(requests) FROM analytics_user.api_usage_daily()") \
                == requests
            assert q1(conn, "SELECT sum(generations) FROM "
                            "public.my_prompt_generations_daily") == 1
    with acting_as(conn, "authenticated"):  # no user: nothing
        assert q(conn, "SELECT * FROM public.my_api_usage_daily") == []


@pytest.mark.parametrize("role", ["anon", "service_role", "usaged"])
def test_only_authenticated_may_call_the_analytics_user_functions(conn, role):
    seed_analytics(conn)
    with acting_as(conn, role, new_user(conn)):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            q(conn, "SELECT * FROM analytics_user.api_usage_daily()")


def test_full_text_search_still_uses_its_index(conn):
    q(conn, "SET enable_seqscan = off")
    plan = "\n".join(r[0] for r in q(
        conn, "EXPLAIN SELECT id FROM public.prompt_history WHERE "
              "public.prompt_history_search_document(user_input, ai_response) "
              "@@ websearch_to_tsquery('english', 'landing page')"))
    assert "Bitmap Index Scan on prompt_history_default_prompt_history_search_document_idx" \
        in plan, plan
