-- 0011_maintenance: daily_maintenance(), analyze_all_tables(), get_database_stats(),
-- vacuum_all_tables(), compute_feedback_analytics().
--
-- VACUUM cannot run inside a function (nor a transaction block). public.vacuum_all_tables()
-- therefore returns the VACUUM statements for a client to run one by one; the daemon itself runs
-- VACUUM (ANALYZE) on the tables it owns (api_usage_logs, prompt_history, schema usaged).
-- ANALYZE may run in a function, and analyze_all_tables() does; it matters most for the
-- partitioned parents, which autovacuum never analyzes.
-- These functions are SECURITY DEFINER owned by the migration runner (the owner of the tables),
-- take no input that reaches SQL text, and are executable by usaged and service_role only.

-- Feedback metrics of one period: one row per feedback type and one for 'all'. Idempotent.
CREATE FUNCTION public.compute_feedback_analytics(
    period_start date DEFAULT ((now() AT TIME ZONE 'UTC')::date - 1),
    period_type text DEFAULT 'day')
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET timezone = 'UTC'
AS $$
DECLARE
    v_start date;
    v_end date;
    v_rows integer;
BEGIN
    v_start := CASE period_type
                   WHEN 'day' THEN period_start
                   WHEN 'week' THEN date_trunc('week', period_start)::date
                   WHEN 'month' THEN date_trunc('month', period_start)::date
               END;
    IF v_start IS NULL THEN
        RAISE EXCEPTION 'compute_feedback_analytics: period_type must be day, week or month'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_end := (v_start + CASE period_type WHEN 'day' THEN interval '1 day'
                                         WHEN 'week' THEN interval '1 week'
                                         ELSE interval '1 month' END)::date;

    INSERT INTO public.feedback_analytics AS a
           (period_type, period_start, feedback_type, total_count, open_count, in_progress_count,
            resolved_count, closed_count, rated_count, avg_rating, avg_response_hours, metrics)
    SELECT compute_feedback_analytics.period_type, v_start,
           CASE WHEN GROUPING(f.feedback_type) = 1 THEN 'all' ELSE f.feedback_type END,
           count(*),
           count(*) FILTER (WHERE f.status = 'open'),
           count(*) FILTER (WHERE f.status = 'in_progress'),
           count(*) FILTER (WHERE f.status = 'resolved'),
           count(*) FILTER (WHERE f.status = 'closed'),
           count(f.rating),
           round(avg(f.rating), 2),
           round((avg(extract(epoch FROM f.responded_at - f.created_at)) / 3600)::numeric, 2),
           jsonb_build_object(
               'by_priority', jsonb_build_object(
                   'low', count(*) FILTER (WHERE f.priority = 'low'),
                   'medium', count(*) FILTER (WHERE f.priority = 'medium'),
                   'high', count(*) FILTER (WHERE f.priority = 'high'),
                   'urgent', count(*) FILTER (WHERE f.priority = 'urgent')),
               'anonymous', count(*) FILTER (WHERE f.user_id IS NULL),
               'responded', count(f.responded_at))
      FROM public.feedback f
     WHERE f.created_at >= v_start::timestamp AT TIME ZONE 'UTC'
       AND f.created_at < v_end::timestamp AT TIME ZONE 'UTC'
     GROUP BY GROUPING SETS ((f.feedback_type), ())
    ON CONFLICT ON CONSTRAINT feedback_analytics_period_key DO UPDATE
       SET total_count = excluded.total_count,
           open_count = excluded.open_count,
           in_progress_count = excluded.in_progress_count,
           resolved_count = excluded.resolved_count,
           closed_count = excluded.closed_count,
           rated_count = excluded.rated_count,
           avg_rating = excluded.avg_rating,
           avg_response_hours = excluded.avg_response_hours,
           metrics = excluded.metrics;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END
$$;
COMMENT ON FUNCTION public.compute_feedback_analytics(date, text) IS
    'Fills feedback_analytics for the period (day/week/month, UTC) containing period_start; '
    'returns the rows written.';

-- The daily job: partitions ahead, retention, expired sessions, yesterday's feedback metrics.
-- What the daily maintenance needs the owner's rights for. It is SECURITY DEFINER (owned by the
-- migration runner) and executable by usaged, so it must never call anything usaged owns or can
-- replace (usaged.create_partitions, usaged.apply_retention): usaged would get the runner's
-- rights. The daemon calls those two itself, as usaged.
CREATE FUNCTION public.daily_maintenance()
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET timezone = 'UTC'
AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_sessions bigint;
    v_feedback integer;
BEGIN
    DELETE FROM public.user_sessions s
     WHERE s.expires_at < now()
        OR (s.ended_at IS NOT NULL AND s.ended_at < now() - interval '30 days');
    GET DIAGNOSTICS v_sessions = ROW_COUNT;

    v_feedback := public.compute_feedback_analytics((now() AT TIME ZONE 'UTC')::date - 1, 'day');

    RETURN jsonb_build_object(
        'started_at', v_started,
        'finished_at', clock_timestamp(),
        'expired_sessions_deleted', v_sessions,
        'feedback_analytics_rows', v_feedback,
        'partitions_and_retention', 'not run here: usaged.create_partitions() and '
                                    'usaged.apply_retention(), called by their owner',
        'vacuum', 'not run here: run the statements of public.vacuum_all_tables() outside a '
                  'transaction');
