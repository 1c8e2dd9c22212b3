/* gen: see gen.h. */
#include "gen.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *providers_copy(const char *list)
{
    size_t n = strlen(list);
    char *s = malloc(n + 1);
    if (s)
        memcpy(s, list, n + 1);
    return s;
}

bool gen_init(struct gen *g, uint64_t seed, uint32_t users, const char *providers)
{
    memset(g, 0, sizeof(*g));
    g->state = seed ? seed : 0x9e3779b97f4a7c15ULL;
    g->users = users ? users : 1;
    char *copy = providers_copy(providers);
    if (!copy)
        return false;
    g->names_buf = copy;
    for (char *save = NULL, *tok = strtok_r(copy, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        if (g->nproviders == GEN_MAX_PROVIDERS) {
            gen_free(g);
            return false;
        }
        g->providers[g->nproviders++] = tok;
    }
    if (g->nproviders == 0) {
        gen_free(g);
        return false;
    }
    return true;
}

void gen_free(struct gen *g)
{
    free(g->names_buf);
    g->names_buf = NULL;
    g->nproviders = 0;
}

uint64_t gen_next(struct gen *g)
{
    uint64_t x = g->state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    g->state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

uint32_t gen_below(struct gen *g, uint32_t n)
{
    return (uint32_t)(((gen_next(g) >> 32) * (uint64_t)n) >> 32);
}

/* Uniform in [lo, hi]. */
static int32_t gen_range(struct gen *g, int32_t lo, int32_t hi)
{
    return lo + (int32_t)gen_below(g, (uint32_t)(hi - lo + 1));
}

/* Roughly log-normal: most values near typical, a long tail up to max. */
static int32_t gen_skewed(struct gen *g, int32_t min, int32_t typical, int32_t max)
{
    uint32_t r = gen_below(g, 100);
    if (r < 70)
        return gen_range(g, min, typical);
    if (r < 95)
        return gen_range(g, typical, typical * 3 < max ? typical * 3 : max);
    return gen_range(g, typical, max);
}

void gen_user_id(uint32_t i, char out[GEN_UUID_LEN + 1])
{
    snprintf(out, GEN_UUID_LEN + 1, "b0000000-0000-4000-8000-%012x", i);
}

static const char hex[] = "0123456789abcdef";

void gen_uuid_v7(struct gen *g, uint64_t now_ms, char out[GEN_UUID_LEN + 1])
{
    if (now_ms > g->v7_last_ms) {
        g->v7_last_ms = now_ms;
        g->v7_counter = gen_next(g) & ((1ULL << 11) - 1);
    } else if (++g->v7_counter >= (1ULL << 12)) {
        g->v7_last_ms++;
        g->v7_counter = 0;
    }
    uint8_t b[16];
    uint64_t ms = g->v7_last_ms, r = gen_next(g);
    for (int i = 0; i < 6; i++)
        b[i] = (uint8_t)(ms >> (40 - 8 * i));
    b[6] = (uint8_t)(0x70 | ((g->v7_counter >> 8) & 0x0f));
    b[7] = (uint8_t)g->v7_counter;
    b[8] = (uint8_t)(0x80 | (r & 0x3f));
    for (int i = 9; i < 16; i++)
        b[i] = (uint8_t)(r >> (8 * (i - 8)));
    char *p = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *p++ = '-';
        *p++ = hex[b[i] >> 4];
        *p++ = hex[b[i] & 15];
    }
    *p = '\0';
}

/* ---- usage ---- */

static const char *const endpoints[] = {
    "/v1/chat/completions",
    "/v1/messages",
    "/v1beta/models/gemini-1.5-pro:generateContent",
    "/v1/embeddings",
    "/openai/v1/chat/completions",
};

void gen_usage(struct gen *g, struct gen_usage *out)
{
    out->user = gen_below(g, g->users);
    out->provider = gen_below(g, g->nproviders);
    out->endpoint = endpoints[out->provider % (sizeof(endpoints) / sizeof(endpoints[0]))];
    out->request_size = gen_skewed(g, 120, 2000, 120000);
    out->response_size = gen_skewed(g, 200, 4000, 400000);
    out->response_time_ms = gen_skewed(g, 150, 1800, 60000);
    uint32_t r = gen_below(g, 1000);
    out->error_message = NULL;
    if (r < 940) {
        out->status_code = 200;
    } else if (r < 965) {
        out->status_code = 429;
        out->error_message = "Rate limit reached for requests";
    } else if (r < 980) {
        out->status_code = 500;
        out->error_message = "The server had an error while processing your request";
    } else if (r < 990) {
        out->status_code = 400;
        out->error_message = "invalid_request_error: max_tokens is too large";
    } else {
        out->status_code = 503;
        out->error_message = "overloaded_error: the provider is temporarily overloaded";
    }
}

/* ---- prompts ---- */

static const char *const frameworks[][2] = {
    {"race", "RACE"}, {"care", "CARE"}, {"ape", "APE"}, {"create", "CREATE"}, {"tag", "TAG"},
};
static const char *const models[] = {
    "gpt-4o-mini", "claude-3-5-haiku-latest", "gemini-1.5-pro", "mistral-large", "llama-3.1-70b",
};
static const char *const tones[] = {"professional", "casual", "friendly", "technical"};
static const char *const lengths[] = {"short", "medium", "long"};
static const char *const words[] = {
    "write",   "a",      "prompt", "for",      "the",     "user",    "who",   "wants",
    "to",      "build",  "an",     "app",      "that",    "turns",   "ideas", "into",
    "clear",   "steps",  "with",   "examples", "context", "and",     "tone",  "role",
    "action",  "result", "expect", "format",   "list",    "summary", "code",  "review",
    "explain", "why",    "each",   "choice",   "matters", "briefly", "in",    "detail",
};

static void gen_text(struct gen *g, char *out, size_t cap, size_t chars)
{
    size_t n = 0;
    if (chars >= cap)
        chars = cap - 1;
    while (n < chars) {
        const char *w = words[gen_below(g, sizeof(words) / sizeof(words[0]))];
        size_t len = strlen(w);
        if (n > 0 && n < chars)
            out[n++] = ' ';
        if (n + len > chars)
            len = chars - n;
        memcpy(out + n, w, len);
        n += len;
    }
    out[n] = '\0';
}

void gen_prompt(struct gen *g, struct gen_prompt *out, size_t input_chars, size_t response_chars)
{
    out->user = gen_below(g, g->users);
    out->provider = gen_below(g, g->nproviders);
    uint32_t f = gen_below(g, sizeof(frameworks) / sizeof(frameworks[0]));
    out->framework_id = frameworks[f][0];
    out->framework_name = frameworks[f][1];
    out->model = models[out->provider % (sizeof(models) / sizeof(models[0]))];
    gen_text(g, out->user_input, sizeof(out->user_input), input_chars);
    gen_text(g, out->ai_response, sizeof(out->ai_response), response_chars);
    out->tone = tones[gen_below(g, sizeof(tones) / sizeof(tones[0]))];
    out->length = lengths[gen_below(g, sizeof(lengths) / sizeof(lengths[0]))];
    out->temperature = (double)gen_range(g, 0, 20) / 10.0;
    out->max_tokens = 256 << gen_below(g, 4);
    out->vibe_coding = gen_below(g, 10) == 0;
    out->processing_time_ms = gen_skewed(g, 300, 2500, 60000);
    out->tokens_used = gen_skewed(g, 50, 600, 8000);
    out->cost_usd = (double)out->tokens_used * 0.000002;
    uint32_t r = gen_below(g, 100);
    out->status = r < 95 ? "completed" : "failed";
    out->error_message = r < 95 ? NULL : "the provider answered 500";
    out->error_code = r < 95 ? NULL : "provider_error";
}

/* ---- packing ---- */

static void pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void pack_kv_str(msgpack_packer *pk, const char *k, const char *v)
{
    pack_str(pk, k);
    pack_str(pk, v);
}

static void pack_kv_int(msgpack_packer *pk, const char *k, int64_t v)
{
    pack_str(pk, k);
    msgpack_pack_int64(pk, v);
}

/* Packs "id": <36 zeros>, noting where the 36 characters start relative to map_start. */
static void pack_id_placeholder(msgpack_packer *pk, size_t map_start, size_t *id_offset)
{
    static const char zeros[GEN_UUID_LEN + 1] = "00000000-0000-7000-8000-000000000000";
    pack_str(pk, "id");
    msgpack_pack_str(pk, GEN_UUID_LEN);
    const msgpack_sbuffer *sb = pk->data;
    *id_offset = sb->size - map_start;
    msgpack_pack_str_body(pk, zeros, GEN_UUID_LEN);
}

void gen_pack_usage(msgpack_packer *pk, const struct gen *g, const struct gen_usage *u,
                    bool id_placeholder, size_t *id_offset)
{
    const msgpack_sbuffer *sb = pk->data;
    size_t start = sb->size;
    char user[GEN_UUID_LEN + 1];
    gen_user_id(u->user, user);
    msgpack_pack_map(pk, 7u + (u->error_message ? 1 : 0) + (id_placeholder ? 1 : 0));
    if (id_placeholder)
        pack_id_placeholder(pk, start, id_offset);
    pack_kv_str(pk, "user_id", user);
    pack_kv_str(pk, "provider", g->providers[u->provider]);
    pack_kv_str(pk, "endpoint", u->endpoint);
    pack_kv_int(pk, "request_size", u->request_size);
    pack_kv_int(pk, "response_size", u->response_size);
    pack_kv_int(pk, "response_time_ms", u->response_time_ms);
    pack_kv_int(pk, "status_code", u->status_code);
    if (u->error_message)
        pack_kv_str(pk, "error_message", u->error_message);
}

void gen_pack_prompt(msgpack_packer *pk, const struct gen *g, const struct gen_prompt *p,
                     bool id_placeholder, size_t *id_offset)
{
    const msgpack_sbuffer *sb = pk->data;
    size_t start = sb->size;
    char user[GEN_UUID_LEN + 1];
    gen_user_id(p->user, user);
    msgpack_pack_map(pk, 16u + (p->error_message ? 2 : 0) + (id_placeholder ? 1 : 0));
    if (id_placeholder)
        pack_id_placeholder(pk, start, id_offset);
    pack_kv_str(pk, "user_id", user);
    pack_kv_str(pk, "framework_id", p->framework_id);
    pack_kv_str(pk, "framework_name", p->framework_name);
    pack_kv_str(pk, "model", p->model);
    pack_kv_str(pk, "provider", g->providers[p->provider]);
    pack_kv_str(pk, "user_input", p->user_input);
    pack_kv_str(pk, "ai_response", p->ai_response);
    pack_kv_str(pk, "tone", p->tone);
    pack_kv_str(pk, "length", p->length);
    pack_str(pk, "temperature");
    msgpack_pack_double(pk, p->temperature);
    pack_kv_int(pk, "max_tokens", p->max_tokens);
    pack_str(pk, "vibe_coding");
    if (p->vibe_coding)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
    pack_kv_int(pk, "processing_time_ms", p->processing_time_ms);
    pack_kv_int(pk, "tokens_used", p->tokens_used);
    pack_str(pk, "cost_usd");
    msgpack_pack_double(pk, p->cost_usd);
    pack_kv_str(pk, "status", p->status);
    if (p->error_message) {
        pack_kv_str(pk, "error_message", p->error_message);
        pack_kv_str(pk, "error_code", p->error_code);
    }
}
