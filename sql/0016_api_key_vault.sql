-- 0016_api_key_vault: the API-key encryption key comes from Supabase Vault where there is one.
--
-- On Supabase the migrating role (postgres) may not set a parameter for the database or a role
-- ("permission denied to set parameter"), so app.settings.encryption_key cannot be set there
-- the way 0004's HINT said. Where schema vault exists (Supabase Vault), store_api_key() and
-- read_api_key() read the key from vault.decrypted_secrets, the secret named
-- 'usaged_api_key_encryption_key'; elsewhere (plain PostgreSQL) from the setting
-- app.settings.encryption_key, as before. One source per database, never a mix: a key stored
-- under one secret is read back under the same one.

-- The key, from whichever source this database has; when that source has none, the error both
-- key functions give (55000), its HINT saying how to set the key on this database. Called by the
-- two SECURITY DEFINER functions below, so it runs as their owner (who may read the Vault);
-- nobody else may call it.
CREATE FUNCTION public.api_key_encryption_key(caller text) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_secret text;
BEGIN
    IF pg_catalog.to_regnamespace('vault') IS NOT NULL THEN
        SELECT s.decrypted_secret INTO v_secret
          FROM vault.decrypted_secrets s
         WHERE s.name = 'usaged_api_key_encryption_key';
        IF coalesce(v_secret, '') = '' THEN
            RAISE EXCEPTION '%: the Vault has no secret named usaged_api_key_encryption_key',
                            caller
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Create it once, as postgres: SELECT vault.create_secret(''<a long '
                             'random key>'', ''usaged_api_key_encryption_key'');';
        END IF;
        RETURN v_secret;
    END IF;
    v_secret := pg_catalog.current_setting('app.settings.encryption_key', true);
    IF coalesce(v_secret, '') = '' THEN
        RAISE EXCEPTION '%: app.settings.encryption_key is not set', caller
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'As a superuser: ALTER DATABASE <this database> SET '
                         'app.settings.encryption_key = ''<a long random key>''; or set it for '
                         'the session. (On Supabase, use the Vault: see docs/operations.md.)';
    END IF;
    RETURN v_secret;
END
$$;
COMMENT ON FUNCTION public.api_key_encryption_key(text) IS
    'The API-key encryption key: the Vault secret usaged_api_key_encryption_key where schema '
    'vault exists, else the setting app.settings.encryption_key; raises 55000 when it is not '
    'there. For store_api_key and read_api_key only.';
REVOKE ALL ON FUNCTION public.api_key_encryption_key(text)
    FROM PUBLIC, anon, authenticated, service_role;

CREATE OR REPLACE FUNCTION public.store_api_key(provider text, plaintext text) RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    v_user uuid := auth.uid();
    v_secret text;
    v_id uuid;
BEGIN
    IF v_user IS NULL THEN
        RAISE EXCEPTION 'store_api_key: no authenticated user (auth.uid() is null)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    v_secret := public.api_key_encryption_key('store_api_key');
    PERFORM 1 FROM public.api_providers p WHERE p.name = store_api_key.provider;
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
    'Validates a key against the provider''s api_key_pattern, encrypts it under the API-key '
    'encryption key (Vault secret usaged_api_key_encryption_key, or app.settings.encryption_key '
    'without a Vault) and stores it for auth.uid(); returns the configuration id.';

CREATE OR REPLACE FUNCTION public.read_api_key(provider text) RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    v_user uuid := auth.uid();
    v_secret text;
    v_cipher text;
BEGIN
    IF v_user IS NULL THEN
        RAISE EXCEPTION 'read_api_key: no authenticated user (auth.uid() is null)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    v_secret := public.api_key_encryption_key('read_api_key');
    SELECT c.api_key_encrypted INTO v_cipher
      FROM public.api_configurations c
     WHERE c.user_id = v_user AND c.provider = read_api_key.provider;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    BEGIN
        RETURN pgp_sym_decrypt(dearmor(v_cipher), v_secret);
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'read_api_key: cannot decrypt the % key: wrong encryption key or '
                        'corrupt data', read_api_key.provider
            USING ERRCODE = 'data_corrupted';
    END;
END
$$;

-- CREATE OR REPLACE keeps each function's owner and grants, not its settings: search only
-- pg_catalog and pgcrypto's schema again, as 0004 set it.
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
