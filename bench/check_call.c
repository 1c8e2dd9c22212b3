/* check_call: see check_call.h. */
#include "check_call.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen.h"

/* limits.reservation_ttl_s's default, as the daemon sends it in every call: the script reads it
 * only for a check that makes a reservation, which no check under v1 rules does. */
#define RESERVATION_TTL_S "900"
#define MAX_PER_KEY_PART 512 /* the daemon's MAX_COSTS_PER_CALL */

/* A growing buffer that resp_bulk writes into while the pieces are made. */
struct text {
    char *data;
    size_t len, cap;
    bool failed; /* out of memory: what follows was dropped */
};

static int text_write(void *data, const char *s, size_t len)
{
    struct text *t = data;
    if (t->len + len > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (cap < t->len + len)
            cap *= 2;
        char *p = realloc(t->data, cap);
        if (!p) {
            t->failed = true;
            return -1;
        }
        t->data = p;
        t->cap = cap;
    }
    memcpy(t->data + t->len, s, len);
    t->len += len;
    return 0;
}

static void bulk_str(struct text *t, const char *s)
{
    resp_bulk(text_write, t, s, strlen(s));
}

static void bulk_i64(struct text *t, int64_t v)
{
    char s[24];
    int n = snprintf(s, sizeof(s), "%" PRId64, v);
    resp_bulk(text_write, t, s, (size_t)n);
}

/* Copies a piece into a fixed field of the struct (the pieces there are short and bounded). */
static size_t fixed(char *dst, size_t cap, const struct text *t)
{
    size_t n = t->len < cap ? t->len : cap;
    memcpy(dst, t->data, n);
    return n;
}

struct check_call *check_call_new(const char *sha, const char *key_prefix, uint32_t users,
                                  const char *const *providers, uint32_t nproviders,
                                  int64_t per_minute, int64_t per_day, uint64_t cost, char *err,
                                  size_t err_len)
{
    if (per_minute < -1 || per_day < -1) {
        snprintf(err, err_len, "a limit is -1 (unlimited) or at least 0");
        return NULL;
    }
    if (per_minute == -1 && per_day == -1) {
        snprintf(err, err_len, "both windows unlimited: the daemon asks Redis nothing");
        return NULL;
    }
    if (strlen(sha) != 40 || users == 0 || nproviders == 0) {
        snprintf(err, err_len, "a sha1 of 40 hex digits, users and providers are needed");
        return NULL;
    }
    struct check_call *cc = calloc(1, sizeof(*cc));
    if (!cc) {
        snprintf(err, err_len, "out of memory");
        return NULL;
    }
    memcpy(cc->sha, sha, 41);
    cc->users = users;
    cc->nproviders = nproviders;
    struct text t = {0};

    /* The bases (limiter_format_base): prefix{user_id}. Every one is as long as the first. */
    for (uint32_t u = 0; u < users; u++) {
        char uuid[GEN_UUID_LEN + 1], base[512];
        gen_user_id(u, uuid);
        int n = snprintf(base, sizeof(base), "%s{%s}", key_prefix, uuid);
        if (n < 0 || (size_t)n >= sizeof(base)) {
            snprintf(err, err_len, "the key prefix is too long");
            free(t.data);
            check_call_free(cc);
            return NULL;
        }
        resp_bulk(text_write, &t, base, (size_t)n);
        if (u == 0)
            cc->base_len = t.len;
    }
    cc->bases = t.data;
    bool failed = t.failed;
    t = (struct text){0};

    /* A head, per provider (send_script_call): the rules count in one scope, the
     * provider's (limiter_scope_suffix: ":p:" provider), minute before day as rules_resolve
     * orders them. */
    cc->head_off = calloc(nproviders + 1, sizeof(*cc->head_off));
    const char *const fields[2] = {"rm", "rd"};
    const int64_t limits[2] = {per_minute, per_day};
    cc->rules = (per_minute != -1) + (per_day != -1);
    for (uint32_t p = 0; cc->head_off && p < nproviders; p++) {
        char suffix[128];
        snprintf(suffix, sizeof(suffix), ":p:%s", providers[p]);
        bulk_str(&t, "1");
        bulk_str(&t, suffix);
        bulk_i64(&t, cc->rules);
        for (int w = 0; w < 2; w++) {
            if (limits[w] == -1)
                continue;
            bulk_str(&t, "1");
            bulk_str(&t, fields[w]);
            bulk_i64(&t, limits[w]);
            bulk_str(&t, "0"); /* not a shadow rule */
            bulk_str(&t, "0"); /* no alert */
        }
        cc->head_off[p + 1] = t.len;
    }
    cc->heads = t.data;
    failed = failed || t.failed;
    t = (struct text){0};

    bulk_str(&t, "c");
    bulk_str(&t, RESERVATION_TTL_S);
    cc->preamble_len = fixed(cc->preamble, sizeof(cc->preamble), &t);
    t.len = 0;
    bulk_i64(&t, (int64_t)cost);
    bulk_str(&t, "0");
    bulk_str(&t, "0");
    bulk_str(&t, "");
    cc->check_len = fixed(cc->check, sizeof(cc->check), &t);
    free(t.data);
    if (failed || t.failed || !cc->head_off) {
        snprintf(err, err_len, "out of memory");
        check_call_free(cc);
        return NULL;
    }
    return cc;
}

