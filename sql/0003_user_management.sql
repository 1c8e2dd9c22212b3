-- 0003_user_management: user_profiles, user_preferences, user_sessions.
-- Every table is created with RLS enabled and no grants; 0009 adds the policies and grants.

CREATE TABLE public.user_profiles (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid NOT NULL UNIQUE REFERENCES auth.users (id) ON DELETE CASCADE,
    display_name varchar(100) CHECK (char_length(btrim(display_name)) > 0),
    avatar_url text CHECK (avatar_url ~* '^https?://' AND char_length(avatar_url) <= 2048),
    bio text CHECK (char_length(bio) <= 2000),
    preferences jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(preferences) = 'object'),
    is_active boolean NOT NULL DEFAULT true,
    last_login_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE public.user_profiles IS 'Extended user information, one row per auth user.';

CREATE TABLE public.user_preferences (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid NOT NULL UNIQUE REFERENCES auth.users (id) ON DELETE CASCADE,
    selected_model varchar(50),
    selected_framework varchar(50),
    theme varchar(20) NOT NULL DEFAULT 'system' CHECK (theme IN ('light', 'dark', 'system')),
    language varchar(10) NOT NULL DEFAULT 'en'
        CHECK (language ~ '^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$'),
    enable_notifications boolean NOT NULL DEFAULT true,
    enable_analytics boolean NOT NULL DEFAULT false,
    enable_history boolean NOT NULL DEFAULT true,
    enable_feedback boolean NOT NULL DEFAULT true,
    max_history_days integer NOT NULL DEFAULT 90 CHECK (max_history_days BETWEEN 1 AND 3650),
    auto_cleanup boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE public.user_preferences IS
    'User settings. With auto_cleanup, usaged.apply_retention() deletes the user''s '
    'prompt_history older than max_history_days.';

CREATE TABLE public.user_sessions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    user_agent text,
    ip_address inet,
    device_info jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(device_info) = 'object'),
    is_active boolean NOT NULL DEFAULT true,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_activity_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL DEFAULT now() + interval '30 days',
    ended_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT user_sessions_expires_after_start CHECK (expires_at > started_at),
    CONSTRAINT user_sessions_activity_after_start CHECK (last_activity_at >= started_at),
    CONSTRAINT user_sessions_ended_after_start CHECK (ended_at >= started_at)
);
COMMENT ON TABLE public.user_sessions IS
    'Optional session tracking; daily_maintenance() deletes expired sessions.';

CREATE TRIGGER user_profiles_set_updated_at BEFORE UPDATE ON public.user_profiles
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();
CREATE TRIGGER user_preferences_set_updated_at BEFORE UPDATE ON public.user_preferences
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();
CREATE TRIGGER user_sessions_set_updated_at BEFORE UPDATE ON public.user_sessions
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();

ALTER TABLE public.user_profiles ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.user_preferences ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.user_sessions ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.user_profiles, public.user_preferences, public.user_sessions
    FROM PUBLIC, anon, authenticated, service_role;
