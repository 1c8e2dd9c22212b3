-- 0015_usage_limits: budgets. One row per rule limiting a dimension (requests, tokens, spend,
-- concurrent calls) over a window (minute, hour, day, month; none for concurrent) for a pattern
-- of checks (a user or every user, a provider or every provider, a model or any model). usaged
-- reads every row, with api_providers' limits and its config's rules, and reloads them when
-- NOTIFY usaged_limits arrives (sent here on every change, once per statement).

CREATE TABLE public.usage_limits (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- NULL: every user (each still counted on their own).
    user_id uuid REFERENCES auth.users (id) ON DELETE CASCADE,
    -- NULL: every provider; NULL model: any model (a rule naming a model applies only to checks
    -- that send one).
    provider varchar(50) CHECK (provider ~ '^[a-z0-9][a-z0-9_-]*$'),
    model varchar(50) CHECK (char_length(model) > 0),
    dimension text NOT NULL CHECK (dimension IN ('requests', 'tokens', 'spend', 'concurrent')),
    period text CHECK (period IN ('minute', 'hour', 'day', 'month')),
    -- NULL: unlimited (a user's row lifts a limit for every user). Spend is in USD, exact to the
    -- micro-dollar; the other dimensions count whole units.
    amount numeric(20, 6) CHECK (amount >= 0),
    shadow boolean NOT NULL DEFAULT false,
    alert_at_percent integer CHECK (alert_at_percent BETWEEN 1 AND 100),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT usage_limits_period_by_dimension
        CHECK ((dimension = 'concurrent') = (period IS NULL)),
    CONSTRAINT usage_limits_whole_units
        CHECK (dimension = 'spend' OR amount = trunc(amount)),
    -- One rule per thing counted: two rows for the same user, provider, model, dimension and
    -- period would leave the daemon to guess which one applies.
    CONSTRAINT usage_limits_one_rule
        UNIQUE NULLS NOT DISTINCT (user_id, provider, model, dimension, period)
);
COMMENT ON TABLE public.usage_limits IS
    'Budgets and rate limits enforced by usaged, beside api_providers'' request limits: a rule '
    'naming a user replaces the every-user rule counting the same thing.';
COMMENT ON COLUMN public.usage_limits.amount IS
    'NULL: unlimited. USD (6 decimal places) for spend; whole units otherwise.';

CREATE TRIGGER usage_limits_set_updated_at BEFORE UPDATE ON public.usage_limits
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();

-- The daemons reread every rule on any change; one notification per statement, so that a bulk
-- change costs them one reload.
CREATE FUNCTION public.notify_usage_limits() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_notify('usaged_limits', 'usage_limits');
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION public.notify_usage_limits() IS
    'Trigger: NOTIFY usaged_limits, usage_limits when any rule changes.';
-- Trigger functions need no caller but their trigger (see 0004).
REVOKE ALL ON FUNCTION public.notify_usage_limits() FROM PUBLIC, anon, authenticated, service_role;
CREATE TRIGGER usage_limits_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.usage_limits
    FOR EACH STATEMENT EXECUTE FUNCTION public.notify_usage_limits();

-- The daemon reads the whole table at start and on each notification (a sequential scan: the
-- rules are few next to the users they count). Users read their own and every-user rows: the
-- unique constraint's index leads with user_id, and this one serves the every-user part.
CREATE INDEX usage_limits_every_user_idx ON public.usage_limits (provider, model)
    WHERE user_id IS NULL;

ALTER TABLE public.usage_limits ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.usage_limits FROM PUBLIC, anon, authenticated, service_role;

CREATE POLICY usage_limits_select_own ON public.usage_limits
    FOR SELECT TO authenticated
    USING (user_id IS NULL OR user_id = (SELECT auth.uid()));
CREATE POLICY usage_limits_service_all ON public.usage_limits
    FOR ALL TO service_role USING (true) WITH CHECK (true);
CREATE POLICY usage_limits_usaged_select ON public.usage_limits
    FOR SELECT TO usaged USING (true);
GRANT SELECT ON public.usage_limits TO authenticated, usaged;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.usage_limits TO service_role;
