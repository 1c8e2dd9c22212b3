-- 0012_seed_data: providers with limits, prompt frameworks, feedback categories, settings,
-- built-in templates. Every insert is ON CONFLICT DO NOTHING: rows an operator already has (or
-- has edited) are left alone.

-- AI providers. Limits are per user (the daemon's check counts per user and provider); NULL
-- would mean unlimited. Key patterns are the providers' published key formats.
INSERT INTO public.api_providers
    (name, display_name, base_url, api_key_pattern, is_enabled,
     max_requests_per_minute, max_requests_per_day, supported_models, validation_rules)
VALUES
    ('openai', 'OpenAI', 'https://api.openai.com/v1',
     '^sk-[A-Za-z0-9_-]{20,}$', true, 60, 10000,
     '["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o3-mini"]',
     '{"key_prefix": "sk-", "min_length": 23, "test_endpoint": "/models"}'),
    ('anthropic', 'Anthropic', 'https://api.anthropic.com/v1',
     '^sk-ant-[A-Za-z0-9_-]{20,}$', true, 50, 5000,
     '["claude-3-5-haiku-latest", "claude-3-7-sonnet-latest", "claude-sonnet-4-0", "claude-opus-4-0"]',
     '{"key_prefix": "sk-ant-", "min_length": 27, "test_endpoint": "/models"}'),
    ('google', 'Google Gemini', 'https://generativelanguage.googleapis.com/v1beta',
     '^AIza[0-9A-Za-z_-]{35}$', true, 60, 1500,
     '["gemini-2.0-flash", "gemini-2.0-flash-lite", "gemini-1.5-pro", "gemini-2.5-pro"]',
     '{"key_prefix": "AIza", "length": 39, "test_endpoint": "/models"}'),
    ('mistral', 'Mistral AI', 'https://api.mistral.ai/v1',
     '^[A-Za-z0-9]{32}$', true, 60, 10000,
     '["mistral-large-latest", "mistral-small-latest", "codestral-latest", "open-mistral-nemo"]',
     '{"length": 32, "test_endpoint": "/models"}'),
    ('groq', 'Groq', 'https://api.groq.com/openai/v1',
     '^gsk_[A-Za-z0-9]{20,}$', true, 30, 14400,
     '["llama-3.3-70b-versatile", "llama-3.1-8b-instant", "mixtral-8x7b-32768", "gemma2-9b-it"]',
     '{"key_prefix": "gsk_", "min_length": 24, "test_endpoint": "/models"}')
ON CONFLICT (name) DO NOTHING;

-- Prompt frameworks: components (the fields a user fills in), a template with {{placeholders}}
-- named after the components' keys, and examples.
INSERT INTO public.prompt_frameworks
    (name, display_name, description, components, template, examples, is_enabled, sort_order)
VALUES
    ('race', 'RACE', 'Role, Action, Context, Expectation: a clear, general-purpose structure.',
     '[{"key": "role", "label": "Role", "description": "Who the AI should act as", "required": true},
       {"key": "action", "label": "Action", "description": "What it should do", "required": true},
       {"key": "context", "label": "Context", "description": "Background and constraints", "required": false},
       {"key": "expectation", "label": "Expectation", "description": "What a good result looks like", "required": true}]',
     E'Act as {{role}}.\nYour task: {{action}}.\nContext: {{context}}.\nExpected result: {{expectation}}.',
     '[{"title": "Product launch email",
        "values": {"role": "a senior copywriter", "action": "write a launch email for our budgeting app",
                   "context": "audience: freelancers; tone: friendly; 150 words", "expectation": "a subject line and a body with one call to action"}}]',
     true, 10),
    ('care', 'CARE', 'Context, Action, Result, Example: anchors the output on a sample.',
     '[{"key": "context", "label": "Context", "description": "The situation", "required": true},
       {"key": "action", "label": "Action", "description": "What to do", "required": true},
       {"key": "result", "label": "Result", "description": "The outcome wanted", "required": true},
       {"key": "example", "label": "Example", "description": "A sample of a good answer", "required": false}]',
     E'Context: {{context}}\nAction: {{action}}\nDesired result: {{result}}\nExample of what I want: {{example}}',
     '[{"title": "Support reply",
        "values": {"context": "a customer was double-charged", "action": "draft a reply",
                   "result": "the customer feels heard and knows the refund timeline", "example": "We are sorry ... refunded within 3 days."}}]',
     true, 20),
    ('ape', 'APE', 'Action, Purpose, Expectation: short prompts for quick tasks.',
     '[{"key": "action", "label": "Action", "description": "The task", "required": true},
       {"key": "purpose", "label": "Purpose", "description": "Why it is needed", "required": true},
       {"key": "expectation", "label": "Expectation", "description": "Format and scope of the answer", "required": true}]',
     E'{{action}}.\nThe purpose is {{purpose}}.\nI expect {{expectation}}.',
     '[{"title": "Meeting summary",
        "values": {"action": "summarize these meeting notes", "purpose": "to send to people who missed it",
                   "expectation": "five bullet points and a list of decisions"}}]',
     true, 30),
    ('create', 'CREATE', 'Character, Request, Examples, Adjustments, Type of output, Extras: for detailed creative work.',
     '[{"key": "character", "label": "Character", "description": "The persona to adopt", "required": true},
       {"key": "request", "label": "Request", "description": "What is asked", "required": true},
       {"key": "examples", "label": "Examples", "description": "Samples to follow", "required": false},
       {"key": "adjustments", "label": "Adjustments", "description": "Do and do not", "required": false},
       {"key": "type_of_output", "label": "Type of output", "description": "Format of the answer", "required": true},
       {"key": "extras", "label": "Extras", "description": "Anything else", "required": false}]',
     E'You are {{character}}.\nRequest: {{request}}\nExamples: {{examples}}\nAdjustments: {{adjustments}}\nOutput format: {{type_of_output}}\nExtras: {{extras}}',
     '[{"title": "Blog outline",
        "values": {"character": "a developer advocate", "request": "outline a post on database indexing",
                   "examples": "headings like ''Why your query is slow''", "adjustments": "no jargon without a definition",
                   "type_of_output": "a markdown outline", "extras": "suggest three titles"}}]',
     true, 40),
    ('tag', 'TAG', 'Task, Action, Goal: ties the work to its goal.',
     '[{"key": "task", "label": "Task", "description": "The task at hand", "required": true},
       {"key": "action", "label": "Action", "description": "The steps to take", "required": true},
       {"key": "goal", "label": "Goal", "description": "The end goal", "required": true}]',
     E'Task: {{task}}\nAction: {{action}}\nGoal: {{goal}}',
     '[{"title": "Onboarding checklist",
        "values": {"task": "create an onboarding checklist", "action": "list the first-week steps for a new engineer",
                   "goal": "a new hire ships a change in their first week"}}]',
     true, 50),
    ('risen', 'RISEN', 'Role, Instructions, Steps, End goal, Narrowing: for multi-step processes.',
     '[{"key": "role", "label": "Role", "description": "Who the AI should be", "required": true},
       {"key": "instructions", "label": "Instructions", "description": "What to do", "required": true},
       {"key": "steps", "label": "Steps", "description": "The steps to follow", "required": true},
       {"key": "end_goal", "label": "End goal", "description": "The final outcome", "required": true},
       {"key": "narrowing", "label": "Narrowing", "description": "Constraints and limits", "required": false}]',
     E'Role: {{role}}\nInstructions: {{instructions}}\nSteps:\n{{steps}}\nEnd goal: {{end_goal}}\nConstraints: {{narrowing}}',
     '[{"title": "Study plan",
        "values": {"role": "an experienced tutor", "instructions": "make a 4-week SQL study plan",
                   "steps": "1. basics 2. joins 3. indexes 4. transactions", "end_goal": "pass a SQL interview",
                   "narrowing": "one hour a day, free resources only"}}]',
     true, 60),
    ('costar', 'CO-STAR', 'Context, Objective, Style, Tone, Audience, Response: for audience-aware writing.',
     '[{"key": "context", "label": "Context", "description": "Background", "required": true},
       {"key": "objective", "label": "Objective", "description": "What to achieve", "required": true},
       {"key": "style", "label": "Style", "description": "Writing style", "required": false},
       {"key": "tone", "label": "Tone", "description": "Attitude of the text", "required": false},
       {"key": "audience", "label": "Audience", "description": "Who will read it", "required": true},
       {"key": "response", "label": "Response", "description": "Format of the answer", "required": true}]',
     E'# CONTEXT\n{{context}}\n# OBJECTIVE\n{{objective}}\n# STYLE\n{{style}}\n# TONE\n{{tone}}\n# AUDIENCE\n{{audience}}\n# RESPONSE\n{{response}}',
     '[{"title": "Release notes",
        "values": {"context": "version 2.0 adds offline mode", "objective": "announce the release",
                   "style": "concise", "tone": "upbeat", "audience": "existing users", "response": "three short paragraphs"}}]',
     true, 70),
    ('rtf', 'RTF', 'Role, Task, Format: the shortest useful structure.',
     '[{"key": "role", "label": "Role", "description": "Who the AI should be", "required": true},
       {"key": "task", "label": "Task", "description": "What to do", "required": true},
       {"key": "format", "label": "Format", "description": "Shape of the answer", "required": true}]',
     E'As {{role}}, {{task}}. Answer as {{format}}.',
     '[{"title": "SQL review",
        "values": {"role": "a PostgreSQL expert", "task": "review this query for performance", "format": "a numbered list of fixes"}}]',
     true, 80)
