-- 0005_prompt_management: prompt_frameworks, prompt_history (partitioned, owned by usaged),
-- prompt_templates, and the full-text search documents their GIN indexes (0008) are built on.

CREATE TABLE public.prompt_frameworks (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name varchar(50) NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9_-]*$'),
    display_name varchar(100) NOT NULL CHECK (char_length(btrim(display_name)) > 0),
    description text,
    components jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(components) = 'array'),
    template text NOT NULL CHECK (char_length(btrim(template)) > 0),
    examples jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(examples) = 'array'),
    is_enabled boolean NOT NULL DEFAULT true,
    sort_order integer NOT NULL DEFAULT 0 CHECK (sort_order >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE public.prompt_frameworks IS
    'Prompt frameworks (RACE, CARE, ...). name is the identifier that prompt_history.framework_id '
    'and prompt_templates.framework_id hold.';

-- The second write-hot table, partitioned like api_usage_logs. framework_id, model and
-- provider are free text (no foreign keys): history must outlive a framework or provider.
CREATE TABLE public.prompt_history (
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    user_id uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    framework_id varchar(50),
    framework_name varchar(100),
    model varchar(50),
    provider varchar(50),
    user_input text,
    ai_response text,
    tone varchar(50),
    length varchar(50),
    temperature numeric CHECK (temperature BETWEEN 0 AND 2),
    max_tokens integer CHECK (max_tokens >= 0),
    vibe_coding boolean NOT NULL DEFAULT false,
    processing_time_ms integer CHECK (processing_time_ms >= 0),
    tokens_used integer CHECK (tokens_used >= 0),
    -- numeric has NaN and +Infinity, and both compare >= 0: refuse them too.
    cost_usd numeric CHECK (cost_usd >= 0 AND cost_usd < 'Infinity'),
    status varchar(20) NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'completed', 'failed', 'cancelled')),
    error_message text,
    error_code varchar(50),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
COMMENT ON TABLE public.prompt_history IS
    'One row per prompt generation, written by usaged (COPY). Monthly partitions (UTC) plus a '
    'default partition; owned by usaged.';

CREATE TABLE public.prompt_history_default PARTITION OF public.prompt_history DEFAULT;

CREATE TRIGGER prompt_history_set_updated_at BEFORE UPDATE ON public.prompt_history
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();

ALTER TABLE public.prompt_history OWNER TO usaged;
ALTER TABLE public.prompt_history_default OWNER TO usaged;

CREATE TABLE public.prompt_templates (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- NULL: a built-in template, which must be public.
    user_id uuid REFERENCES auth.users (id) ON DELETE CASCADE,
    name varchar(100) NOT NULL CHECK (char_length(btrim(name)) > 0),
    description text,
    framework_id varchar(50)
        REFERENCES public.prompt_frameworks (name) ON UPDATE CASCADE ON DELETE SET NULL,
    template_content text NOT NULL CHECK (char_length(btrim(template_content)) > 0),
    variables jsonb NOT NULL DEFAULT '[]'::jsonb
        CHECK (jsonb_typeof(variables) IN ('array', 'object')),
    is_public boolean NOT NULL DEFAULT false,
    is_active boolean NOT NULL DEFAULT true,
    usage_count integer NOT NULL DEFAULT 0 CHECK (usage_count >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT prompt_templates_builtin_is_public CHECK (user_id IS NOT NULL OR is_public)
);
COMMENT ON TABLE public.prompt_templates IS
    'Reusable prompt templates: a user''s own, or public (readable by everyone when active).';

CREATE TRIGGER prompt_frameworks_set_updated_at BEFORE UPDATE ON public.prompt_frameworks
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();
CREATE TRIGGER prompt_templates_set_updated_at BEFORE UPDATE ON public.prompt_templates
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();

-- Full-text search documents. The GIN indexes of 0008 are built on these expressions; a query
-- uses the index when it writes the same call, e.g.
--   WHERE public.prompt_history_search_document(user_input, ai_response)
--         @@ websearch_to_tsquery('english', 'landing page')
-- Only the first 100,000 characters are indexed: a tsvector is limited to 1 MB, and a longer
-- response must never make a row unstorable.
CREATE FUNCTION public.prompt_history_search_document(user_input text, ai_response text)
RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT pg_catalog.to_tsvector('pg_catalog.english'::pg_catalog.regconfig,
        pg_catalog.left(coalesce($1, '') || ' ' || coalesce($2, ''), 100000))
$$;

CREATE FUNCTION public.prompt_template_search_document(name text, description text,
                                                       template_content text)
RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT pg_catalog.to_tsvector('pg_catalog.english'::pg_catalog.regconfig,
        pg_catalog.left(coalesce($1, '') || ' ' || coalesce($2, '') || ' ' || coalesce($3, ''),
                        100000))
$$;
-- These stay executable by PUBLIC: index expressions run as whoever writes a row (usaged's
-- COPY included), and the app's search queries call them.

ALTER TABLE public.prompt_frameworks ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.prompt_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.prompt_history_default ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.prompt_templates ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.prompt_frameworks, public.prompt_history, public.prompt_history_default,
              public.prompt_templates
    FROM PUBLIC, anon, authenticated, service_role;
