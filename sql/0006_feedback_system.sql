-- 0006_feedback_system: feedback_categories, feedback, feedback_tags, feedback_analytics.

-- The feedback types (feedback.feedback_type references name).
CREATE TABLE public.feedback_categories (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name varchar(50) NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9_-]*$'),
    display_name varchar(100) NOT NULL CHECK (char_length(btrim(display_name)) > 0),
    description text,
    color varchar(7) CHECK (color ~ '^#[0-9A-Fa-f]{6}$'),
    icon varchar(50),
    is_active boolean NOT NULL DEFAULT true,
    sort_order integer NOT NULL DEFAULT 0 CHECK (sort_order >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE public.feedback_categories IS
    'Feedback types; active ones are readable by everyone.';

CREATE TABLE public.feedback (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- NULL: anonymous feedback.
    user_id uuid REFERENCES auth.users (id) ON DELETE CASCADE,
    message text NOT NULL CHECK (char_length(btrim(message)) BETWEEN 1 AND 10000),
    feedback_type varchar(50) NOT NULL DEFAULT 'general'
        REFERENCES public.feedback_categories (name) ON UPDATE CASCADE,
    priority varchar(20) NOT NULL DEFAULT 'medium'
        CHECK (priority IN ('low', 'medium', 'high', 'urgent')),
    status varchar(20) NOT NULL DEFAULT 'open'
        CHECK (status IN ('open', 'in_progress', 'resolved', 'closed')),
    contact_email varchar(255) CHECK (contact_email ~* '^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$'),
    contact_name varchar(100),
    user_agent text,
    browser_info jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(browser_info) = 'object'),
    device_info jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(device_info) = 'object'),
    admin_response text,
    admin_user_id uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    responded_at timestamptz,
    rating integer CHECK (rating BETWEEN 1 AND 5),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT feedback_responded_with_response
        CHECK (responded_at IS NULL OR admin_response IS NOT NULL)
);
COMMENT ON TABLE public.feedback IS
    'User feedback and support tickets. Users write their own (anon: anonymous ones); only '
    'admins set status or respond (enforced by the feedback_guard trigger).';

-- Tags an admin puts on a feedback item while triaging it.
CREATE TABLE public.feedback_tags (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    feedback_id uuid NOT NULL REFERENCES public.feedback (id) ON DELETE CASCADE,
    tag varchar(50) NOT NULL CHECK (tag ~ '^[a-z0-9][a-z0-9_-]*$'),
    created_by uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (feedback_id, tag)
);
COMMENT ON TABLE public.feedback_tags IS
    'Tags on feedback items; set by admins, visible to the feedback''s author.';

-- Feedback metrics per period and type ('all' = every type), filled by
-- public.compute_feedback_analytics() (daily_maintenance() does yesterday's).
CREATE TABLE public.feedback_analytics (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    period_type varchar(10) NOT NULL CHECK (period_type IN ('day', 'week', 'month')),
    period_start date NOT NULL,
    feedback_type varchar(50) NOT NULL DEFAULT 'all',
    total_count integer NOT NULL DEFAULT 0 CHECK (total_count >= 0),
    open_count integer NOT NULL DEFAULT 0 CHECK (open_count >= 0),
    in_progress_count integer NOT NULL DEFAULT 0 CHECK (in_progress_count >= 0),
    resolved_count integer NOT NULL DEFAULT 0 CHECK (resolved_count >= 0),
    closed_count integer NOT NULL DEFAULT 0 CHECK (closed_count >= 0),
    rated_count integer NOT NULL DEFAULT 0 CHECK (rated_count >= 0),
    avg_rating numeric(3, 2) CHECK (avg_rating BETWEEN 1 AND 5),
    avg_response_hours numeric(10, 2) CHECK (avg_response_hours >= 0),
    metrics jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(metrics) = 'object'),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT feedback_analytics_period_key UNIQUE (period_type, period_start, feedback_type),
    CONSTRAINT feedback_analytics_counts_add_up
        CHECK (open_count + in_progress_count + resolved_count + closed_count = total_count),
    CONSTRAINT feedback_analytics_rated_within_total CHECK (rated_count <= total_count)
);
COMMENT ON TABLE public.feedback_analytics IS 'Feedback metrics per day/week/month; admins only.';

CREATE TRIGGER feedback_categories_set_updated_at BEFORE UPDATE ON public.feedback_categories
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();
CREATE TRIGGER feedback_set_updated_at BEFORE UPDATE ON public.feedback
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();
CREATE TRIGGER feedback_analytics_set_updated_at BEFORE UPDATE ON public.feedback_analytics
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();

-- Users may write their own feedback, but the triage columns are the admins': a non-admin
-- anon/authenticated request cannot set status, the response, or move the row to another user.
-- When an admin responds, responded_at and admin_user_id are filled in.
CREATE FUNCTION public.feedback_guard() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF current_user IN ('anon', 'authenticated') AND NOT public.is_admin() THEN
        IF TG_OP = 'INSERT' THEN
            IF NEW.status <> 'open' OR NEW.admin_response IS NOT NULL
               OR NEW.admin_user_id IS NOT NULL OR NEW.responded_at IS NOT NULL THEN
                RAISE EXCEPTION 'only admins may set the status of feedback or respond to it'
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
        ELSIF NEW.status IS DISTINCT FROM OLD.status
              OR NEW.admin_response IS DISTINCT FROM OLD.admin_response
              OR NEW.admin_user_id IS DISTINCT FROM OLD.admin_user_id
              OR NEW.responded_at IS DISTINCT FROM OLD.responded_at
              OR NEW.user_id IS DISTINCT FROM OLD.user_id THEN
            RAISE EXCEPTION 'only admins may change the status, response or author of feedback'
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    END IF;
    IF NEW.admin_response IS NOT NULL
       AND (TG_OP = 'INSERT' OR NEW.admin_response IS DISTINCT FROM OLD.admin_response) THEN
        IF TG_OP = 'INSERT' THEN
            NEW.responded_at := coalesce(NEW.responded_at, now());
            NEW.admin_user_id := coalesce(NEW.admin_user_id, auth.uid());
        ELSE
            IF NEW.responded_at IS NOT DISTINCT FROM OLD.responded_at THEN
                NEW.responded_at := now();
            END IF;
            IF NEW.admin_user_id IS NOT DISTINCT FROM OLD.admin_user_id THEN
                NEW.admin_user_id := coalesce(auth.uid(), OLD.admin_user_id);
            END IF;
        END IF;
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION public.feedback_guard() IS
    'Trigger: keeps feedback triage columns (status, admin_response, ...) to admins.';
REVOKE ALL ON FUNCTION public.feedback_guard() FROM PUBLIC, anon, authenticated, service_role;

CREATE TRIGGER feedback_guard BEFORE INSERT OR UPDATE ON public.feedback
    FOR EACH ROW EXECUTE FUNCTION public.feedback_guard();

ALTER TABLE public.feedback_categories ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.feedback ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.feedback_tags ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.feedback_analytics ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.feedback_categories, public.feedback, public.feedback_tags,
              public.feedback_analytics
    FROM PUBLIC, anon, authenticated, service_role;
