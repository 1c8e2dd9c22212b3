-- 0018_usage_alerts: the alerts usaged writes when a user's use of a rule with alert_at_percent
-- first reaches that share in a window (PROTOCOL.md, "Shadow rules and alerts"): one row per
-- user, rule and window, whichever daemon saw it. The daemon decides the crossing inside its
-- Redis script and derives the row's id from the user, rule and window, so a retried insert
-- finds the row and changes nothing (ON CONFLICT DO NOTHING); the NOTIFY usaged_alerts goes out
-- in the same statement, only when the row is new.
CREATE TABLE public.usage_alerts (
    id uuid PRIMARY KEY,
    -- No foreign key to auth.users: a check may name a user the database does not know yet,
    -- and its alert must not be refused for it.
    user_id uuid NOT NULL,
    provider varchar(50),          -- NULL: the rule counts every provider
    model varchar(50),             -- NULL: any model
    dimension text NOT NULL CHECK (dimension IN ('requests', 'tokens', 'spend')),
    period text NOT NULL CHECK (period IN ('minute', 'hour', 'day', 'month')),
    window_start timestamptz NOT NULL,
    amount numeric(20, 6) NOT NULL, -- the rule's limit (USD for spend)
    used numeric(20, 6) NOT NULL,   -- the use that reached the share
    alert_at_percent integer NOT NULL CHECK (alert_at_percent BETWEEN 1 AND 100),
    shadow boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE public.usage_alerts IS
    'Written by usaged: a user''s use of a rule reached its alert_at_percent in a window; '
    'one row per user, rule and window.';

-- The app's "my alerts": a user's newest first.
CREATE INDEX usage_alerts_user_created_idx ON public.usage_alerts (user_id, created_at DESC);

ALTER TABLE public.usage_alerts ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.usage_alerts FROM PUBLIC, anon, authenticated, service_role;
CREATE POLICY usage_alerts_select_own ON public.usage_alerts
    FOR SELECT TO authenticated USING (user_id = (SELECT auth.uid()));
CREATE POLICY usage_alerts_service_all ON public.usage_alerts
    FOR ALL TO service_role USING (true) WITH CHECK (true);
CREATE POLICY usage_alerts_usaged_write ON public.usage_alerts
    FOR ALL TO usaged USING (true) WITH CHECK (true);
GRANT SELECT ON public.usage_alerts TO authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.usage_alerts TO service_role;
-- usaged inserts; SELECT because INSERT ... RETURNING reads the row back for the NOTIFY.
GRANT SELECT, INSERT ON public.usage_alerts TO usaged;

-- A shadow rule watches a limit beside the enforced rule counting the same thing, so one enforced
-- and one shadow row may name the same user, provider, model, dimension and period: the
-- uniqueness of 0015 now includes shadow.
ALTER TABLE public.usage_limits DROP CONSTRAINT usage_limits_one_rule;
ALTER TABLE public.usage_limits ADD CONSTRAINT usage_limits_one_rule
    UNIQUE NULLS NOT DISTINCT (user_id, provider, model, dimension, period, shadow);
