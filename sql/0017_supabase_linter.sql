-- 0017_supabase_linter: what Supabase's security linter flags, fixed.
--
-- 1. public.my_* views ran with their owner's rights (security_definer_view): that is how they
--    read the analytics schema, which anon and authenticated cannot look into. They now run
--    with the caller's rights (security_invoker) and read through functions in schema
--    analytics_user, which return the calling user's (auth.uid()) rows and nothing else. The
--    functions are SECURITY DEFINER, owned by the migrating role (it may read the analytics
--    and call auth.uid(); on Supabase, usaged may not use schema auth), and sit outside the
--    schemas the API exposes, as Supabase advises for such functions; authenticated may use
--    that schema and call them, nobody else.
-- 2. is_admin() and the two *_search_document() functions had no fixed search_path
--    (function_search_path_mutable). Their bodies name every object with its schema; a fixed
--    search_path keeps it that way for whoever calls them.

CREATE SCHEMA analytics_user;
COMMENT ON SCHEMA analytics_user IS
    'Functions that return the calling user''s rows of the analytics (for the public.my_* views).';
REVOKE ALL ON SCHEMA analytics_user FROM PUBLIC;
GRANT USAGE ON SCHEMA analytics_user TO authenticated;

-- The owner of the functions reads the views it returns rows of. (A superuser may anyway; a
-- non-superuser migrator, such as Supabase's postgres, is a member of their owner usaged since
-- 0001, and holds the grant in its own name too in case that membership is ever taken away.)
GRANT SELECT ON analytics.api_usage_daily, analytics.prompt_generations_daily TO CURRENT_USER;
GRANT USAGE ON SCHEMA analytics TO CURRENT_USER;

CREATE FUNCTION analytics_user.api_usage_daily()
RETURNS TABLE (day date, provider varchar, requests bigint, errors bigint, rate_limited bigint,
               avg_response_time_ms numeric, p95_response_time_ms double precision,
               request_bytes bigint, response_bytes bigint)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT d.day, d.provider, d.requests, d.errors, d.rate_limited, d.avg_response_time_ms,
           d.p95_response_time_ms, d.request_bytes, d.response_bytes
      FROM analytics.api_usage_daily d
     WHERE d.user_id = (SELECT auth.uid())
$$;
COMMENT ON FUNCTION analytics_user.api_usage_daily() IS
    'The calling user''s (auth.uid()) rows of analytics.api_usage_daily.';

CREATE FUNCTION analytics_user.prompt_generations_daily()
RETURNS TABLE (day date, framework_id varchar, model varchar, provider varchar,
               generations bigint, completed bigint, failed bigint, tokens_used bigint,
               cost_usd numeric)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT g.day, g.framework_id, g.model, g.provider, g.generations, g.completed, g.failed,
           g.tokens_used, g.cost_usd
      FROM analytics.prompt_generations_daily g
     WHERE g.user_id = (SELECT auth.uid())
$$;
COMMENT ON FUNCTION analytics_user.prompt_generations_daily() IS
    'The calling user''s (auth.uid()) rows of analytics.prompt_generations_daily.';

REVOKE ALL ON FUNCTION analytics_user.api_usage_daily(), analytics_user.prompt_generations_daily()
    FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION analytics_user.api_usage_daily(),
                          analytics_user.prompt_generations_daily() TO authenticated;

-- Same columns, names and types as before (a function's result drops varchar's length: the
-- casts keep it), so CREATE OR REPLACE keeps the views' grants and comments.
CREATE OR REPLACE VIEW public.my_api_usage_daily AS
SELECT d.day, d.provider::varchar(50), d.requests, d.errors, d.rate_limited,
       d.avg_response_time_ms, d.p95_response_time_ms, d.request_bytes, d.response_bytes
  FROM analytics_user.api_usage_daily() d;
CREATE OR REPLACE VIEW public.my_prompt_generations_daily AS
SELECT g.day, g.framework_id::varchar(50), g.model::varchar(50), g.provider::varchar(50),
       g.generations, g.completed, g.failed, g.tokens_used, g.cost_usd
  FROM analytics_user.prompt_generations_daily() g;
ALTER VIEW public.my_api_usage_daily SET (security_invoker = true);
ALTER VIEW public.my_prompt_generations_daily SET (security_invoker = true);

ALTER FUNCTION public.is_admin() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION public.prompt_history_search_document(text, text)
    SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION public.prompt_template_search_document(text, text, text)
    SET search_path = pg_catalog, pg_temp;
