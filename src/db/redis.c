/* redis: see redis.h. The modes' own work is in redis_sentinel.c and redis_cluster.c; this file
 * picks the mode, reads the password and routes calls. */
#include "redis.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "redis_cluster.h"
#include "redis_sentinel.h"
#include "rpc.h"
#include "secret.h"
#include "xalloc.h"

/* The password, read before the loop runs. Unreadable, Redis is not used: said once, here. */
static char *read_password(const char *path)
{
    char *password = NULL, err[512];
    size_t len;
    if (secret_read("redis.password_file", path, &password, &len, err, sizeof(err)) < 0) {
        log_error("%s; Redis is not used and limits.on_redis_error answers every check", err);
        return NULL;
    }
    return password;
}

void redis_set_up(struct redis_client *r, bool up)
{
    r->up = up;
    /* Told of every failed attempt too, not only of changes: the first one settles the daemon's
     * readiness (with limits.on_redis_error in force). */
    if (r->on_state)
        r->on_state(r, up, r->state_arg);
}

static void on_single_state(struct redis_conn *c, bool up, void *arg)
{
    struct redis_client *r = arg;
    redis_set_up(r, up);
    /* A move the sentinels asked for is no loss of the primary. */
    if (r->sentinel && !c->moving)
        redis_sentinel_primary_state(r->sentinel, up);
}

void redis_init(struct redis_client *r, uv_loop_t *loop, const struct config *config,
                const char *script, void (*on_state)(struct redis_client *r, bool up, void *arg),
                void *arg)
{
    memset(r, 0, sizeof(*r));
    r->loop = loop;
    buf_init(&r->args);
    r->on_state = on_state;
    r->state_arg = arg;
    r->script = xstrdup(script);
    r->username = config->redis.username ? xstrdup(config->redis.username) : NULL;
    if (config->redis.password_file) {
        r->password = read_password(config->redis.password_file);
        r->password_missing = !r->password;
    }
    r->setup.username = r->username;
    r->setup.password = r->password;
    r->setup.script = r->script;
    /* A connect gets several command timeouts: a handshake is up to four round trips. */
    r->setup.connect_timeout_ms =
        config->redis.timeout_ms * 4 > 1000 ? config->redis.timeout_ms * 4 : 1000;
    r->setup.backoff_max_ms = config->redis.reconnect_max_ms;
    r->setup.stats = &r->stats;
    if (config->redis.cluster_count) {
        r->mode = REDIS_MODE_CLUSTER;
        r->cluster = redis_cluster_new(r, loop, (const char *const *)config->redis.cluster,
                                       config->redis.cluster_count, config->redis.timeout_ms);
        return;
    }
    redis_conn_init(&r->single, loop, &r->setup, on_single_state, r);
    if (config->redis.sentinel_count) {
        r->mode = REDIS_MODE_SENTINEL;
        r->single.managed = true;
        r->single.require_primary = true;
        r->sentinel = redis_sentinel_new(r, loop, (const char *const *)config->redis.sentinels,
                                         config->redis.sentinel_count,
                                         config->redis.sentinel_master, &r->single);
    } else {
        r->address = xstrdup(config->redis.address);
    }
}

void redis_start(struct redis_client *r)
{
    if (r->password_missing) {
        /* Counted as a failed connect: the daemon is ready, with the policy in force. */
        r->stats.connect_failures++;
        if (r->on_state)
            r->on_state(r, false, r->state_arg);
        return;
    }
    switch (r->mode) {
    case REDIS_MODE_SINGLE:
        redis_conn_connect(&r->single, r->address);
        break;
    case REDIS_MODE_SENTINEL:
        redis_sentinel_start(r->sentinel);
        break;
    case REDIS_MODE_CLUSTER:
        redis_cluster_start(r->cluster);
        break;
    }
}

void redis_eval(struct redis_client *r, int numkeys, int argc, const char *const *argv,
                const size_t *arg_lens, uint32_t timeout_ms, redis_reply_fn cb, void *arg)
{
    size_t need = 0;
    for (int i = 0; i < argc; i++)
        need += arg_lens[i] + REDIS_ARG_OVERHEAD;
    buf_clear(&r->args);
    char *start = (char *)buf_reserve(&r->args, need), *p = start;
    for (int i = 0; i < argc; i++)
        p = redis_conn_put_arg(p, argv[i], arg_lens[i]);
    /* Safe to reuse at the next call: redis_eval_resp copies the arguments before any callback
     * can call here again. */
    redis_eval_resp(r, numkeys, argc, start, (size_t)(p - start), timeout_ms, cb, arg);
}

/* The first argument of RESP text ("$" length CRLF bytes CRLF). */
static const char *first_arg(const char *args, size_t len, size_t *arg_len)
{
    size_t n = 0, i = 1;
    while (i < len && args[i] >= '0' && args[i] <= '9')
        n = n * 10 + (size_t)(args[i++] - '0');
    i += 2; /* CRLF */
    *arg_len = i + n <= len ? n : 0;
    return args + (i <= len ? i : len);
}

void redis_eval_resp(struct redis_client *r, int numkeys, int argc, const char *args, size_t len,
                     uint32_t timeout_ms, redis_reply_fn cb, void *arg)
{
    if (r->mode == REDIS_MODE_CLUSTER) {
        size_t key_len = 0;
        const char *key = argc > 0 ? first_arg(args, len, &key_len) : NULL;
        uint16_t slot = key ? redis_key_slot(key, key_len) : 0;
        redis_cluster_eval(r->cluster, slot, numkeys, argc, args, len, timeout_ms, cb, arg);
        return;
    }
    redis_conn_eval(&r->single, numkeys, argc, args, len, timeout_ms, false, cb, arg);
}

