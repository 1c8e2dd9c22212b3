-- 0009_security_and_rls: row level security policies and privileges.
--
-- The rules:
--  * a user (role authenticated, auth.uid() from the JWT) sees and changes only their own rows;
--  * an admin (public.is_admin(), defined in 0002) sees and changes every row;
--  * public rows (enabled providers and frameworks, active public templates, active feedback
--    categories, public settings) are readable by anon and authenticated;
--  * api_usage_logs and prompt_history are written only by usaged (their owner, which bypasses
--    RLS) and service_role; users read their own rows;
--  * usaged gets exactly what the daemon needs (see the end of this file).
-- RLS was enabled on every table when it was created; a table with RLS and no policy for a
-- role shows that role nothing. Policies name their roles (never PUBLIC), so each role is
-- judged only by the policies written for it. service_role has BYPASSRLS on Supabase; the
-- admin policies include it anyway so that a service_role without BYPASSRLS works too.
-- `(SELECT auth.uid())` is evaluated once per statement, not once per row.

GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;

------------------------------------------------------------------------------------------------
-- Tables a user owns rows of: user_profiles, user_preferences, user_sessions, prompt_templates
-- (plus public ones), feedback (plus anonymous ones).
------------------------------------------------------------------------------------------------

-- user_profiles, user_preferences, user_sessions: the plain "own rows" tables.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['user_profiles', 'user_preferences', 'user_sessions'] LOOP
        EXECUTE format('CREATE POLICY %I ON public.%I FOR SELECT TO authenticated '
                       'USING (user_id = (SELECT auth.uid()))', t || '_select_own', t);
        EXECUTE format('CREATE POLICY %I ON public.%I FOR INSERT TO authenticated '
                       'WITH CHECK (user_id = (SELECT auth.uid()))', t || '_insert_own', t);
        EXECUTE format('CREATE POLICY %I ON public.%I FOR UPDATE TO authenticated '
                       'USING (user_id = (SELECT auth.uid())) '
                       'WITH CHECK (user_id = (SELECT auth.uid()))', t || '_update_own', t);
        EXECUTE format('CREATE POLICY %I ON public.%I FOR DELETE TO authenticated '
                       'USING (user_id = (SELECT auth.uid()))', t || '_delete_own', t);
        EXECUTE format('CREATE POLICY %I ON public.%I FOR ALL TO authenticated, service_role '
                       'USING ((SELECT public.is_admin())) WITH CHECK ((SELECT public.is_admin()))',
                       t || '_admin_all', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON public.%I '
                       'TO authenticated, service_role', t);
    END LOOP;
END
$$;

-- prompt_templates: own templates (any state), active public ones, admins all.
CREATE POLICY prompt_templates_select_public ON public.prompt_templates
    FOR SELECT TO anon, authenticated USING (is_public AND is_active);
CREATE POLICY prompt_templates_select_own ON public.prompt_templates
    FOR SELECT TO authenticated USING (user_id = (SELECT auth.uid()));
CREATE POLICY prompt_templates_insert_own ON public.prompt_templates
    FOR INSERT TO authenticated WITH CHECK (user_id = (SELECT auth.uid()));
CREATE POLICY prompt_templates_update_own ON public.prompt_templates
    FOR UPDATE TO authenticated
    USING (user_id = (SELECT auth.uid())) WITH CHECK (user_id = (SELECT auth.uid()));
CREATE POLICY prompt_templates_delete_own ON public.prompt_templates
    FOR DELETE TO authenticated USING (user_id = (SELECT auth.uid()));
CREATE POLICY prompt_templates_admin_all ON public.prompt_templates
    FOR ALL TO authenticated, service_role
    USING ((SELECT public.is_admin())) WITH CHECK ((SELECT public.is_admin()));
GRANT SELECT ON public.prompt_templates TO anon;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.prompt_templates TO authenticated, service_role;

-- feedback: users write and read their own; anyone may leave anonymous feedback (user_id
-- NULL), which only admins can read back. Triage columns: see the feedback_guard trigger.
CREATE POLICY feedback_insert_anonymous ON public.feedback
    FOR INSERT TO anon WITH CHECK (user_id IS NULL);
CREATE POLICY feedback_select_own ON public.feedback
    FOR SELECT TO authenticated USING (user_id = (SELECT auth.uid()));
