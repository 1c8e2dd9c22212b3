-- 0008_indexes: the indexing strategy of the schema document.
--  * every foreign key has an index whose leading column(s) are the key (cascading deletes of
--    a user and joins stay index scans); UNIQUE constraints already cover several;
--  * composite indexes for the app's per-user and per-provider time-ordered queries;
--  * partial indexes for the rows that are looked up apart (active, open, errors);
--  * GIN full-text indexes on prompt history and templates.
-- api_usage_logs is the write-hot table (COPY batches from usaged): its primary key plus three
-- secondary indexes, no more; each one costs ingest speed. Indexes on a partitioned table are
-- created on every partition, present and future.

-- user_profiles (user_id: UNIQUE)
CREATE INDEX user_profiles_active_last_login_idx
    ON public.user_profiles (last_login_at DESC) WHERE is_active;

-- user_preferences (user_id: UNIQUE). Retention walks the users with auto_cleanup.
CREATE INDEX user_preferences_auto_cleanup_idx
    ON public.user_preferences (user_id) INCLUDE (max_history_days) WHERE auto_cleanup;

-- user_sessions
CREATE INDEX user_sessions_user_id_created_at_idx
    ON public.user_sessions (user_id, created_at DESC);
CREATE INDEX user_sessions_active_expires_at_idx
    ON public.user_sessions (expires_at) WHERE is_active;

-- api_providers (name: UNIQUE)
CREATE INDEX api_providers_enabled_name_idx ON public.api_providers (name) WHERE is_enabled;

-- api_configurations ((user_id, provider): UNIQUE)
CREATE INDEX api_configurations_provider_idx ON public.api_configurations (provider);
CREATE INDEX api_configurations_active_user_id_idx
    ON public.api_configurations (user_id, provider) WHERE is_active;

-- api_usage_logs: PK (id, created_at) + these three.
--  (user_id, provider, created_at DESC): a user's calls, per provider or all (leading user_id,
--      which also serves the foreign key);
--  (provider, created_at): a provider's traffic over time (hourly views, dashboards);
--  (created_at DESC) WHERE status_code >= 400: recent errors, a small fraction of the rows.
CREATE INDEX api_usage_logs_user_id_provider_created_at_idx
    ON public.api_usage_logs (user_id, provider, created_at DESC);
CREATE INDEX api_usage_logs_provider_created_at_idx
    ON public.api_usage_logs (provider, created_at);
CREATE INDEX api_usage_logs_errors_created_at_idx
    ON public.api_usage_logs (created_at DESC) WHERE status_code >= 400;

-- prompt_history: PK (id, created_at) + a user's history, unfinished or failed generations,
-- and full-text search.
CREATE INDEX prompt_history_user_id_created_at_idx
    ON public.prompt_history (user_id, created_at DESC);
CREATE INDEX prompt_history_unfinished_created_at_idx
    ON public.prompt_history (created_at DESC) WHERE status IN ('pending', 'failed');
CREATE INDEX prompt_history_search_idx
    ON public.prompt_history USING gin (public.prompt_history_search_document(user_input, ai_response));

-- prompt_frameworks (name: UNIQUE)
CREATE INDEX prompt_frameworks_enabled_sort_order_idx
    ON public.prompt_frameworks (sort_order, name) WHERE is_enabled;

-- prompt_templates
CREATE INDEX prompt_templates_user_id_created_at_idx
    ON public.prompt_templates (user_id, created_at DESC);
CREATE INDEX prompt_templates_framework_id_idx ON public.prompt_templates (framework_id);
CREATE INDEX prompt_templates_public_usage_count_idx
    ON public.prompt_templates (usage_count DESC) WHERE is_public AND is_active;
CREATE INDEX prompt_templates_search_idx
    ON public.prompt_templates
    USING gin (public.prompt_template_search_document(name, description, template_content));

-- feedback
CREATE INDEX feedback_user_id_created_at_idx ON public.feedback (user_id, created_at DESC);
CREATE INDEX feedback_feedback_type_idx ON public.feedback (feedback_type);
CREATE INDEX feedback_open_priority_created_at_idx
    ON public.feedback (priority, created_at) WHERE status IN ('open', 'in_progress');
CREATE INDEX feedback_admin_user_id_idx
    ON public.feedback (admin_user_id) WHERE admin_user_id IS NOT NULL;

-- feedback_categories (name: UNIQUE)
CREATE INDEX feedback_categories_active_sort_order_idx
    ON public.feedback_categories (sort_order, name) WHERE is_active;

-- feedback_tags ((feedback_id, tag): UNIQUE)
CREATE INDEX feedback_tags_tag_idx ON public.feedback_tags (tag);
CREATE INDEX feedback_tags_created_by_idx
    ON public.feedback_tags (created_by) WHERE created_by IS NOT NULL;

-- feedback_analytics ((period_type, period_start, feedback_type): UNIQUE)

-- system_config (key: PK)
CREATE INDEX system_config_category_idx ON public.system_config (category);

-- usaged.rejects: newest first, per table.
CREATE INDEX rejects_table_name_rejected_at_idx
    ON usaged.rejects (table_name, rejected_at DESC);
