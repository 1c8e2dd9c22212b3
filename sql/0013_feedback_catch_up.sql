-- 0013_feedback_catch_up: daily_maintenance() computes every day's feedback metrics it missed.
--
-- Before, it computed yesterday's only: a day on which no maintenance ran at all (every daemon
-- down, or maintenance.at unset for a while) left the day before it without feedback_analytics
-- for good. Now it computes each day from the one after the last computed day through yesterday,
-- at most the last 31 days. Every computed day has its 'all' row (even with no feedback), so the
-- latest 'day' row marks how far the computing got. It reads only feedback_analytics, which its
-- owner owns: it must not read or call anything the daemon's role owns (see 0011).
CREATE OR REPLACE FUNCTION public.daily_maintenance()
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET timezone = 'UTC'
AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_yesterday date := (now() AT TIME ZONE 'UTC')::date - 1;
    v_from date;
    v_day date;
    v_sessions bigint;
    v_feedback integer := 0;
BEGIN
    DELETE FROM public.user_sessions s
     WHERE s.expires_at < now()
        OR (s.ended_at IS NOT NULL AND s.ended_at < now() - interval '30 days');
    GET DIAGNOSTICS v_sessions = ROW_COUNT;

    SELECT max(a.period_start) + 1 INTO v_from
      FROM public.feedback_analytics a
     WHERE a.period_type = 'day' AND a.period_start <= v_yesterday;
    v_from := least(v_yesterday, greatest(coalesce(v_from, v_yesterday), v_yesterday - 30));
    v_day := v_from;
    WHILE v_day <= v_yesterday LOOP
        v_feedback := v_feedback + public.compute_feedback_analytics(v_day, 'day');
        v_day := v_day + 1;
    END LOOP;

    RETURN jsonb_build_object(
        'started_at', v_started,
        'finished_at', clock_timestamp(),
        'expired_sessions_deleted', v_sessions,
        'feedback_analytics_days', jsonb_build_array(v_from, v_yesterday),
        'feedback_analytics_rows', v_feedback,
        'partitions_and_retention', 'not run here: usaged.create_partitions() and '
                                    'usaged.apply_retention(), called by their owner',
        'vacuum', 'not run here: run the statements of public.vacuum_all_tables() outside a '
                  'transaction');
END
$$;
COMMENT ON FUNCTION public.daily_maintenance() IS
    'Daily job: delete expired user_sessions, compute feedback_analytics for each day since the '
    'last computed one through yesterday (at most 31 days). Returns a jsonb summary. Partitions, '
    'retention (usaged.create_partitions/apply_retention) and VACUUM are run by the daemon '
    'separately.';