CREATE POLICY feedback_insert_own ON public.feedback
    FOR INSERT TO authenticated
    WITH CHECK (user_id = (SELECT auth.uid()) OR user_id IS NULL);
CREATE POLICY feedback_update_own ON public.feedback
    FOR UPDATE TO authenticated
    USING (user_id = (SELECT auth.uid())) WITH CHECK (user_id = (SELECT auth.uid()));
CREATE POLICY feedback_delete_own ON public.feedback
    FOR DELETE TO authenticated USING (user_id = (SELECT auth.uid()));
CREATE POLICY feedback_admin_all ON public.feedback
    FOR ALL TO authenticated, service_role
    USING ((SELECT public.is_admin())) WITH CHECK ((SELECT public.is_admin()));
GRANT INSERT ON public.feedback TO anon;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.feedback TO authenticated, service_role;

-- feedback_tags: admins tag; the author of a feedback item sees its tags.
CREATE POLICY feedback_tags_select_own ON public.feedback_tags
    FOR SELECT TO authenticated
    USING (EXISTS (SELECT 1 FROM public.feedback f
                    WHERE f.id = feedback_tags.feedback_id
                      AND f.user_id = (SELECT auth.uid())));
CREATE POLICY feedback_tags_admin_all ON public.feedback_tags
    FOR ALL TO authenticated, service_role
    USING ((SELECT public.is_admin())) WITH CHECK ((SELECT public.is_admin()));
GRANT SELECT, INSERT, UPDATE, DELETE ON public.feedback_tags TO authenticated, service_role;

------------------------------------------------------------------------------------------------
-- API keys and logs.
------------------------------------------------------------------------------------------------

-- api_configurations: keys are written only through public.store_api_key() (which validates and
-- encrypts them), so users get no INSERT and may UPDATE only is_active; they read and delete
-- their own rows.
CREATE POLICY api_configurations_select_own ON public.api_configurations
    FOR SELECT TO authenticated USING (user_id = (SELECT auth.uid()));
CREATE POLICY api_configurations_update_own ON public.api_configurations
    FOR UPDATE TO authenticated
    USING (user_id = (SELECT auth.uid())) WITH CHECK (user_id = (SELECT auth.uid()));
CREATE POLICY api_configurations_delete_own ON public.api_configurations
    FOR DELETE TO authenticated USING (user_id = (SELECT auth.uid()));
CREATE POLICY api_configurations_admin_all ON public.api_configurations
    FOR ALL TO authenticated, service_role
    USING ((SELECT public.is_admin())) WITH CHECK ((SELECT public.is_admin()));
GRANT SELECT, DELETE ON public.api_configurations TO authenticated;
GRANT UPDATE (is_active) ON public.api_configurations TO authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.api_configurations TO service_role;

-- api_usage_logs, prompt_history: users read their own rows (and may delete their own prompt
-- history); admins read all; only service_role inserts (besides usaged, the owner).
CREATE POLICY api_usage_logs_select_own ON public.api_usage_logs
    FOR SELECT TO authenticated USING (user_id = (SELECT auth.uid()));
CREATE POLICY api_usage_logs_admin_select ON public.api_usage_logs
    FOR SELECT TO authenticated, service_role USING ((SELECT public.is_admin()));
CREATE POLICY api_usage_logs_service_all ON public.api_usage_logs
    FOR ALL TO service_role USING (true) WITH CHECK (true);
GRANT SELECT ON public.api_usage_logs TO authenticated;
GRANT SELECT, INSERT, DELETE ON public.api_usage_logs TO service_role;

CREATE POLICY prompt_history_select_own ON public.prompt_history
    FOR SELECT TO authenticated USING (user_id = (SELECT auth.uid()));
CREATE POLICY prompt_history_delete_own ON public.prompt_history
    FOR DELETE TO authenticated USING (user_id = (SELECT auth.uid()));
CREATE POLICY prompt_history_admin_select ON public.prompt_history
    FOR SELECT TO authenticated, service_role USING ((SELECT public.is_admin()));
CREATE POLICY prompt_history_service_all ON public.prompt_history
    FOR ALL TO service_role USING (true) WITH CHECK (true);