ON CONFLICT (name) DO NOTHING;

INSERT INTO public.feedback_categories (name, display_name, description, color, icon, sort_order)
VALUES
    ('bug', 'Bug report', 'Something does not work as it should', '#DC2626', 'bug', 10),
    ('feature_request', 'Feature request', 'An idea for something new', '#2563EB', 'lightbulb', 20),
    ('improvement', 'Improvement', 'Something that could work better', '#7C3AED', 'sparkles', 30),
    ('question', 'Question', 'A question about the app', '#0891B2', 'help-circle', 40),
    ('praise', 'Praise', 'Something you like', '#16A34A', 'heart', 50),
    ('general', 'General', 'Anything else', '#6B7280', 'message-square', 60)
ON CONFLICT (name) DO NOTHING;

INSERT INTO public.system_config (key, value, description, category, is_public)
VALUES
    ('app_name', '"PromptCraft Forge"', 'Application name', 'app', true),
    ('maintenance_mode', 'false', 'When true, the app shows a maintenance page', 'app', true),
    ('default_provider', '"openai"', 'Provider preselected for new users', 'app', true),
    ('default_framework', '"race"', 'Framework preselected for new users', 'app', true),
    ('max_prompt_input_chars', '10000', 'Longest user input the app accepts', 'app', true),
    ('feature_history', 'true', 'Prompt history (VITE_FEATURE_HISTORY)', 'feature_flags', true),
    ('feature_feedback', 'true', 'Feedback form (VITE_FEATURE_FEEDBACK)', 'feature_flags', true),
    ('feature_analytics', 'false', 'Analytics pages (VITE_FEATURE_ANALYTICS)', 'feature_flags', true),
    ('feature_vibe_coding', 'true', 'Vibe coding mode', 'feature_flags', true),
    ('feedback_per_hour', '10',
     'Feedback items one client may send per hour (enforced by the app). AI provider limits '
     'are in api_providers, enforced by usaged.', 'rate_limits', false),
    ('api_usage_logs_retention_days', '90',
     'usaged.apply_retention() removes api_usage_logs rows older than this many days',
     'maintenance', false)
ON CONFLICT (key) DO NOTHING;

-- Built-in public templates (no owner).
INSERT INTO public.prompt_templates
    (id, user_id, name, description, framework_id, template_content, variables, is_public)
VALUES
    ('00000000-0000-4000-8000-000000000001', NULL, 'Code review',
     'Ask for a focused review of a piece of code', 'rtf',
     E'As a senior {{language}} engineer, review the code below for bugs, readability and performance. Answer as a numbered list, most important first.\n\n{{code}}',
     '["language", "code"]', true),
    ('00000000-0000-4000-8000-000000000002', NULL, 'Explain like I am new',
     'Explain a concept to a beginner', 'race',
     E'Act as a patient teacher.\nYour task: explain {{concept}}.\nContext: the reader is new to {{field}}.\nExpected result: a short explanation with one everyday analogy and one example.',
     '["concept", "field"]', true)
ON CONFLICT (id) DO NOTHING;
