-- 0010_analytics: materialized views for analytics, and per-user views over them.
--
-- Materialized views have no row level security, so they live in schema analytics, which anon
-- and authenticated cannot even look into. Each has a UNIQUE index over its grouping columns,
-- which REFRESH MATERIALIZED VIEW CONCURRENTLY needs; a nullable grouping column is COALESCEd
-- to '' so that the unique index sees one value for "none". Days and hours are UTC.
-- usaged owns the views (PostgreSQL 15 refreshes only for the owner) and refreshes them on its
-- timers. Users see their own numbers through public.my_* views that filter on auth.uid().
-- Every name is schema-qualified: REFRESH may run with any search_path.

CREATE SCHEMA analytics;
REVOKE ALL ON SCHEMA analytics FROM PUBLIC;
GRANT USAGE ON SCHEMA analytics TO usaged, service_role;
-- Only while this migration hands the views to usaged: a new owner needs CREATE on the schema
-- (for a non-superuser runner). Revoked again at the end.
GRANT CREATE ON SCHEMA analytics TO usaged;

-- API usage per UTC day, user and provider.
CREATE MATERIALIZED VIEW analytics.api_usage_daily AS
SELECT (l.created_at AT TIME ZONE 'UTC')::date AS day,
       l.user_id,
       l.provider,
       count(*) AS requests,
       count(*) FILTER (WHERE l.status_code >= 400) AS errors,
       count(*) FILTER (WHERE l.status_code = 429) AS rate_limited,
       round(avg(l.response_time_ms), 2) AS avg_response_time_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY l.response_time_ms) AS p95_response_time_ms,
       coalesce(sum(l.request_size), 0)::bigint AS request_bytes,
       coalesce(sum(l.response_size), 0)::bigint AS response_bytes
  FROM public.api_usage_logs l
 GROUP BY 1, 2, 3
WITH DATA;
CREATE UNIQUE INDEX api_usage_daily_key ON analytics.api_usage_daily (day, user_id, provider);
COMMENT ON MATERIALIZED VIEW analytics.api_usage_daily IS
    'API calls per UTC day, user and provider: requests, errors (status >= 400), '
    'rate_limited (429), latency avg/p95 (ms), bytes.';

-- API usage per UTC hour and provider, all users together.
CREATE MATERIALIZED VIEW analytics.api_usage_hourly_provider AS
SELECT date_trunc('hour', l.created_at, 'UTC') AS hour,
       l.provider,
       count(*) AS requests,
       count(*) FILTER (WHERE l.status_code >= 400) AS errors,
       count(*) FILTER (WHERE l.status_code = 429) AS rate_limited,
       round(avg(l.response_time_ms), 2) AS avg_response_time_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY l.response_time_ms) AS p95_response_time_ms
  FROM public.api_usage_logs l
 GROUP BY 1, 2
WITH DATA;
CREATE UNIQUE INDEX api_usage_hourly_provider_key
    ON analytics.api_usage_hourly_provider (hour, provider);
COMMENT ON MATERIALIZED VIEW analytics.api_usage_hourly_provider IS
    'API calls per UTC hour and provider: requests, errors, rate_limited, latency avg/p95 (ms).';

-- Prompt generations per UTC day, user, framework, model and provider ('' = none given).
CREATE MATERIALIZED VIEW analytics.prompt_generations_daily AS
SELECT (h.created_at AT TIME ZONE 'UTC')::date AS day,
       h.user_id,
       coalesce(h.framework_id, '')::varchar(50) AS framework_id,
       coalesce(h.model, '')::varchar(50) AS model,
       coalesce(h.provider, '')::varchar(50) AS provider,
       count(*) AS generations,
       count(*) FILTER (WHERE h.status = 'completed') AS completed,
       count(*) FILTER (WHERE h.status = 'failed') AS failed,
       coalesce(sum(h.tokens_used), 0)::bigint AS tokens_used,
       coalesce(sum(h.cost_usd), 0) AS cost_usd
  FROM public.prompt_history h
 GROUP BY 1, 2, 3, 4, 5
WITH DATA;
CREATE UNIQUE INDEX prompt_generations_daily_key
    ON analytics.prompt_generations_daily (day, user_id, framework_id, model, provider);
COMMENT ON MATERIALIZED VIEW analytics.prompt_generations_daily IS
    'Prompt generations per UTC day, user, framework, model, provider ('''' when not given): '
    'count, completed, failed, tokens, cost (USD).';

ALTER MATERIALIZED VIEW analytics.api_usage_daily OWNER TO usaged;
ALTER MATERIALIZED VIEW analytics.api_usage_hourly_provider OWNER TO usaged;
ALTER MATERIALIZED VIEW analytics.prompt_generations_daily OWNER TO usaged;
REVOKE CREATE ON SCHEMA analytics FROM usaged;

REVOKE ALL ON ALL TABLES IN SCHEMA analytics FROM PUBLIC, anon, authenticated;
GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO service_role;

-- A user's own analytics. security_barrier keeps the auth.uid() filter ahead of anything a
-- query adds; the views read the analytics schema with their owner's rights, the caller needs
-- only SELECT on the view.
CREATE VIEW public.my_api_usage_daily WITH (security_barrier = true) AS
SELECT d.day, d.provider, d.requests, d.errors, d.rate_limited, d.avg_response_time_ms,
       d.p95_response_time_ms, d.request_bytes, d.response_bytes
  FROM analytics.api_usage_daily d
 WHERE d.user_id = (SELECT auth.uid());
COMMENT ON VIEW public.my_api_usage_daily IS
    'The calling user''s rows of analytics.api_usage_daily.';

CREATE VIEW public.my_prompt_generations_daily WITH (security_barrier = true) AS
SELECT g.day, g.framework_id, g.model, g.provider, g.generations, g.completed, g.failed,
       g.tokens_used, g.cost_usd
  FROM analytics.prompt_generations_daily g
 WHERE g.user_id = (SELECT auth.uid());
COMMENT ON VIEW public.my_prompt_generations_daily IS
    'The calling user''s rows of analytics.prompt_generations_daily.';

REVOKE ALL ON public.my_api_usage_daily, public.my_prompt_generations_daily
    FROM PUBLIC, anon, authenticated, service_role;
GRANT SELECT ON public.my_api_usage_daily, public.my_prompt_generations_daily TO authenticated;