GRANT SELECT, DELETE ON public.prompt_history TO authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.prompt_history TO service_role;

------------------------------------------------------------------------------------------------
-- Reference data: readable by everyone when enabled/active/public, managed by admins.
------------------------------------------------------------------------------------------------

CREATE POLICY api_providers_select_enabled ON public.api_providers
    FOR SELECT TO anon, authenticated USING (is_enabled);
CREATE POLICY api_providers_admin_all ON public.api_providers
    FOR ALL TO authenticated, service_role
    USING ((SELECT public.is_admin())) WITH CHECK ((SELECT public.is_admin()));

CREATE POLICY prompt_frameworks_select_enabled ON public.prompt_frameworks
    FOR SELECT TO anon, authenticated USING (is_enabled);
CREATE POLICY prompt_frameworks_admin_all ON public.prompt_frameworks
    FOR ALL TO authenticated, service_role
    USING ((SELECT public.is_admin())) WITH CHECK ((SELECT public.is_admin()));

CREATE POLICY feedback_categories_select_active ON public.feedback_categories
    FOR SELECT TO anon, authenticated USING (is_active);
CREATE POLICY feedback_categories_admin_all ON public.feedback_categories
    FOR ALL TO authenticated, service_role
    USING ((SELECT public.is_admin())) WITH CHECK ((SELECT public.is_admin()));

CREATE POLICY system_config_select_public ON public.system_config
    FOR SELECT TO anon, authenticated USING (is_public);
CREATE POLICY system_config_admin_all ON public.system_config
    FOR ALL TO authenticated, service_role
    USING ((SELECT public.is_admin())) WITH CHECK ((SELECT public.is_admin()));

-- Admins only.
CREATE POLICY feedback_analytics_admin_all ON public.feedback_analytics
    FOR ALL TO authenticated, service_role
    USING ((SELECT public.is_admin())) WITH CHECK ((SELECT public.is_admin()));

GRANT SELECT ON public.api_providers, public.prompt_frameworks, public.feedback_categories,
                public.system_config
    TO anon;
GRANT SELECT, INSERT, UPDATE, DELETE
    ON public.api_providers, public.prompt_frameworks, public.feedback_categories,
       public.system_config, public.feedback_analytics
    TO authenticated, service_role;

------------------------------------------------------------------------------------------------
-- usaged, the daemon. It owns api_usage_logs, prompt_history (and their partitions), schema
-- usaged and the analytics views (0010). Beyond that:
--  * api_providers: read every row, disabled ones included (limits and is_enabled);
--  * api_configurations: read (user_id, provider, usage_count, last_used_at) and update
--    usage_count and last_used_at (usage_count = usage_count + n and
--    GREATEST(last_used_at, t) read the columns, hence SELECT on them); never
--    api_key_encrypted;
--  * user_preferences: read (user_id, max_history_days, auto_cleanup), for
--    usaged.apply_retention(), which runs as usaged;
--  * system_config: read the maintenance settings (retention, partitions ahead).
-- usaged cannot read any other user data (user_profiles, feedback, ...).
------------------------------------------------------------------------------------------------

CREATE POLICY api_providers_usaged_select ON public.api_providers
    FOR SELECT TO usaged USING (true);
GRANT SELECT ON public.api_providers TO usaged;

CREATE POLICY api_configurations_usaged_select ON public.api_configurations
    FOR SELECT TO usaged USING (true);
CREATE POLICY api_configurations_usaged_update ON public.api_configurations
    FOR UPDATE TO usaged USING (true) WITH CHECK (true);
GRANT SELECT (user_id, provider, usage_count, last_used_at) ON public.api_configurations TO usaged;
GRANT UPDATE (usage_count, last_used_at) ON public.api_configurations TO usaged;

CREATE POLICY user_preferences_usaged_select ON public.user_preferences
    FOR SELECT TO usaged USING (true);
GRANT SELECT (user_id, max_history_days, auto_cleanup) ON public.user_preferences TO usaged;

CREATE POLICY system_config_usaged_select ON public.system_config
    FOR SELECT TO usaged USING (category = 'maintenance');
GRANT SELECT ON public.system_config TO usaged;

-- The migrations have handed usaged its tables in public: it keeps USAGE only (see 0002).
REVOKE CREATE ON SCHEMA public FROM usaged;