void check_call_free(struct check_call *cc)
{
    if (!cc)
        return;
    free(cc->bases);
    free(cc->heads);
    free(cc->head_off);
    free(cc);
}

/* Groups the call's checks by key into parts, in the order of each part's first check, as the
 * daemon's checks of a key join its call while the call waits in the batch. Returns the number
 * of parts. */
static uint32_t group(struct check_call *cc, const uint32_t *keys, uint32_t k)
{
    if (++cc->stamp == 0) { /* wrapped: no slot may look like this call's */
        memset(cc->slot_stamp, 0, sizeof(cc->slot_stamp));
        cc->stamp = 1;
    }
    uint32_t parts = 0;
    for (uint32_t j = 0; j < k; j++) {
        uint32_t key = keys[j];
        uint32_t s = (key * 2654435761u) & (CHECK_CALL_TABLE - 1);
        while (cc->slot_stamp[s] == cc->stamp && cc->slot_key[s] != key)
            s = (s + 1) & (CHECK_CALL_TABLE - 1);
        if (cc->slot_stamp[s] == cc->stamp && cc->part_n[cc->slot_part[s]] < MAX_PER_KEY_PART) {
            cc->part_n[cc->slot_part[s]]++;
            continue;
        }
        /* A new key, or one whose part is full: a new part, which the key's later checks join. */
        cc->slot_stamp[s] = cc->stamp;
        cc->slot_key[s] = key;
        cc->slot_part[s] = parts;
        cc->part_key[parts] = key;
        cc->part_n[parts] = 1;
        parts++;
    }
    return parts;
}

void check_call_write(struct check_call *cc, const uint32_t *keys, uint32_t k, resp_write_fn write,
                      void *data)
{
    uint32_t parts = group(cc, keys, k);
    /* The heads: one per provider of the call, numbered in the order of their first part. */
    uint32_t heads = 0;
    for (uint32_t i = 0; i < parts; i++) {
        uint32_t p = cc->part_key[i] % cc->nproviders, h = 0;
        while (h < heads && cc->head_provider[h] != p)
            h++;
        if (h == heads)
            cc->head_provider[heads++] = p;
        cc->part_head[i] = h + 1;
    }
    /* EVALSHA, sha, numkeys (0: one Redis, no KEYS), "c", TTL, the number of parts and their
     * bases; the number of heads and each (scope: 2, rules: 1 + 5 per rule); per part its
     * head's number and checks (1 + 4 per check). */
    uint64_t argc = 3 + 2 + 1 + (uint64_t)parts + 1 + (uint64_t)heads * (2 + 1 + 5 * cc->rules) +
                    (uint64_t)parts * 2 + 4 * (uint64_t)k;
    char head[128];
    int n = snprintf(head, sizeof(head), "*%" PRIu64 "\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n", argc,
                     cc->sha);
    write(data, head, (size_t)n);
    resp_bulk(write, data, "0", 1);
    write(data, cc->preamble, cc->preamble_len);
    n = snprintf(head, sizeof(head), "%u", parts);
    resp_bulk(write, data, head, (size_t)n);
    for (uint32_t i = 0; i < parts; i++) {
        uint32_t user = cc->part_key[i] / cc->nproviders;
        write(data, cc->bases + (size_t)user * cc->base_len, cc->base_len);
    }
    n = snprintf(head, sizeof(head), "%u", heads);
    resp_bulk(write, data, head, (size_t)n);
    for (uint32_t h = 0; h < heads; h++) {
        uint32_t p = cc->head_provider[h];
        write(data, cc->heads + cc->head_off[p], cc->head_off[p + 1] - cc->head_off[p]);
    }
    for (uint32_t i = 0; i < parts; i++) {
        n = snprintf(head, sizeof(head), "%u", cc->part_head[i]);
        resp_bulk(write, data, head, (size_t)n);
        n = snprintf(head, sizeof(head), "%u", cc->part_n[i]);
        resp_bulk(write, data, head, (size_t)n);
        for (uint32_t j = 0; j < cc->part_n[i]; j++)
            write(data, cc->check, cc->check_len);
    }
}
