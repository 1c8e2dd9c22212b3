-- 0001_compat_supabase: what Supabase provides, created only where it is missing.
--
-- On Supabase every object below already exists and this file changes nothing. On plain
-- PostgreSQL 15 it creates the roles, the auth schema, a minimal auth.users, auth.uid(),
-- auth.role(), auth.jwt() (same definitions as Supabase's: they read the JWT claims PostgREST
-- puts in request.jwt.claims), and pgcrypto in schema extensions. Everything is guarded, so the
-- file is safe to run on a database or cluster that already has some of it. Roles are
-- cluster-wide: several databases of one cluster may run this at the same time, so a role that
-- appears concurrently is not an error.
--
-- Where Supabase's roles exist (supabase_auth_admin), schema auth belongs to Supabase Auth
-- (GoTrue), which creates auth.users and its functions on its first start and must own them:
-- there this file creates nothing in auth, and stops when Auth has not run yet. (This check
-- was added after the file was released; on plain PostgreSQL its effect is what it was, and
-- `usaged --migrate` tracks applied migrations by number only, so no database re-runs it.)
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'supabase_auth_admin')
       AND (pg_catalog.to_regclass('auth.users') IS NULL
            OR pg_catalog.to_regprocedure('auth.uid()') IS NULL
            OR pg_catalog.to_regprocedure('auth.jwt()') IS NULL) THEN
        RAISE EXCEPTION 'this database has Supabase''s roles but not Supabase Auth''s schema '
                        '(auth.users, auth.uid() or auth.jwt() is missing)'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Run the migrations after Supabase Auth has started once against this '
                         'database (it creates schema auth); usaged creates nothing there.';
    END IF;
END
$$;

-- Roles. anon/authenticated/service_role mirror Supabase's (service_role bypasses RLS there).
-- usaged is the daemon's login role: no password here; set one, or use peer/cert auth, per site.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT * FROM (VALUES
            ('anon', 'NOLOGIN NOINHERIT'),
            ('authenticated', 'NOLOGIN NOINHERIT'),
            ('service_role', 'NOLOGIN NOINHERIT BYPASSRLS'),
            ('usaged', 'LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS')
        ) AS v(name, options)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r.name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I %s', r.name, r.options);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another database of this cluster created it at the same moment
            END;
        END IF;
    END LOOP;
END
$$;

-- The migration runner hands tables, views and functions to usaged (ALTER ... OWNER TO usaged).
-- A superuser may always do that; a non-superuser runner (Supabase's postgres) must be a member
-- of the new owner, so it makes itself one. From PostgreSQL 16 on it may only where it holds
-- usaged WITH ADMIN OPTION, as the role that created it does; otherwise the error says what to
-- do (added after release: the effect where the grant succeeds is the same).
DO $$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
       AND NOT pg_catalog.pg_has_role(current_user, 'usaged', 'USAGE') THEN
        BEGIN
            EXECUTE format('GRANT usaged TO %I', current_user);
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE EXCEPTION 'the role usaged exists, and % may not make itself a member of it',
                            current_user
                USING ERRCODE = 'insufficient_privilege',
                      DETAIL = 'From PostgreSQL 16 on, a CREATEROLE role may grant only the roles '
                               'it holds WITH ADMIN OPTION, such as those it created itself.',
                      HINT = format('As the role that created usaged, or as a superuser, run '
                                    'GRANT usaged TO %I WITH ADMIN OPTION; then migrate again.',
                                    current_user);
        END;
    END IF;
END
$$;

-- pgcrypto, in schema extensions as on Supabase (an existing install elsewhere is used as is).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pgcrypto') THEN
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'extensions') THEN
            CREATE SCHEMA extensions;
            GRANT USAGE ON SCHEMA extensions TO anon, authenticated, service_role;
        END IF;
        CREATE EXTENSION pgcrypto WITH SCHEMA extensions;
    END IF;
END
$$;

-- The auth schema and a minimal auth.users (the columns Supabase has that this schema uses);
-- not where Supabase Auth owns the schema (see the top).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'supabase_auth_admin') THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'auth') THEN
        CREATE SCHEMA auth;
        GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
    END IF;

    IF pg_catalog.to_regclass('auth.users') IS NULL THEN
        CREATE TABLE auth.users (
            instance_id uuid,
            id uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
            aud varchar(255),
            role varchar(255),
            email varchar(255),
            raw_app_meta_data jsonb DEFAULT '{}'::jsonb,
            raw_user_meta_data jsonb DEFAULT '{}'::jsonb,
            created_at timestamptz DEFAULT now(),
            updated_at timestamptz DEFAULT now(),
            deleted_at timestamptz
        );
        COMMENT ON TABLE auth.users IS
            'Compatibility stand-in for Supabase''s auth.users (created by usaged migration 0001).';
    END IF;
END
$$;

-- auth.uid(), auth.role(), auth.jwt(): Supabase's definitions, created only when missing, and
-- never where Supabase Auth owns schema auth.
DO $do$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'supabase_auth_admin') THEN
        RETURN;
    END IF;
    IF pg_catalog.to_regprocedure('auth.uid()') IS NULL THEN
        CREATE FUNCTION auth.uid() RETURNS uuid
        LANGUAGE sql STABLE
        AS $f$
            SELECT coalesce(
                nullif(current_setting('request.jwt.claim.sub', true), ''),
                (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
            )::uuid
        $f$;
    END IF;

    IF pg_catalog.to_regprocedure('auth.role()') IS NULL THEN
        CREATE FUNCTION auth.role() RETURNS text
        LANGUAGE sql STABLE
        AS $f$
            SELECT coalesce(
                nullif(current_setting('request.jwt.claim.role', true), ''),
                (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
            )::text
        $f$;
    END IF;

    IF pg_catalog.to_regprocedure('auth.jwt()') IS NULL THEN
        CREATE FUNCTION auth.jwt() RETURNS jsonb
        LANGUAGE sql STABLE
        AS $f$
            SELECT coalesce(
                nullif(current_setting('request.jwt.claim', true), ''),
                nullif(current_setting('request.jwt.claims', true), '')
            )::jsonb
        $f$;
    END IF;
END
$do$;
