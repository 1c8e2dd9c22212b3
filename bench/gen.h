/* gen: the benchmark's data. Realistic values for checks, usage events and prompt events,
 * drawn from a seeded generator, so that usage-bench, insert-bench and the CSV file that psql
 * loads all carry rows of the same shape.
 *
 * Users are numbered 0 .. users-1; user i is the uuid b0000000-0000-4000-8000-<i as 12 hex
 * digits>, which bench/compare creates in auth.users with the same formula. */
#ifndef BENCH_GEN_H
#define BENCH_GEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#define GEN_UUID_LEN 36
#define GEN_MAX_PROVIDERS 16

struct gen {
    uint64_t state; /* xorshift64* */
    uint32_t users;
    uint32_t nproviders;
    const char *providers[GEN_MAX_PROVIDERS]; /* names, pointing into names_buf */
    char *names_buf;
    uint64_t v7_last_ms; /* UUIDv7 ids, when the client assigns them */
    uint64_t v7_counter;
};

/* One api_usage_logs row (without id and created_at). */
struct gen_usage {
    uint32_t user;
    uint32_t provider;
    const char *endpoint;
    int32_t request_size;
    int32_t response_size;
    int32_t response_time_ms;
    int32_t status_code;
    const char *error_message; /* NULL when the call succeeded */
};

/* One prompt_history row (without id and created_at). */
struct gen_prompt {
    uint32_t user;
    uint32_t provider;
    const char *framework_id;
    const char *framework_name;
    const char *model;
    char user_input[512];
    char ai_response[2048];
    const char *tone;
    const char *length;
    double temperature;
    int32_t max_tokens;
    bool vibe_coding;
    int32_t processing_time_ms;
    int32_t tokens_used;
    double cost_usd;
    const char *status;
    const char *error_message; /* NULL unless failed */
    const char *error_code;
};

/* providers: a comma-separated list of names (at most GEN_MAX_PROVIDERS), kept by pointer
 * into a copy the generator owns. Returns false when the list is empty or too long. */
bool gen_init(struct gen *g, uint64_t seed, uint32_t users, const char *providers);
void gen_free(struct gen *g);

uint64_t gen_next(struct gen *g);
/* Uniform in [0, n). */
uint32_t gen_below(struct gen *g, uint32_t n);

/* The uuid of user i, 36 characters plus a NUL. */
void gen_user_id(uint32_t i, char out[GEN_UUID_LEN + 1]);
/* A fresh UUIDv7 for now_ms, 36 characters plus a NUL (time-ordered, unique per generator). */
void gen_uuid_v7(struct gen *g, uint64_t now_ms, char out[GEN_UUID_LEN + 1]);

void gen_usage(struct gen *g, struct gen_usage *out);
void gen_prompt(struct gen *g, struct gen_prompt *out, size_t input_chars, size_t response_chars);

/* Packs an event as the map the protocol takes. With id_placeholder, the map starts with
 * "id": <36 zero characters> whose offset from the start of the map is returned in *id_offset,
 * for the sender to patch a fresh id in. */
void gen_pack_usage(msgpack_packer *pk, const struct gen *g, const struct gen_usage *u,
                    bool id_placeholder, size_t *id_offset);
void gen_pack_prompt(msgpack_packer *pk, const struct gen *g, const struct gen_prompt *p,
                     bool id_placeholder, size_t *id_offset);

#endif
