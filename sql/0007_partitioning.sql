-- 0007_partitioning: monthly partitions of api_usage_logs and prompt_history, and retention.
--
-- Partitions are named <table>_YYYY_MM, cover one calendar month in UTC, and live in schema
-- public next to their parent. The functions that create and drop them are SECURITY DEFINER
-- owned by usaged, so whoever calls them (the daemon, daily_maintenance(), an operator) every
-- partition is owned by usaged, like its parent. They take an advisory lock, so daemons on
-- several hosts may call them at the same time.

-- The partitions of a log table and their bounds, parsed from the catalog.
CREATE FUNCTION usaged.partitions_of(parent regclass)
RETURNS TABLE (partition regclass, is_default boolean, range_start timestamptz,
               range_end timestamptz)
LANGUAGE plpgsql STABLE
-- Bounds are printed and read back in these settings, whatever the caller's are.
SET search_path = pg_catalog, pg_temp
SET timezone = 'UTC'
SET datestyle = 'ISO, YMD'
AS $$
DECLARE
    r record;
    m text[];
BEGIN
    FOR r IN
        SELECT c.oid::regclass AS rel, pg_get_expr(c.relpartbound, c.oid) AS bound
          FROM pg_inherits i
          JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = partitions_of.parent
         ORDER BY c.relname
    LOOP
        partition := r.rel;
        IF r.bound = 'DEFAULT' THEN
            is_default := true;
            range_start := NULL;
            range_end := NULL;
        ELSE
            m := regexp_match(r.bound, '^FOR VALUES FROM \((.*)\) TO \((.*)\)$');
            IF m IS NULL THEN
                RAISE EXCEPTION 'partitions_of: unexpected bound of %: %', r.rel, r.bound;
            END IF;
            is_default := false;
            range_start := CASE WHEN m[1] = 'MINVALUE' THEN '-infinity'::timestamptz
                                ELSE btrim(m[1], '''')::timestamptz END;
            range_end := CASE WHEN m[2] = 'MAXVALUE' THEN 'infinity'::timestamptz
                              ELSE btrim(m[2], '''')::timestamptz END;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION usaged.partitions_of(regclass) IS
    'The partitions of a partitioned table with their range bounds (NULL for DEFAULT).';

-- Creates the partition of one month, moving that month's rows out of the DEFAULT partition
-- first when it holds some (rows that arrived before their month had a partition).
-- Returns the number of rows moved, or NULL when a partition already covered the month.
CREATE FUNCTION usaged.create_partition(parent_table text, for_month date)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET timezone = 'UTC'
SET datestyle = 'ISO, YMD'
AS $$
DECLARE
    v_table text := regexp_replace(parent_table, '^public\.', '');
    v_parent regclass;
    v_start timestamptz := date_trunc('month', for_month::timestamp) AT TIME ZONE 'UTC';
    v_end timestamptz := (date_trunc('month', for_month::timestamp) + interval '1 month')
                         AT TIME ZONE 'UTC';
    v_name text;
    v_default regclass;
    v_has_rows boolean := false;
    v_columns text;
    v_moved bigint := 0;
BEGIN
    IF v_table NOT IN ('api_usage_logs', 'prompt_history') THEN
        RAISE EXCEPTION 'create_partition: % is not a partitioned log table', parent_table
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF for_month IS NULL THEN
        RAISE EXCEPTION 'create_partition: for_month is null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    v_parent := format('public.%I', v_table)::regclass;
    v_name := v_table || '_' || to_char(v_start, 'YYYY_MM');

    PERFORM pg_advisory_xact_lock(hashtext('usaged.partitions'));

    IF EXISTS (SELECT 1 FROM usaged.partitions_of(v_parent) p
                WHERE NOT p.is_default AND p.range_start <= v_start AND p.range_end >= v_end) THEN
        RETURN NULL;
    END IF;

    -- Creating a partition locks the parent anyway; taking the lock first also keeps rows of
    -- this month from reaching the DEFAULT partition between the check and the move.
    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', v_parent);

    SELECT p.partition INTO v_default FROM usaged.partitions_of(v_parent) p WHERE p.is_default;
    IF v_default IS NOT NULL THEN
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE created_at >= $1 AND created_at < $2)',
                       v_default)
           INTO v_has_rows USING v_start, v_end;
    END IF;

    -- A partition cannot be created while the DEFAULT partition holds rows of its range: detach
    -- the DEFAULT partition, create the new one, move the rows, attach the DEFAULT back. All of
    -- it is one transaction: a failure leaves everything as it was.
    IF v_has_rows THEN
        EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', v_parent, v_default);
    END IF;

    EXECUTE format('CREATE TABLE usaged.%I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
                   v_name, v_parent, v_start, v_end);
    EXECUTE format('ALTER TABLE usaged.%I ENABLE ROW LEVEL SECURITY', v_name);
    EXECUTE format('REVOKE ALL ON usaged.%I FROM PUBLIC, anon, authenticated, service_role',
                   v_name);

    IF v_has_rows THEN
        SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO v_columns
          FROM pg_attribute a
         WHERE a.attrelid = v_parent AND a.attnum > 0 AND NOT a.attisdropped;
        EXECUTE format('WITH moved AS (DELETE FROM %s WHERE created_at >= $1 AND created_at < $2 '
                       'RETURNING %s) INSERT INTO usaged.%I (%s) SELECT %s FROM moved',
                       v_default, v_columns, v_name, v_columns, v_columns)
           USING v_start, v_end;
        GET DIAGNOSTICS v_moved = ROW_COUNT;
        EXECUTE format('ALTER TABLE %s ATTACH PARTITION %s DEFAULT', v_parent, v_default);
    END IF;
    RETURN v_moved;
