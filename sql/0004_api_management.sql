-- 0004_api_management: api_providers (+ NOTIFY usaged_limits), api_configurations (+ API keys
-- encrypted with pgcrypto), api_usage_logs (partitioned, owned by usaged).

CREATE TABLE public.api_providers (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name varchar(50) NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9_-]*$'),
    display_name varchar(100) NOT NULL CHECK (char_length(btrim(display_name)) > 0),
    base_url text CHECK (base_url ~* '^https?://'),
    -- A regular expression a key for this provider must match; compiling it here refuses an
    -- invalid one ("invalid regular expression") when the row is written, not when a key is.
    api_key_pattern text CHECK (api_key_pattern IS NULL OR ('' ~ api_key_pattern) IS NOT NULL),
    is_enabled boolean NOT NULL DEFAULT true,
    -- NULL means unlimited (the daemon's protocol says so too).
    max_requests_per_minute integer CHECK (max_requests_per_minute > 0),
    max_requests_per_day integer CHECK (max_requests_per_day > 0),
    supported_models jsonb NOT NULL DEFAULT '[]'::jsonb
        CHECK (jsonb_typeof(supported_models) = 'array'),
    validation_rules jsonb NOT NULL DEFAULT '{}'::jsonb
        CHECK (jsonb_typeof(validation_rules) = 'object'),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT api_providers_minute_within_day
        CHECK (max_requests_per_minute <= max_requests_per_day)
);
COMMENT ON TABLE public.api_providers IS
    'AI providers and their rate limits. usaged reads the limits and reloads a provider when '
    'NOTIFY usaged_limits names it.';
COMMENT ON COLUMN public.api_providers.max_requests_per_minute IS 'NULL: unlimited.';
COMMENT ON COLUMN public.api_providers.max_requests_per_day IS 'NULL: unlimited.';

CREATE TRIGGER api_providers_set_updated_at BEFORE UPDATE ON public.api_providers
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();

-- Tell the daemons that a provider's limits or availability changed: payload = provider name.
CREATE FUNCTION public.notify_provider_limits() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('usaged_limits', OLD.name);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.name IS DISTINCT FROM OLD.name) THEN
        PERFORM pg_notify('usaged_limits', NEW.name);
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION public.notify_provider_limits() IS
    'Trigger: NOTIFY usaged_limits, <provider name> when a provider''s limits change.';

CREATE TRIGGER api_providers_notify_limits_insert_delete
    AFTER INSERT OR DELETE ON public.api_providers
    FOR EACH ROW EXECUTE FUNCTION public.notify_provider_limits();
CREATE TRIGGER api_providers_notify_limits_update
    AFTER UPDATE OF name, max_requests_per_minute, max_requests_per_day, is_enabled
    ON public.api_providers
    FOR EACH ROW
    WHEN (OLD.max_requests_per_minute IS DISTINCT FROM NEW.max_requests_per_minute
          OR OLD.max_requests_per_day IS DISTINCT FROM NEW.max_requests_per_day
          OR OLD.is_enabled IS DISTINCT FROM NEW.is_enabled
          OR OLD.name IS DISTINCT FROM NEW.name)
    EXECUTE FUNCTION public.notify_provider_limits();

CREATE TABLE public.api_configurations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    provider varchar(50) NOT NULL REFERENCES public.api_providers (name) ON UPDATE CASCADE,
    -- Only ever an ASCII-armored OpenPGP message (pgcrypto armor(pgp_sym_encrypt(...))): see
    -- public.store_api_key(). The trigger api_configurations_key_armored below refuses anything
    -- else, plaintext keys included.
    api_key_encrypted text NOT NULL,
    is_active boolean NOT NULL DEFAULT true,
    is_validated boolean NOT NULL DEFAULT false,
    last_validated_at timestamptz,
    validation_error text,
    usage_count integer NOT NULL DEFAULT 0 CHECK (usage_count >= 0),
    last_used_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, provider)
);
COMMENT ON TABLE public.api_configurations IS
    'A user''s API key per provider, encrypted (see store_api_key/read_api_key).';