END
$$;
COMMENT ON FUNCTION public.daily_maintenance() IS
    'Daily job: delete expired user_sessions, compute yesterday''s feedback_analytics. Returns a '
    'jsonb summary. Partitions, retention (usaged.create_partitions/apply_retention) and VACUUM '
    'are run by the daemon separately.';

-- ANALYZE every table of the application (public, usaged) and the analytics views.
CREATE FUNCTION public.analyze_all_tables()
RETURNS TABLE (table_name text, duration_ms numeric)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    v_t0 timestamptz;
BEGIN
    FOR r IN
        SELECT c.oid::regclass AS rel
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname IN ('public', 'usaged', 'analytics')
           AND c.relkind IN ('r', 'p', 'm')
           AND NOT c.relispartition
           AND (c.relkind <> 'm' OR c.relispopulated)
         ORDER BY n.nspname, c.relname
    LOOP
        v_t0 := clock_timestamp();
        EXECUTE format('ANALYZE %s', r.rel);
        table_name := r.rel::text;
        duration_ms := round((extract(epoch FROM clock_timestamp() - v_t0) * 1000)::numeric, 1);
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION public.analyze_all_tables() IS
    'ANALYZE on every table of schemas public and usaged (partitioned ones with their '
    'partitions) and on the analytics views; returns each with its duration.';

-- Size and health of every table: a partitioned table is reported once, with its partitions
-- summed.
CREATE FUNCTION public.get_database_stats()
RETURNS TABLE (schema_name text, table_name text, kind text, partitions integer,
               row_estimate bigint, total_bytes bigint, table_bytes bigint, index_bytes bigint,
               total_size text, dead_tuples bigint, last_vacuum timestamptz,
               last_analyze timestamptz)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT n.nspname::text,
           c.relname::text,
           CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned table'
                          WHEN 'm' THEN 'materialized view' END,
           (count(*) FILTER (WHERE t.relid <> c.oid))::integer,
           sum(greatest(lc.reltuples, 0))::bigint,
           sum(pg_total_relation_size(t.relid))::bigint,
           sum(pg_relation_size(t.relid))::bigint,
           sum(pg_indexes_size(t.relid))::bigint,
           pg_size_pretty(sum(pg_total_relation_size(t.relid))::bigint),
           coalesce(sum(s.n_dead_tup), 0)::bigint,
           max(greatest(s.last_vacuum, s.last_autovacuum)),
           max(greatest(s.last_analyze, s.last_autoanalyze))
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
     -- pg_partition_tree() lists a partitioned table and its partitions, and nothing for a
     -- table that is not partitioned: that one is its own single leaf.
     CROSS JOIN LATERAL (SELECT pt.relid, pt.isleaf FROM pg_partition_tree(c.oid) pt
                         UNION ALL
                         SELECT c.oid, true WHERE c.relkind <> 'p') t
      JOIN pg_class lc ON lc.oid = t.relid
      LEFT JOIN pg_stat_all_tables s ON s.relid = t.relid
     WHERE n.nspname IN ('public', 'usaged', 'analytics')
       AND c.relkind IN ('r', 'p', 'm')
       AND NOT c.relispartition
       AND (t.isleaf OR t.relid = c.oid)
     GROUP BY n.nspname, c.relname, c.relkind, c.oid
     ORDER BY sum(pg_total_relation_size(t.relid)) DESC, 1, 2
$$;
COMMENT ON FUNCTION public.get_database_stats() IS
    'Per table (partitioned tables summed over their partitions): row estimate, sizes, dead '
    'tuples, last vacuum and analyze.';

-- The VACUUM statements to run, outside any transaction, one at a time (VACUUM cannot run in a
-- function). owner says who may run each: the daemon runs those owned by usaged.
CREATE FUNCTION public.vacuum_all_tables()
RETURNS TABLE (table_name text, owner text, statement text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.oid::regclass::text,
           pg_get_userbyid(c.relowner)::text,
           format('VACUUM (ANALYZE) %s;', c.oid::regclass)
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname IN ('public', 'usaged')
       AND c.relkind IN ('r', 'p')
       AND NOT c.relispartition
     ORDER BY n.nspname, c.relname
$$;
COMMENT ON FUNCTION public.vacuum_all_tables() IS
    'Returns VACUUM (ANALYZE) statements for every table (a partitioned table''s covers its '
    'partitions), to run outside a transaction; VACUUM cannot run inside a function.';

REVOKE ALL ON FUNCTION public.compute_feedback_analytics(date, text), public.daily_maintenance(),
                       public.analyze_all_tables(), public.get_database_stats(),
                       public.vacuum_all_tables()
    FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.daily_maintenance(), public.analyze_all_tables(),
                          public.get_database_stats(), public.vacuum_all_tables()
    TO usaged, service_role;
GRANT EXECUTE ON FUNCTION public.compute_feedback_analytics(date, text) TO service_role;