END
$$;
COMMENT ON FUNCTION usaged.create_partition(text, date) IS
    'Creates the month''s partition of api_usage_logs or prompt_history (moving that month''s '
    'rows out of the DEFAULT partition); returns rows moved, NULL if it already existed.';

-- Creates the partitions of the current month (UTC) and of the next months_ahead months, for
-- both log tables. Idempotent. Returns the partitions it created.
CREATE FUNCTION usaged.create_partitions(months_ahead integer DEFAULT 3)
RETURNS TABLE (parent_table text, partition_name text, range_start timestamptz,
               range_end timestamptz, rows_moved bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET timezone = 'UTC'
AS $$
DECLARE
    v_first date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    v_month date;
    v_moved bigint;
    i integer;
BEGIN
    IF months_ahead IS NULL OR months_ahead < 0 OR months_ahead > 120 THEN
        RAISE EXCEPTION 'create_partitions: months_ahead must be between 0 and 120, not %',
                        months_ahead
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOREACH parent_table IN ARRAY ARRAY['api_usage_logs', 'prompt_history'] LOOP
        FOR i IN 0 .. months_ahead LOOP
            v_month := (v_first + make_interval(months => i))::date;
            v_moved := usaged.create_partition(parent_table, v_month);
            IF v_moved IS NOT NULL THEN
                partition_name := 'usaged.' || parent_table || '_' || to_char(v_month, 'YYYY_MM');
                range_start := v_month::timestamp AT TIME ZONE 'UTC';
                range_end := (v_month + interval '1 month') AT TIME ZONE 'UTC';
                rows_moved := v_moved;
                RETURN NEXT;
            END IF;
        END LOOP;
    END LOOP;
END
$$;
COMMENT ON FUNCTION usaged.create_partitions(integer) IS
    'Creates the monthly partitions (UTC) of api_usage_logs and prompt_history from the '
    'current month to months_ahead months ahead; idempotent; returns what it created.';

-- Retention:
--  * api_usage_logs: rows older than system_config 'api_usage_logs_retention_days' go. Whole
--    partitions entirely older than the cutoff are dropped; older rows of the partition that
--    straddles the cutoff, and of the DEFAULT partition, are deleted. Without a valid setting,
--    nothing is removed.
--  * prompt_history: for each user whose user_preferences say auto_cleanup, rows older than
--    that user's max_history_days are deleted. Nobody else's history is touched.
-- Returns a jsonb summary of what it removed.
CREATE FUNCTION usaged.apply_retention()
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET timezone = 'UTC'
AS $$
DECLARE
    v_setting jsonb;
    v_days integer;
    v_cutoff timestamptz;
    v_dropped jsonb := '[]'::jsonb;
    v_dropped_rows bigint := 0;
    v_deleted_logs bigint := 0;
    v_deleted_history bigint := 0;
    v_users bigint := 0;
    p record;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('usaged.partitions'));

    SELECT c.value INTO v_setting
      FROM public.system_config c WHERE c.key = 'api_usage_logs_retention_days';
    IF jsonb_typeof(v_setting) = 'number' AND v_setting::numeric >= 1
       AND v_setting::numeric <= 36500 THEN
        v_days := floor(v_setting::numeric)::integer;
    END IF;

    IF v_days IS NOT NULL THEN
        v_cutoff := now() - make_interval(days => v_days);
        FOR p IN
            SELECT s.partition::text AS name, c.reltuples
              FROM usaged.partitions_of('public.api_usage_logs'::regclass) s
              JOIN pg_class c ON c.oid = s.partition
             WHERE NOT s.is_default AND s.range_end <= v_cutoff
             ORDER BY s.range_start
        LOOP
            EXECUTE format('DROP TABLE %s', p.name);
            v_dropped := v_dropped || to_jsonb(p.name);
            v_dropped_rows := v_dropped_rows + greatest(p.reltuples, 0)::bigint;
        END LOOP;
        -- Partition pruning keeps this to the boundary partition and the DEFAULT partition.
        DELETE FROM public.api_usage_logs WHERE created_at < v_cutoff;
        GET DIAGNOSTICS v_deleted_logs = ROW_COUNT;
    END IF;

    SELECT count(*) INTO v_users FROM public.user_preferences up WHERE up.auto_cleanup;
    DELETE FROM public.prompt_history h
     USING public.user_preferences up
     WHERE up.user_id = h.user_id
       AND up.auto_cleanup
       AND h.created_at < now() - make_interval(days => up.max_history_days);
    GET DIAGNOSTICS v_deleted_history = ROW_COUNT;

    RETURN jsonb_build_object(
        'api_usage_logs', jsonb_build_object(
            'retention_days', v_days,
            'cutoff', v_cutoff,
            'partitions_dropped', v_dropped,
            'partition_rows_dropped_estimate', v_dropped_rows,
            'rows_deleted', v_deleted_logs),
        'prompt_history', jsonb_build_object(
            'users_with_auto_cleanup', v_users,
            'rows_deleted', v_deleted_history));
END
$$;
COMMENT ON FUNCTION usaged.apply_retention() IS
    'Applies retention to api_usage_logs (system_config api_usage_logs_retention_days) and to '
    'prompt_history (user_preferences.max_history_days where auto_cleanup); returns a summary.';

ALTER FUNCTION usaged.partitions_of(regclass) OWNER TO usaged;
ALTER FUNCTION usaged.create_partition(text, date) OWNER TO usaged;
ALTER FUNCTION usaged.create_partitions(integer) OWNER TO usaged;
ALTER FUNCTION usaged.apply_retention() OWNER TO usaged;
REVOKE ALL ON FUNCTION usaged.partitions_of(regclass), usaged.create_partition(text, date),
                       usaged.create_partitions(integer), usaged.apply_retention()
    FROM PUBLIC;

-- The partitions of this month and the next three, created as usaged by the function above.
SELECT count(*) FROM usaged.create_partitions(3);