COMMENT ON COLUMN public.api_configurations.api_key_encrypted IS
    'armor(pgp_sym_encrypt(key, current_setting(''app.settings.encryption_key''), '
    '''cipher-algo=aes256'')): ASCII-armored OpenPGP, never plaintext.';

-- The armor check is a trigger on the key column rather than a CHECK constraint: a CHECK is
-- re-evaluated on every UPDATE of the row, and usaged updates usage_count for every batch it
-- writes; evaluating this regular expression there cost a sixth of ingest time (bench/RESULTS.md).
-- Same rule, same error (check_violation, constraint api_configurations_api_key_encrypted_armored).
CREATE FUNCTION public.check_api_key_armored() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.api_key_encrypted !~ '^-----BEGIN PGP MESSAGE-----\n.*\n-----END PGP MESSAGE-----\s*$' THEN
        RAISE EXCEPTION 'api_key_encrypted must be an ASCII-armored OpenPGP message, never a plaintext key'
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = 'api_configurations_api_key_encrypted_armored',
                  SCHEMA = 'public', TABLE = 'api_configurations', COLUMN = 'api_key_encrypted';
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION public.check_api_key_armored() IS
    'Trigger: refuses an api_key_encrypted that is not an ASCII-armored OpenPGP message.';
CREATE TRIGGER api_configurations_key_armored
    BEFORE INSERT OR UPDATE OF api_key_encrypted ON public.api_configurations
    FOR EACH ROW EXECUTE FUNCTION public.check_api_key_armored();

-- usage_count/last_used_at are bumped by usaged on every call: not a change of the row's
-- configuration, so they leave updated_at alone.
CREATE TRIGGER api_configurations_set_updated_at
    BEFORE UPDATE OF user_id, provider, api_key_encrypted, is_active, is_validated,
                     last_validated_at, validation_error
    ON public.api_configurations
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();

-- The write-hot table: range-partitioned by month on created_at (0007 has the functions that
-- create the partitions and apply retention). The DEFAULT partition takes a row of any month
-- that has no partition, so no row is ever refused for its date.
CREATE TABLE public.api_usage_logs (
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    user_id uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    provider varchar(50) NOT NULL CHECK (char_length(provider) BETWEEN 1 AND 50),
    endpoint text,
    request_size integer CHECK (request_size >= 0),
    response_size integer CHECK (response_size >= 0),
    response_time_ms integer CHECK (response_time_ms >= 0),
    status_code integer CHECK (status_code BETWEEN 100 AND 599),
    error_message text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
COMMENT ON TABLE public.api_usage_logs IS
    'One row per AI API call, written by usaged (COPY). Monthly partitions (UTC) plus a '
    'default partition; owned by usaged.';

CREATE TABLE public.api_usage_logs_default PARTITION OF public.api_usage_logs DEFAULT;

-- usaged owns the log table and its partitions: COPY into a table with RLS is refused to
-- anyone but its owner, and VACUUM needs ownership. The owner bypasses RLS (no FORCE).
ALTER TABLE public.api_usage_logs OWNER TO usaged;
ALTER TABLE public.api_usage_logs_default OWNER TO usaged;

ALTER TABLE public.api_providers ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.api_configurations ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.api_usage_logs ENABLE ROW LEVEL SECURITY;
-- Partitions are reached through their parent, whose policies apply; RLS on the partitions
-- themselves (with no policy) shuts the side door of querying one directly.
ALTER TABLE public.api_usage_logs_default ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.api_providers, public.api_configurations, public.api_usage_logs,
              public.api_usage_logs_default
    FROM PUBLIC, anon, authenticated, service_role;

-- API keys. The encryption key is the setting app.settings.encryption_key (e.g.
-- ALTER DATABASE ... SET app.settings.encryption_key = '...', or set per session by a server).

CREATE FUNCTION public.validate_api_key_format(provider text, api_key text) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(
        (SELECT btrim(api_key) <> ''
                AND char_length(api_key) <= 1024
                AND (p.api_key_pattern IS NULL OR api_key ~ p.api_key_pattern)
           FROM public.api_providers p
          WHERE p.name = validate_api_key_format.provider),
        false)
$$;
COMMENT ON FUNCTION public.validate_api_key_format(text, text) IS
    'True when the key is non-empty, at most 1024 chars and matches the provider''s '
    'api_key_pattern; false for an unknown provider.';

CREATE FUNCTION public.store_api_key(provider text, plaintext text) RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, extensions, pg_temp  -- pgcrypto's schema: see below
AS $$
DECLARE
    v_user uuid := auth.uid();
    v_secret text := current_setting('app.settings.encryption_key', true);
    v_pattern text;
    v_id uuid;
BEGIN
    IF v_user IS NULL THEN
        RAISE EXCEPTION 'store_api_key: no authenticated user (auth.uid() is null)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF v_secret IS NULL OR v_secret = '' THEN
        RAISE EXCEPTION 'store_api_key: app.settings.encryption_key is not set'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Set it for the database (ALTER DATABASE ... SET '
                         'app.settings.encryption_key = ''...'') or for the session.';
    END IF;
    SELECT p.api_key_pattern INTO v_pattern
      FROM public.api_providers p
     WHERE p.name = store_api_key.provider;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'store_api_key: unknown provider "%"', store_api_key.provider
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The message never quotes the key.
    IF NOT public.validate_api_key_format(store_api_key.provider, plaintext) THEN
        RAISE EXCEPTION 'store_api_key: the key does not have the format of a % key',
                        store_api_key.provider
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    INSERT INTO public.api_configurations AS c (user_id, provider, api_key_encrypted)
    VALUES (v_user, store_api_key.provider,
            armor(pgp_sym_encrypt(plaintext, v_secret, 'cipher-algo=aes256')))
    ON CONFLICT ON CONSTRAINT api_configurations_user_id_provider_key DO UPDATE
       SET api_key_encrypted = excluded.api_key_encrypted,
           is_active = true,
           is_validated = false,
           last_validated_at = NULL,
           validation_error = NULL
    RETURNING c.id INTO v_id;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION public.store_api_key(text, text) IS
    'Validates a key against the provider''s api_key_pattern, encrypts it under '
    'app.settings.encryption_key and stores it for auth.uid(); returns the configuration id.';

CREATE FUNCTION public.read_api_key(provider text) RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, extensions, pg_temp  -- pgcrypto's schema: see below
AS $$
DECLARE
    v_user uuid := auth.uid();
    v_secret text := current_setting('app.settings.encryption_key', true);
    v_cipher text;
BEGIN
    IF v_user IS NULL THEN
        RAISE EXCEPTION 'read_api_key: no authenticated user (auth.uid() is null)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF v_secret IS NULL OR v_secret = '' THEN
        RAISE EXCEPTION 'read_api_key: app.settings.encryption_key is not set'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    SELECT c.api_key_encrypted INTO v_cipher
      FROM public.api_configurations c
     WHERE c.user_id = v_user AND c.provider = read_api_key.provider;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    BEGIN
        RETURN pgp_sym_decrypt(dearmor(v_cipher), v_secret);
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'read_api_key: cannot decrypt the % key: wrong '
                        'app.settings.encryption_key or corrupt data', read_api_key.provider
            USING ERRCODE = 'data_corrupted';
    END;
END
$$;
COMMENT ON FUNCTION public.read_api_key(text) IS
    'The calling user''s (auth.uid()) key for a provider, decrypted; NULL when none is stored.';

-- The two SECURITY DEFINER functions above search only pg_catalog and pgcrypto's schema
-- (extensions here and on Supabase, wherever an existing install put it otherwise): not
-- public, where usaged may create objects (its partitions).
DO $$
DECLARE
    v_schema text := (SELECT n.nspname FROM pg_catalog.pg_extension e
                        JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
                       WHERE e.extname = 'pgcrypto');
BEGIN
    EXECUTE format('ALTER FUNCTION public.store_api_key(text, text) '
                   'SET search_path = pg_catalog, %I, pg_temp', v_schema);
    EXECUTE format('ALTER FUNCTION public.read_api_key(text) '
                   'SET search_path = pg_catalog, %I, pg_temp', v_schema);
END
$$;

-- Functions are executable by PUBLIC by default (and, on Supabase, by anon/authenticated/
-- service_role through default privileges): grant each one to exactly its callers.
REVOKE ALL ON FUNCTION public.validate_api_key_format(text, text), public.store_api_key(text, text),
                       public.read_api_key(text), public.notify_provider_limits(),
                       public.check_api_key_armored()
    FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.validate_api_key_format(text, text)
    TO anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.store_api_key(text, text) TO authenticated;
GRANT EXECUTE ON FUNCTION public.read_api_key(text) TO authenticated;