/* CRC16-CCITT (XMODEM), the checksum Redis Cluster takes of keys. Bit by bit: a key is tens of
 * bytes, and a table would be state to build or a page of constants. */
static uint16_t crc16(const char *buf, size_t len)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((uint8_t)buf[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (uint16_t)(crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1);
    }
    return crc;
}

uint16_t redis_key_slot(const char *key, size_t len)
{
    const char *open = memchr(key, '{', len);
    if (open) {
        size_t rest = len - (size_t)(open - key) - 1;
        const char *close = memchr(open + 1, '}', rest);
        if (close && close > open + 1)
            return crc16(open + 1, (size_t)(close - open - 1)) & (REDIS_SLOTS - 1);
    }
    return crc16(key, len) & (REDIS_SLOTS - 1);
}

struct slot_item {
    uint16_t slot;
    size_t order; /* keeps the list's order within a slot */
    void *item;
};

static int slot_item_cmp(const void *a, const void *b)
{
    const struct slot_item *x = a, *y = b;
    if (x->slot != y->slot)
        return x->slot < y->slot ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

#define NEXT_OF(item, off) (*(void **)((char *)(item) + (off)))

void redis_send_by_slot(void *list, size_t n, size_t next_offset,
                        uint16_t (*slot_of)(const void *item, void *arg),
                        void (*send)(void *arg, void *run, size_t n), void *arg)
{
    struct slot_item *items = xmalloc((n ? n : 1) * sizeof(*items));
    size_t count = 0;
    for (void *it = list; it && count < n; it = NEXT_OF(it, next_offset), count++)
        items[count] = (struct slot_item){slot_of(it, arg), count, it};
    qsort(items, count, sizeof(*items), slot_item_cmp);
    for (size_t i = 0; i < count; i++)
        NEXT_OF(items[i].item, next_offset) =
            i + 1 < count && items[i + 1].slot == items[i].slot ? items[i + 1].item : NULL;
    for (size_t i = 0; i < count;) {
        size_t j = i + 1;
        while (j < count && items[j].slot == items[i].slot)
            j++;
        send(arg, items[i].item, j - i);
        i = j;
    }
    free(items);
}

/* ---- close ---- */

void redis_part_closed(struct redis_client *r)
{
    if (--r->closing > 0)
        return;
    free(r->script);
    free(r->username);
    secret_free(r->password);
    free(r->address);
    buf_free(&r->args);
    if (r->on_closed)
        r->on_closed(r, r->closed_arg);
}

static void on_single_closed(struct redis_conn *c, void *arg)
{
    (void)c;
    redis_part_closed(arg);
}

void redis_close(struct redis_client *r, void (*on_closed)(struct redis_client *r, void *arg),
                 void *arg)
{
    r->on_closed = on_closed;
    r->closed_arg = arg;
    r->up = false;
    r->closing = 1; /* this call's own share, given back at the end */
    if (r->mode == REDIS_MODE_CLUSTER) {
        r->closing++;
        redis_cluster_close(r->cluster);
    } else {
        if (r->sentinel) {
            r->closing++;
            redis_sentinel_close(r->sentinel);
        }
        r->closing++;
        redis_conn_close(&r->single, on_single_closed, r);
    }
    redis_part_closed(r);
}

void redis_pack_stats(const struct redis_client *r, msgpack_packer *pk)
{
    static const char *const modes[] = {"single", "sentinel", "cluster"};
    const struct redis_stats *rs = &r->stats;
    msgpack_pack_map(pk, 14);
    rpc_pack_str(pk, "state");
    rpc_pack_str(pk, r->up ? "up" : "down");
    rpc_pack_str(pk, "mode");
    rpc_pack_str(pk, modes[r->mode]);
    rpc_pack_str(pk, "primary");
    if (r->mode != REDIS_MODE_CLUSTER && r->single.address && r->up)
        rpc_pack_str(pk, r->single.address);
    else
        msgpack_pack_nil(pk);
    rpc_pack_u64(pk, "connects", rs->connects);
    rpc_pack_u64(pk, "connect_failures", rs->connect_failures);
    rpc_pack_u64(pk, "auth_failures", rs->auth_failures);
    rpc_pack_u64(pk, "commands", rs->commands);
    rpc_pack_u64(pk, "timeouts", rs->timeouts);
    rpc_pack_u64(pk, "noscript_retries", rs->noscript);
    rpc_pack_u64(pk, "redirects", rs->redirects);
    rpc_pack_u64(pk, "failovers", rs->failovers);
    uint64_t answered = 0;
    for (int i = 0; i < 24; i++)
        answered += rs->latency_buckets[i];
    rpc_pack_u64(pk, "latency_avg_us", answered ? rs->latency_us_total / answered : 0);
    rpc_pack_u64(pk, "latency_p50_us", redis_latency_quantile(rs, 0.5));
    rpc_pack_u64(pk, "latency_p99_us", redis_latency_quantile(rs, 0.99));
}

uint64_t redis_latency_quantile(const struct redis_stats *s, double q)
{
    uint64_t total = 0;
    for (int i = 0; i < 24; i++)
        total += s->latency_buckets[i];
    if (total == 0)
        return 0;
    uint64_t want = (uint64_t)(q * (double)total);
    uint64_t seen = 0;
    for (int i = 0; i < 24; i++) {
        seen += s->latency_buckets[i];
        if (seen > want)
            return 1ULL << i;
    }
    return 1ULL << 23;
}
