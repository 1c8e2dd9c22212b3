-- 0002_core: the daemon's schema, shared trigger functions, the admin rule, system_config.

-- Schema usaged belongs to the daemon's role: its bookkeeping tables live here, and so do the
-- partition and retention functions, which run as usaged (SECURITY DEFINER) so that every
-- partition they create is owned by usaged. The daemon may have created the schema already
-- (an older daemon did, for its bookkeeping), hence IF NOT EXISTS.
CREATE SCHEMA IF NOT EXISTS usaged;
ALTER SCHEMA usaged OWNER TO usaged;
REVOKE ALL ON SCHEMA usaged FROM PUBLIC;

-- The log tables in public are handed to usaged (0004, 0005), and a runner that is not a
-- superuser can only hand a table to a role that may create in its schema: CREATE on public is
-- granted for the migrations and revoked at the end of 0009. usaged must not keep it: functions
-- it could create in public would be found on everyone's search path (CVE-2018-1058). The monthly
-- partitions live in schema usaged (0007).
GRANT USAGE, CREATE ON SCHEMA public TO usaged;

-- Rows the daemon could not store, isolated from their batch, with the reason.
CREATE TABLE usaged.rejects (
    id bigserial PRIMARY KEY,
    table_name text NOT NULL,
    row_data jsonb NOT NULL,
    error text NOT NULL,
    sqlstate text,
    rejected_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE usaged.rejects IS
    'Rows the daemon could not insert (one bad row of a COPY batch), with the server''s error.';

-- When each materialized view was last refreshed by a daemon, and how it went.
CREATE TABLE usaged.refresh_state (
    view_name text PRIMARY KEY,
    refreshed_at timestamptz,
    duration_ms integer CHECK (duration_ms >= 0),
    error text
);
COMMENT ON TABLE usaged.refresh_state IS
    'Last REFRESH MATERIALIZED VIEW of each analytics view by a daemon: when, how long, error.';

-- One row per day of maintenance: the daemon that inserts it first runs daily_maintenance().
CREATE TABLE usaged.maintenance_runs (
    run_date date PRIMARY KEY,
    started_at timestamptz,
    finished_at timestamptz,
    result jsonb
);
COMMENT ON TABLE usaged.maintenance_runs IS
    'Daily maintenance runs: the daemon that claims run_date first runs public.daily_maintenance().';

ALTER TABLE usaged.rejects OWNER TO usaged;
ALTER TABLE usaged.refresh_state OWNER TO usaged;
ALTER TABLE usaged.maintenance_runs OWNER TO usaged;
-- RLS on every table: the owner (usaged) bypasses it; nobody else has a policy or a grant.
ALTER TABLE usaged.rejects ENABLE ROW LEVEL SECURITY;
ALTER TABLE usaged.refresh_state ENABLE ROW LEVEL SECURITY;
ALTER TABLE usaged.maintenance_runs ENABLE ROW LEVEL SECURITY;

-- updated_at maintenance, shared by every table that has the column.
CREATE FUNCTION public.set_updated_at() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION public.set_updated_at() IS 'Trigger: sets updated_at to now() on every UPDATE.';

-- The admin rule, defined once; every policy that grants admins access calls it.
-- An admin is a request whose verified JWT says so in app_metadata (which only the server side
-- can set, unlike user_metadata), or a service_role request (Supabase's server key).
CREATE FUNCTION public.is_admin() RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT coalesce(
        (auth.jwt() -> 'app_metadata' ->> 'role') = 'admin'
        OR (auth.jwt() ->> 'role') = 'service_role'
        OR current_user = 'service_role',
        false)
$$;
COMMENT ON FUNCTION public.is_admin() IS
    'The admin rule: true when the JWT claims app_metadata.role = ''admin'', or the request '
    'is service_role (JWT role claim or current database role). Used by every admin policy.';
REVOKE ALL ON FUNCTION public.is_admin(), public.set_updated_at()
    FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.is_admin() TO anon, authenticated, service_role;
-- A new partition of prompt_history gets a clone of its updated_at trigger, and cloning checks
-- that the partition's creator (usaged) may execute the trigger function.
GRANT EXECUTE ON FUNCTION public.set_updated_at() TO usaged;

-- Runtime configuration: application settings, feature flags, rate limits, maintenance.
CREATE TABLE public.system_config (
    key text PRIMARY KEY
        CHECK (key ~ '^[a-z][a-z0-9_.]*$' AND char_length(key) <= 100),
    value jsonb NOT NULL,
    description text,
    category varchar(50) NOT NULL DEFAULT 'app'
        CHECK (category IN ('app', 'feature_flags', 'rate_limits', 'maintenance')),
    is_public boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- Retention settings (keys ending in _days) are whole numbers of days, at least 1.
    CONSTRAINT system_config_days_check CHECK (
        CASE
            WHEN key !~ '_days$' THEN true
            WHEN jsonb_typeof(value) <> 'number' THEN false
            ELSE value::numeric >= 1 AND value::numeric = trunc(value::numeric)
        END)
);
COMMENT ON TABLE public.system_config IS
    'Runtime configuration. is_public rows are readable by anon and authenticated; the '
    'maintenance category is readable by usaged. Never store secrets here.';

CREATE TRIGGER system_config_set_updated_at BEFORE UPDATE ON public.system_config
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();

-- Supabase gives anon/authenticated/service_role ALL on new tables in public by default
-- privileges; take that back at once (policies and grants come in 0009).
ALTER TABLE public.system_config ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.system_config FROM PUBLIC, anon, authenticated, service_role;
