/* usage-bench: a load generator for usaged.
 *
 * N connections (Unix socket or TCP), each keeping up to a pipeline depth of requests in flight,
 * send a mix of check, log_usage and log_prompt with realistic values (gen.c), either as fast as
 * the answers come back (closed loop) or open loop at a fixed total rate (--rate). It reports
 * throughput, latency quantiles from a log-bucketed histogram (hist.c), and, when told where to
 * look, the rows PostgreSQL committed meanwhile and the daemon's peak RSS and CPU time.
 *
 * Open loop: request i is due at start + i / rate, whatever happened to the ones before it, and
 * its latency counts from that moment, not from when it was sent: a stall of the daemon (or of
 * this client, or a full pipeline) delays every request due during it, and each of them counts
 * the delay, so the stall cannot hide behind the few requests that were in flight (no
 * coordinated omission). The window holds the requests due in it; each of them is waited for
 * after the window ends, and one never answered counts as late as the wait lasted. The client's
 * own part is reported apart: "send lag", from due to handed to the socket.
 *
 * --redis drives Redis itself with the daemon's check script, sending the very call the daemon
 * sends for checks under their provider's two v1 rules (check_call.c), for the same users and
 * providers, on the same schedule and with the same latency accounting: the floor that a daemon
 * in front of Redis cannot beat.
 *
 * One libuv loop, one thread. Requests are assembled from pre-packed events (memcpy, plus a
 * fresh UUIDv7 when the client assigns ids) and answers are read by a small MessagePack reader
 * of its own that looks only at what it counts, so that the client stays cheap next to the
 * daemon it measures on the same machine.
 *
 * usage-bench --emit-csv FILE --rows N writes N usage rows of the same shape as CSV instead,
 * for `psql \copy` to load. */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "check_call.h"
#include "gen.h"
#include "hist.h"
#include "resp.h"

enum kind { K_CHECK, K_USAGE, K_PROMPT, K_COUNT, K_PING = K_COUNT };
static const char *const kind_names[K_COUNT] = {"check", "log_usage", "log_prompt"};

/* Error codes counted by name; anything else is "other". */
static const char *const error_codes[] = {
    "bad_request",   "invalid_field", "unknown_method", "unknown_provider",
    "unauthorized",  "overloaded",    "unavailable",    "too_large",
    "shutting_down", "internal",      "other",
};
#define NCODES ((int)(sizeof(error_codes) / sizeof(error_codes[0])))
#define CODE_OVERLOADED 5
#define CODE_OTHER (NCODES - 1)

#define NOTIFY_WINDOW (256 * 1024) /* unsent bytes of notifications per connection */
#define READ_CHUNK (64 * 1024)
#define USAGE_POOL 16384
#define PROMPT_POOL 2048
#define MAX_WATCH 8

struct options {
    const char *socket_path;
    const char *tcp;
    uint32_t connections;
    uint32_t pipeline;
    uint32_t mix[K_COUNT]; /* weights */
    uint32_t events_per_request;
    const char *ack; /* NULL: let the daemon's default decide */
    bool notify;     /* log_* as notifications */
    uint32_t users;
    const char *providers;
    int64_t cost;      /* < 0: not sent (the daemon's default, 1) */
    int64_t tokens;    /* < 0: not sent */
    const char *spend; /* NULL: not sent */
    double rate;       /* requests (and notifications) per second in total; 0: closed loop */
    double duration_s;
    double warmup_s;
    uint64_t total_events; /* stop after this many log events were accepted; 0: by time */
    double wait_committed_s;
    int pid;
    struct {
        const char *name;
        int pids[16];
        int npids;
    } watch[MAX_WATCH];
    int nwatch;
    const char *pg;
    bool json;
    uint64_t seed;
    bool client_ids;
    uint32_t prompt_input_chars;
    uint32_t prompt_response_chars;
    const char *emit_csv;
    uint64_t csv_rows;
    const char *label;
    /* --redis: Redis itself is the target, with the check script */
    bool redis;
    const char *evalsha;      /* the sha1 of the loaded script */
    const char *redis_limits; /* "PER_MINUTE,PER_DAY", as the daemon passes them */
    const char *key_prefix;   /* the daemon's redis.key_prefix */
    uint32_t redis_batch;     /* most checks in one script call, as the daemon batches them */
    uint32_t tick_us;         /* open loop: the shortest wait between two wake-ups */
};

struct pool {
    uint8_t *data;
    size_t *off;
    uint32_t *len;
    size_t *id_off;
    uint32_t n;
};

struct obuf {
    uint8_t *data;
    size_t len, cap;
};

struct slot {
    uint64_t t_ns; /* when it was due (open loop) or sent (closed loop), monotonic ns */
    uint32_t events;
    uint16_t seq;
    uint8_t kind;
    bool used;
};

struct counters {
    uint64_t ok[K_COUNT];       /* requests answered without error */
    uint64_t errors[K_COUNT];   /* requests answered with an error */
    uint64_t notified[K_COUNT]; /* notifications sent */
    uint64_t events[K_COUNT];   /* log events accepted (or sent as notifications) */
    uint64_t allowed, denied, degraded;
    uint64_t codes[NCODES];
    uint64_t unanswered; /* open loop: due in the window, never answered (counted as late) */
    struct hist lat[K_COUNT];
    struct hist send_lag; /* open loop: from due to handed to the socket */
};

struct bench;

struct bconn {
    struct bench *b;
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_pipe_t pipe;
        uv_tcp_t tcp;
    } h;
    uv_connect_t connect_req;
    uv_write_t write_req;
    uv_timer_t backoff;
    struct obuf out;  /* packed, not yet handed to libuv */
    struct obuf wbuf; /* being written */
    bool writing, connected, closed, backing_off;
    uint8_t *in;
    size_t in_len, in_cap;
    struct slot *slots;
    uint32_t *free_slots;
    uint32_t nfree;
    uint16_t seq;
    int next_kind;
    /* --redis: replies come in order; the slots of the requests sent, oldest first */
    uint32_t *fifo;
    uint32_t fifo_head, fifo_len;
};

enum phase { PHASE_CONNECTING, PHASE_RUN, PHASE_DRAIN, PHASE_DONE };

struct bench {
    struct options o;
    uv_loop_t *loop;
    struct gen gen;
    struct pool usage_pool, prompt_pool, check_pool;
    struct check_call *redis_call; /* --redis: the daemon's script call, its pieces made */
    uint32_t mix_total;
    struct bconn *conns;
    uint32_t connected;
    enum phase phase;
    bool recording;
    uint64_t t_start_ns, t_measure_ns, t_end_ns, t_last_answer_ns;
    struct counters c;
    uint64_t inflight; /* requests without an answer, all connections */
    /* --total-events */
    uint64_t events_reserved; /* in flight or accepted */
    uint64_t events_accepted;
    /* --rate: a one-shot timerfd wakes the loop when the next request is due (libuv's timers
     * count whole milliseconds, which would send a millisecond's requests in one burst) */
    uv_poll_t tick;
    int tick_fd;
    double period_ns;     /* 1e9 / rate */
    uint64_t interval_ns; /* of a periodic timer; 0: one-shot, armed at each wake-up */
    uint64_t scheduled;   /* requests due so far: 0 .. scheduled-1 */
    uint64_t issued;      /* of those, handed to a connection */
    uint32_t rr;
    uv_timer_t phase_timer;
    uint64_t max_backlog; /* open loop: most requests due and not yet sent */
    bool pinged;          /* the closing pings of --notify are sent */
    bool failed;
    /* what the daemon and the watched processes had spent when measuring began and ended */
    struct proc_sample {
        bool ok;
        double cpu_s;     /* utime + stime */
        double wait_s;    /* runnable but waiting for a CPU (schedstat run_delay), main thread */
        uint64_t hwm_kib; /* VmHWM */
        uint64_t rss_kib; /* VmRSS */
    } d0, d1, self0, self1;
    uint64_t d0_ns, d1_ns;
    struct proc_sample w0[MAX_WATCH], w1[MAX_WATCH]; /* sums of cpu_s and wait_s */
};

/* ---- small helpers ---- */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("usage-bench: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        die("out of memory");
    return p;
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        die("out of memory");
    return p;
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p)
        die("out of memory");
    return p;
}

static uint8_t *obuf_reserve(struct obuf *b, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        b->data = xrealloc(b->data, cap);
        b->cap = cap;
    }
    return b->data + b->len;
}

static void obuf_append(struct obuf *b, const void *p, size_t n)
{
    memcpy(obuf_reserve(b, n), p, n);
    b->len += n;
}

static int obuf_write(void *data, const char *buf, size_t len)
{
    obuf_append(data, buf, len);
    return 0;
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* CLOCK_MONOTONIC in ns: the clock of the timerfd that schedules the open loop, so that due
 * times and the timer agree (uv_hrtime reads the same clock, but does not promise to). */
static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double secs(uint64_t ns)
{
    return (double)ns / 1e9;
}

/* ---- pools of pre-packed params ---- */

static void pool_add(struct pool *p, uint32_t cap, msgpack_sbuffer *sb, size_t start, size_t id_off)
{
    if (p->n == 0) {
        p->off = xmalloc(cap * sizeof(*p->off));
        p->len = xmalloc(cap * sizeof(*p->len));
        p->id_off = xmalloc(cap * sizeof(*p->id_off));
    }
    p->off[p->n] = start;
    p->len[p->n] = (uint32_t)(sb->size - start);
    p->id_off[p->n] = id_off;
    p->n++;
}

static void pool_finish(struct pool *p, msgpack_sbuffer *sb)
{
    p->data = (uint8_t *)msgpack_sbuffer_release(sb);
}

static void pool_free(struct pool *p)
{
    free(p->data);
    free(p->off);
    free(p->len);
    free(p->id_off);
    memset(p, 0, sizeof(*p));
}

/* --redis: the pieces of the daemon's script call for checks of every (user, provider) under
 * the provider's limits per minute and per day (--redis-limits) and the check's cost. */
static void build_redis_call(struct bench *b)
{
    const struct options *o = &b->o;
    long long minute, day;
    char end;
    if (sscanf(o->redis_limits, "%lld,%lld%c", &minute, &day, &end) != 2)
        die("--redis-limits takes PER_MINUTE,PER_DAY");
    char err[128];
    b->redis_call =
        check_call_new(o->evalsha, o->key_prefix, b->gen.users, b->gen.providers, b->gen.nproviders,
                       minute, day, (uint64_t)(o->cost >= 0 ? o->cost : 1), err, sizeof(err));
    if (!b->redis_call)
        die("--redis: %s", err);
}

static void build_pools(struct bench *b)
{
    const struct options *o = &b->o;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    size_t id_off = 0;

    if (b->o.mix[K_USAGE]) {
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        for (uint32_t i = 0; i < USAGE_POOL; i++) {
            struct gen_usage u;
            gen_usage(&b->gen, &u);
            size_t start = sb.size;
            gen_pack_usage(&pk, &b->gen, &u, o->client_ids, &id_off);
            pool_add(&b->usage_pool, USAGE_POOL, &sb, start, id_off);
        }
        pool_finish(&b->usage_pool, &sb);
    }
    if (b->o.mix[K_PROMPT]) {
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        struct gen_prompt *p = xmalloc(sizeof(*p));
        for (uint32_t i = 0; i < PROMPT_POOL; i++) {
            gen_prompt(&b->gen, p, o->prompt_input_chars, o->prompt_response_chars);
            size_t start = sb.size;
            gen_pack_prompt(&pk, &b->gen, p, o->client_ids, &id_off);
            pool_add(&b->prompt_pool, PROMPT_POOL, &sb, start, id_off);
        }
        free(p);
        pool_finish(&b->prompt_pool, &sb);
    }
    if (b->o.mix[K_CHECK] && o->redis) {
        build_redis_call(b);
    } else if (b->o.mix[K_CHECK]) {
        /* One params map per (user, provider) key. */
        uint32_t keys = b->gen.users * b->gen.nproviders;
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        for (uint32_t k = 0; k < keys; k++) {
            char user[GEN_UUID_LEN + 1];
            gen_user_id(k / b->gen.nproviders, user);
            const char *prov = b->gen.providers[k % b->gen.nproviders];
            size_t start = sb.size;
            msgpack_pack_map(&pk, 2 + (o->cost >= 0) + (o->tokens >= 0) + (o->spend != NULL));
            msgpack_pack_str_with_body(&pk, "user_id", 7);
            msgpack_pack_str_with_body(&pk, user, GEN_UUID_LEN);
            msgpack_pack_str_with_body(&pk, "provider", 8);
            msgpack_pack_str_with_body(&pk, prov, strlen(prov));
            if (o->cost >= 0) {
                msgpack_pack_str_with_body(&pk, "cost", 4);
                msgpack_pack_int64(&pk, o->cost);
            }
            if (o->tokens >= 0) {
                msgpack_pack_str_with_body(&pk, "tokens", 6);
                msgpack_pack_int64(&pk, o->tokens);
            }
            if (o->spend) {
                msgpack_pack_str_with_body(&pk, "spend", 5);
                msgpack_pack_str_with_body(&pk, o->spend, strlen(o->spend));
            }
            pool_add(&b->check_pool, keys, &sb, start, 0);
        }
        pool_finish(&b->check_pool, &sb);
    }
}

/* ---- the minimal MessagePack reader for answers ---- */

/* Each returns 1 when it read a whole item, 0 when the bytes end first, -1 on bytes it does not
 * expect. */

static uint64_t be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* The size of an item's header and how many items follow it (2 per map entry), or -1. For
 * str/bin/ext, *payload is the bytes after the header. */
static int mp_header(const uint8_t *p, const uint8_t *end, size_t *hdr, uint64_t *children,
                     uint64_t *payload)
{
    if (p >= end)
        return 0;
    uint8_t t = *p;
    *children = 0;
    *payload = 0;
    size_t need = 1;
    if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3) {
        *hdr = 1;
        return 1;
    }
    if ((t & 0xf0) == 0x80) {
        *hdr = 1;
        *children = 2u * (t & 0x0f);
        return 1;
    }
    if ((t & 0xf0) == 0x90) {
        *hdr = 1;
        *children = t & 0x0f;
        return 1;
    }
    if ((t & 0xe0) == 0xa0) {
        *hdr = 1;
        *payload = t & 0x1f;
        return 1;
    }
    switch (t) {
    case 0xcc:
    case 0xd0:
        need = 2;
        break;
    case 0xcd:
    case 0xd1:
        need = 3;
        break;
    case 0xca:
    case 0xce:
    case 0xd2:
        need = 5;
        break;
    case 0xcb:
    case 0xcf:
    case 0xd3:
        need = 9;
        break;
    case 0xd4:
        need = 1 + 1 + 1;
        break;
    case 0xd5:
        need = 1 + 1 + 2;
        break;
    case 0xd6:
        need = 1 + 1 + 4;
        break;
    case 0xd7:
        need = 1 + 1 + 8;
        break;
    case 0xd8:
        need = 1 + 1 + 16;
        break;
    case 0xc4:
    case 0xd9:
        need = 2;
        break;
    case 0xc5:
    case 0xda:
        need = 3;
        break;
    case 0xc6:
    case 0xdb:
        need = 5;
        break;
    case 0xc7:
        need = 3;
        break;
    case 0xc8:
        need = 4;
        break;
    case 0xc9:
        need = 6;
        break;
    case 0xdc:
    case 0xde:
        need = 3;
        break;
    case 0xdd:
    case 0xdf:
        need = 5;
        break;
    default:
        return -1;
    }
    if ((size_t)(end - p) < need)
        return 0;
    *hdr = need;
    switch (t) {
    case 0xc4:
    case 0xd9:
        *payload = p[1];
        break;
    case 0xc5:
    case 0xda:
        *payload = be(p + 1, 2);
        break;
    case 0xc6:
    case 0xdb:
        *payload = be(p + 1, 4);
        break;
    case 0xc7:
        *payload = 1 + p[1];
        *hdr = 2;
        break;
    case 0xc8:
        *payload = 1 + be(p + 1, 2);
        *hdr = 3;
        break;
    case 0xc9:
        *payload = 1 + be(p + 1, 4);
        *hdr = 5;
        break;
    case 0xdc:
        *children = be(p + 1, 2);
        break;
    case 0xdd:
        *children = be(p + 1, 4);
        break;
    case 0xde:
        *children = 2 * be(p + 1, 2);
        break;
    case 0xdf:
        *children = 2 * be(p + 1, 4);
        break;
    default:
        break;
    }
    return 1;
}

/* Skips one whole item (with everything inside it). */
static int mp_skip(const uint8_t **pp, const uint8_t *end)
{
    const uint8_t *p = *pp;
    uint64_t remaining = 1;
    while (remaining > 0) {
        size_t hdr;
        uint64_t children, payload;
        int r = mp_header(p, end, &hdr, &children, &payload);
        if (r <= 0)
            return r;
        if ((uint64_t)(end - p) < hdr + payload)
            return 0;
        p += hdr + payload;
        remaining += children - 1;
    }
    *pp = p;
    return 1;
}

static bool mp_uint(const uint8_t **pp, const uint8_t *end, uint64_t *v)
{
    const uint8_t *p = *pp;
    if (p >= end)
        return false;
    uint8_t t = *p;
    int n;
    if (t <= 0x7f) {
        *v = t;
        *pp = p + 1;
        return true;
    }
    switch (t) {
    case 0xcc:
    case 0xd0:
        n = 1;
        break;
    case 0xcd:
    case 0xd1:
        n = 2;
        break;
    case 0xce:
    case 0xd2:
        n = 4;
        break;
    case 0xcf:
    case 0xd3:
        n = 8;
        break;
    default:
        return false;
    }
    if (end - p < 1 + n)
        return false;
    *v = be(p + 1, n);
    *pp = p + 1 + n;
    return true;
}

static bool mp_str(const uint8_t **pp, const uint8_t *end, const char **s, size_t *len)
{
    size_t hdr;
    uint64_t children, payload;
    const uint8_t *p = *pp;
    if (p >= end || mp_header(p, end, &hdr, &children, &payload) != 1)
        return false;
    uint8_t t = *p;
    if (!((t & 0xe0) == 0xa0 || t == 0xd9 || t == 0xda || t == 0xdb))
        return false;
    if ((uint64_t)(end - p) < hdr + payload)
        return false;
    *s = (const char *)p + hdr;
    *len = payload;
    *pp = p + hdr + payload;
    return true;
}

static bool mp_map(const uint8_t **pp, const uint8_t *end, uint64_t *n)
{
    size_t hdr;
    uint64_t children, payload;
    const uint8_t *p = *pp;
    if (p >= end)
        return false;
    uint8_t t = *p;
    if (!((t & 0xf0) == 0x80 || t == 0xde || t == 0xdf))
        return false;
    if (mp_header(p, end, &hdr, &children, &payload) != 1)
        return false;
    *n = children / 2;
    *pp = p + hdr;
    return true;
}

static bool str_is(const char *s, size_t len, const char *want)
{
    return strlen(want) == len && memcmp(s, want, len) == 0;
}

/* ---- sending ---- */

static void conn_flush(struct bconn *c);
static void pump(struct bconn *c);
static void finish_run(struct bench *b);
static void check_finished(struct bench *b);
static void sample_processes(struct bench *b, struct proc_sample *d, struct proc_sample *w,
                             struct proc_sample *self, uint64_t *t_ns);

/* Whether a request due (open loop) or sent (closed loop) at t_ns is one of the measured: in
 * the open loop, the window is of due times, and its requests are waited for after it ends. */
static bool counted(const struct bench *b, uint64_t t_ns)
{
    if (b->o.rate <= 0)
        return b->recording;
    return b->t_measure_ns != 0 && t_ns >= b->t_measure_ns && (b->recording || t_ns < b->t_end_ns);
}

static int pick_kind(struct bench *b)
{
    uint32_t r = gen_below(&b->gen, b->mix_total);
    for (int k = 0; k < K_COUNT; k++) {
        if (r < b->o.mix[k])
            return k;
        r -= b->o.mix[k];
    }
    return K_CHECK;
}

static bool is_request(const struct bench *b, int kind)
{
    return kind == K_CHECK || !b->o.notify;
}

/* Whether this connection can send an op of this kind now. */
static bool conn_can_issue(const struct bconn *c, int kind)
{
    const struct bench *b = c->b;
    if (!c->connected || c->closed || c->backing_off)
        return false;
    if (is_request(b, kind))
        return c->nfree > 0;
    return c->out.len + c->wbuf.len < NOTIFY_WINDOW;
}

/* How many events the next log op may carry; 0 when the --total-events budget is spent. */
static uint32_t events_allowed(const struct bench *b)
{
    uint32_t n = b->o.events_per_request;
    if (b->o.total_events == 0)
        return n;
    if (b->events_reserved >= b->o.total_events)
        return 0;
    uint64_t left = b->o.total_events - b->events_reserved;
    return left < n ? (uint32_t)left : n;
}

static void pack_method(msgpack_packer *pk, int kind)
{
    const char *m = kind_names[kind];
    msgpack_pack_str_with_body(pk, m, strlen(m));
}

/* Appends one op to the connection's output; t_ns is when it was due. False when the events
 * budget is spent (nothing was appended). */
static bool issue(struct bconn *c, int kind, uint64_t t_ns)
{
    struct bench *b = c->b;
    uint32_t nevents = 0;
    if (kind != K_CHECK) {
        nevents = events_allowed(b);
        if (nevents == 0)
            return false;
    }
    msgpack_packer pk;
    msgpack_packer_init(&pk, &c->out, obuf_write);
    bool request = is_request(b, kind);
    if (request) {
        uint32_t s = c->free_slots[--c->nfree];
        struct slot *slot = &c->slots[s];
        slot->used = true;
        slot->t_ns = t_ns;
        slot->kind = (uint8_t)kind;
        slot->events = nevents;
        slot->seq = ++c->seq;
        b->inflight++;
        msgpack_pack_array(&pk, 4);
        msgpack_pack_uint8(&pk, 0);
        msgpack_pack_uint32(&pk, (uint32_t)slot->seq << 16 | s);
        pack_method(&pk, kind);
    } else {
        msgpack_pack_array(&pk, 3);
        msgpack_pack_uint8(&pk, 2);
        pack_method(&pk, kind);
    }
    if (kind == K_CHECK) {
        const struct pool *p = &b->check_pool;
        uint32_t i = gen_below(&b->gen, p->n);
        msgpack_pack_array(&pk, 1);
        obuf_append(&c->out, p->data + p->off[i], p->len[i]);
    } else {
        const struct pool *p = kind == K_USAGE ? &b->usage_pool : &b->prompt_pool;
        msgpack_pack_array(&pk, b->o.ack ? 2 : 1);
        msgpack_pack_array(&pk, nevents);
        uint64_t now_ms = b->o.client_ids ? wall_ms() : 0;
        for (uint32_t e = 0; e < nevents; e++) {
            uint32_t i = gen_below(&b->gen, p->n);
            size_t at = c->out.len;
            obuf_append(&c->out, p->data + p->off[i], p->len[i]);
            if (b->o.client_ids) {
                char id[GEN_UUID_LEN + 1];
                gen_uuid_v7(&b->gen, now_ms, id);
                memcpy(c->out.data + at + p->id_off[i], id, GEN_UUID_LEN);
            }
        }
        if (b->o.ack) {
            msgpack_pack_map(&pk, 1);
            msgpack_pack_str_with_body(&pk, "ack", 3);
            msgpack_pack_str_with_body(&pk, b->o.ack, strlen(b->o.ack));
        }
        b->events_reserved += nevents;
        if (!request && counted(b, t_ns)) {
            b->c.notified[kind]++;
            b->c.events[kind] += nevents;
        }
        if (!request)
            b->events_accepted += nevents; /* fire and forget: sent is all we know */
    }
    return true;
}

static uint64_t due_ns(const struct bench *b, uint64_t i);

/* --redis: one script call of k checks (k slots free on c) of random keys. Check j is due at
 * due_ns(first + j) in the open loop, or sent now in the closed loop. Replies come in order: the
 * slots go to the connection's FIFO, the first with the call's count of checks. */
static void issue_redis(struct bconn *c, uint32_t k, uint64_t first, uint64_t now)
{
    struct bench *b = c->b;
    uint32_t keys[CHECK_CALL_MAX_CHECKS];
    for (uint32_t j = 0; j < k; j++) {
        uint32_t s = c->free_slots[--c->nfree];
        struct slot *slot = &c->slots[s];
        slot->used = true;
        slot->t_ns = b->o.rate > 0 ? due_ns(b, first + j) : now;
        slot->kind = K_CHECK;
        slot->events = j == 0 ? k : 0;
        c->fifo[(c->fifo_head + c->fifo_len++) % b->o.pipeline] = s;
        b->inflight++;
        keys[j] = gen_below(&b->gen, b->gen.users * b->gen.nproviders);
    }
    check_call_write(b->redis_call, keys, k, obuf_write, &c->out);
}

static void on_write(uv_write_t *req, int status)
{
    struct bconn *c = req->data;
    c->writing = false;
    c->wbuf.len = 0;
    if (status < 0) {
        if (!c->closed && c->b->phase == PHASE_RUN)
            fprintf(stderr, "usage-bench: write failed: %s\n", uv_strerror(status));
        return;
    }
    conn_flush(c);
    pump(c);
}

static void conn_flush(struct bconn *c)
{
    if (c->writing || c->out.len == 0 || c->closed)
        return;
    struct obuf t = c->wbuf;
    c->wbuf = c->out;
    c->out = t;
    c->out.len = 0;
    uv_buf_t buf = uv_buf_init((char *)c->wbuf.data, (unsigned)c->wbuf.len);
    c->write_req.data = c;
    int rc = uv_write(&c->write_req, &c->h.stream, &buf, 1, on_write);
    if (rc < 0) {
        fprintf(stderr, "usage-bench: write failed: %s\n", uv_strerror(rc));
        c->wbuf.len = 0;
        return;
    }
    c->writing = true;
}

/* Closed loop: sends until the pipeline (or the notification window) is full. */
static void pump(struct bconn *c)
{
    struct bench *b = c->b;
    if (b->phase != PHASE_RUN || b->o.rate > 0)
        return;
    uint64_t now = mono_ns();
    while (conn_can_issue(c, c->next_kind)) {
        if (b->o.redis) {
            issue_redis(c, c->nfree < b->o.redis_batch ? c->nfree : b->o.redis_batch, 0, now);
            continue;
        }
        if (!issue(c, c->next_kind, now)) {
            /* The events budget is spent: only checks may go on. */
            if (b->o.mix[K_CHECK] == 0)
                break;
            c->next_kind = K_CHECK;
            continue;
        }
        c->next_kind = pick_kind(b);
    }
    conn_flush(c);
    check_finished(b);
}

/* ---- open loop ---- */

/* When request i is due. */
static uint64_t due_ns(const struct bench *b, uint64_t i)
{
    return b->t_start_ns + (uint64_t)((double)i * b->period_ns);
}

/* Makes every request due by t_ns (at most) due: the schedule does not wait for anyone. */
static void schedule_due(struct bench *b, uint64_t t_ns)
{
    if (b->phase != PHASE_RUN || t_ns < b->t_start_ns)
        return;
    uint64_t due = (uint64_t)((double)(t_ns - b->t_start_ns) / b->period_ns) + 1;
    if (due > b->scheduled)
        b->scheduled = due;
}

/* Hands the due requests, oldest first, to the connections that can take them, round robin;
 * the rest wait for a free slot, their clocks running. */
static void drain_backlog(struct bench *b)
{
    uint32_t n = b->o.connections, idle = 0;
    uint64_t now = mono_ns();
    while (b->issued < b->scheduled && idle < n &&
           (b->phase == PHASE_RUN || b->phase == PHASE_DRAIN)) {
        struct bconn *c = &b->conns[b->rr];
        b->rr = (b->rr + 1) % n;
        if (!conn_can_issue(c, c->next_kind)) {
            idle++;
            continue;
        }
        idle = 0;
        uint64_t k = 1;
        if (b->o.redis) {
            k = b->scheduled - b->issued;
            if (k > b->o.redis_batch)
                k = b->o.redis_batch;
            if (k > c->nfree)
                k = c->nfree;
            issue_redis(c, (uint32_t)k, b->issued, now);
        } else if (!issue(c, c->next_kind, due_ns(b, b->issued))) {
            if (b->o.mix[K_CHECK] == 0) {
                b->issued = b->scheduled; /* the events budget is spent: nothing more to send */
                break;
            }
            c->next_kind = K_CHECK;
            continue;
        }
        for (uint64_t j = 0; j < k; j++) {
            uint64_t due = due_ns(b, b->issued + j);
            if (counted(b, due))
                hist_record(&b->c.send_lag, now > due ? now - due : 0);
        }
        c->next_kind = pick_kind(b);
        b->issued += k;
    }
    if (b->scheduled - b->issued > b->max_backlog)
        b->max_backlog = b->scheduled - b->issued;
    for (uint32_t i = 0; i < n; i++)
        conn_flush(&b->conns[i]);
    check_finished(b);
}

/* Wakes the loop when the next request is due, but not sooner than --tick-us from now: at high
 * rates a wake-up per request would cost the client more than it measures. (For a periodic
 * timer, see start_ticking: re-arming costs more than the rest of a wake-up in a VM.) */
static void arm_tick(struct bench *b, uint64_t now)
{
    if (b->interval_ns)
        return;
    uint64_t at = due_ns(b, b->scheduled);
    uint64_t soonest = now + (uint64_t)b->o.tick_us * 1000;
    if (at < soonest)
        at = soonest;
    struct itimerspec its = {
        .it_value = {(time_t)(at / 1000000000), (long)(at % 1000000000)},
    };
    if (timerfd_settime(b->tick_fd, TFD_TIMER_ABSTIME, &its, NULL) < 0)
        die("timerfd: %s", strerror(errno));
}

static void on_tick(uv_poll_t *t, int status, int events)
{
    (void)status;
    (void)events;
    struct bench *b = t->data;
    uint64_t expirations;
    if (read(b->tick_fd, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN)
        die("timerfd: %s", strerror(errno));
    if (b->phase != PHASE_RUN)
        return;
    uint64_t now = mono_ns();
    schedule_due(b, now);
    drain_backlog(b);
    if (b->phase == PHASE_RUN)
        arm_tick(b, now);
}

static void start_ticking(struct bench *b)
{
    /* The kernel may defer a timer by the thread's slack (50 us by default): 1 us here. */
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    b->period_ns = 1e9 / b->o.rate;
    b->tick_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (b->tick_fd < 0)
        die("timerfd: %s", strerror(errno));
    /* A periodic timer, where one fits the schedule, spares a timerfd_settime per wake-up (a
     * fifth of the client's CPU here: reprogramming the timer exits the VM). At rates above one
     * request per --tick-us it ticks every --tick-us; at a rate whose period is a whole number
     * of ns it fires when each request is due, the kernel adding the period to the last expiry
     * (no drift). Other rates re-arm a one-shot timer at each wake-up. */
    uint64_t tick_ns = (uint64_t)b->o.tick_us * 1000;
    if (tick_ns > 0 && b->period_ns <= (double)tick_ns)
        b->interval_ns = tick_ns;
    else if (b->period_ns == floor(b->period_ns))
        b->interval_ns = (uint64_t)b->period_ns;
    if (b->interval_ns) {
        uint64_t first = b->t_start_ns + b->interval_ns;
        struct itimerspec its = {
            .it_interval = {(time_t)(b->interval_ns / 1000000000),
                            (long)(b->interval_ns % 1000000000)},
            .it_value = {(time_t)(first / 1000000000), (long)(first % 1000000000)},
        };
        if (timerfd_settime(b->tick_fd, TFD_TIMER_ABSTIME, &its, NULL) < 0)
            die("timerfd: %s", strerror(errno));
    }
    uv_poll_init(b->loop, &b->tick, b->tick_fd);
    b->tick.data = b;
    uv_poll_start(&b->tick, UV_READABLE, on_tick);
    schedule_due(b, b->t_start_ns);
    drain_backlog(b);
    arm_tick(b, b->t_start_ns);
}

/* ---- answers ---- */

static void count_error(struct bench *b, const char *code, size_t len)
{
    for (int i = 0; i < NCODES - 1; i++) {
        if (str_is(code, len, error_codes[i])) {
            b->c.codes[i]++;
            return;
        }
    }
    b->c.codes[CODE_OTHER]++;
}

static void on_backoff(uv_timer_t *t)
{
    struct bconn *c = t->data;
    c->backing_off = false;
    if (c->b->o.rate > 0)
        drain_backlog(c->b);
    else
        pump(c);
}

static void begin_drain(struct bench *b);

static void send_pings(struct bench *b);

static void check_finished(struct bench *b)
{
    if (b->phase == PHASE_RUN && b->o.total_events > 0 && b->o.mix[K_CHECK] == 0 &&
        b->events_accepted >= b->o.total_events && b->inflight == 0) {
        begin_drain(b);
        return;
    }
    if (b->phase != PHASE_DRAIN || b->issued < b->scheduled)
        return;
    if (b->o.notify && !b->pinged) {
        b->pinged = true;
        send_pings(b);
    }
    if (b->inflight == 0)
        finish_run(b);
}

/* A request has its answer: its slot is free again (but for the closing ping's). */
static struct slot *slot_answered(struct bconn *c, uint32_t s, uint64_t now)
{
    struct bench *b = c->b;
    struct slot *slot = &c->slots[s];
    slot->used = false;
    b->inflight--;
    b->t_last_answer_ns = now;
    if (slot->kind != K_PING)
        c->free_slots[c->nfree++] = s;
    return slot;
}

/* One whole answer [1, msgid, error, result] or notification [2, method, params]. */
static void handle_answer(struct bconn *c, const uint8_t *p, const uint8_t *end, uint64_t now)
{
    struct bench *b = c->b;
    uint64_t n, type, msgid;
    size_t hdr;
    uint64_t payload;
    if (mp_header(p, end, &hdr, &n, &payload) != 1 || (*p & 0xf0) != 0x90)
        return;
    p += hdr;
    if (!mp_uint(&p, end, &type))
        return;
    if (type == 2) {
        const char *m;
        size_t len;
        if (mp_str(&p, end, &m, &len))
            fprintf(stderr, "usage-bench: the daemon sent a notification: %.*s\n", (int)len, m);
        return;
    }
    if (type != 1 || n != 4 || !mp_uint(&p, end, &msgid))
        return;
    uint32_t s = (uint32_t)(msgid & 0xffff);
    if (s > b->o.pipeline || !c->slots[s].used || c->slots[s].seq != (uint16_t)(msgid >> 16)) {
        fprintf(stderr, "usage-bench: an answer to an unknown msgid %" PRIu64 "\n", msgid);
        return;
    }
    struct slot *slot = slot_answered(c, s, now);
    int kind = slot->kind;
    if (kind == K_PING)
        return;
    bool rec = counted(b, slot->t_ns);

    bool ok = *p == 0xc0;
    uint64_t retry_after = 0;
    if (ok) {
        p++;
    } else {
        uint64_t entries;
        const char *code = "other";
        size_t code_len = 5;
        if (mp_map(&p, end, &entries)) {
            for (uint64_t i = 0; i < entries; i++) {
                const char *k;
                size_t klen;
                if (!mp_str(&p, end, &k, &klen))
                    break;
                if (str_is(k, klen, "code")) {
                    if (!mp_str(&p, end, &code, &code_len))
                        break;
                } else if (str_is(k, klen, "retry_after_ms")) {
                    if (!mp_uint(&p, end, &retry_after))
                        break;
                } else if (mp_skip(&p, end) != 1) {
                    break;
                }
            }
        }
        if (rec) {
            b->c.errors[kind]++;
            count_error(b, code, code_len);
        }
        if (kind != K_CHECK) {
            b->events_reserved -= slot->events; /* to be sent again */
            if (str_is(code, code_len, "overloaded") && !c->backing_off) {
                c->backing_off = true;
                uv_timer_start(&c->backoff, on_backoff, retry_after ? retry_after : 10, 0);
            }
        }
    }
    if (ok) {
        if (kind == K_CHECK) {
            uint64_t entries;
            bool allowed = false, degraded = false;
            if (mp_map(&p, end, &entries)) {
                for (uint64_t i = 0; i < entries; i++) {
                    const char *k;
                    size_t klen;
                    if (!mp_str(&p, end, &k, &klen) || p >= end)
                        break;
                    if (str_is(k, klen, "allowed")) {
                        allowed = *p++ == 0xc3;
                    } else if (str_is(k, klen, "degraded")) {
                        degraded = *p++ == 0xc3;
                    } else if (mp_skip(&p, end) != 1) {
                        break;
                    }
                }
            }
            if (rec) {
                if (allowed)
                    b->c.allowed++;
                else
                    b->c.denied++;
                if (degraded)
                    b->c.degraded++;
            }
        } else {
            b->events_accepted += slot->events;
            if (rec)
                b->c.events[kind] += slot->events;
        }
        if (rec)
            b->c.ok[kind]++;
    }
    if (rec)
        hist_record(&b->c.lat[kind], now > slot->t_ns ? now - slot->t_ns : 0);
}

/* The oldest request of a connection, answered. */
static struct slot *redis_pop(struct bconn *c, uint64_t now)
{
    uint32_t s = c->fifo[c->fifo_head];
    c->fifo_head = (c->fifo_head + 1) % c->b->o.pipeline;
    c->fifo_len--;
    return slot_answered(c, s, now);
}

/* One whole reply of Redis to the oldest call of the connection: the check script's {now_ms,
 * then per check: 0 allowed or 1 denied, and each rule's count}, or an error. */
static void handle_redis_reply(struct bconn *c, const uint8_t *p, const uint8_t *end, uint64_t now)
{
    struct bench *b = c->b;
    if (c->fifo_len == 0 || c->fifo_len < c->slots[c->fifo[c->fifo_head]].events) {
        fprintf(stderr, "usage-bench: Redis sent a reply to no request\n");
        b->failed = true;
        return;
    }
    const uint8_t *reply = p;
    uint32_t k = c->slots[c->fifo[c->fifo_head]].events;
    uint32_t rules = b->redis_call->rules;
    int64_t n, now_ms, deny, count;
    /* Per check: its status, each rule's count, the rules it alerted (a string). */
    bool ok = resp_array(&p, end, &n) == 1 && n == 1 + (2 + (int64_t)rules) * k &&
              resp_integer(&p, end, &now_ms) == 1;
    for (uint32_t j = 0; j < k; j++) {
        struct slot *slot = redis_pop(c, now);
        /* A key Redis refuses to count answers -1 and an error string in place of a count. */
        ok = ok && resp_integer(&p, end, &deny) == 1 && deny >= 0;
        for (uint32_t i = 0; i < rules; i++)
            ok = ok && resp_integer(&p, end, &count) == 1;
        ok = ok && resp_skip(&p, end) == 1;
        if (!counted(b, slot->t_ns))
            continue;
        if (ok) {
            b->c.ok[K_CHECK]++;
            if (deny == 0)
                b->c.allowed++;
            else
                b->c.denied++;
        } else {
            b->c.errors[K_CHECK]++;
            b->c.codes[CODE_OTHER]++;
        }
        hist_record(&b->c.lat[K_CHECK], now > slot->t_ns ? now - slot->t_ns : 0);
    }
    if (!ok) {
        /* NOSCRIPT (the script is not loaded), a wrong type, ...: the run measures nothing. */
        const uint8_t *cr = memchr(reply, '\r', (size_t)(end - reply));
        if (!b->failed)
            fprintf(stderr, "usage-bench: Redis answered %.*s\n", cr ? (int)(cr - reply) : 0,
                    (const char *)reply);
        b->failed = true;
    }
}

/* The requests of a connection that will never be answered (it closed, or the wait after the
 * run is over): measured ones count as unanswered, and in the open loop as late as they are
 * now, so that a lost request is not a fast one. */
static void give_up_on(struct bconn *c, uint64_t now)
{
    struct bench *b = c->b;
    for (uint32_t i = 0; i <= b->o.pipeline; i++) {
        struct slot *slot = &c->slots[i];
        if (!slot->used)
            continue;
        slot->used = false;
        b->inflight--;
        if (slot->kind == K_PING || !counted(b, slot->t_ns))
            continue;
        b->c.unanswered++;
        if (b->o.rate > 0)
            hist_record(&b->c.lat[slot->kind], now > slot->t_ns ? now - slot->t_ns : 0);
    }
    c->fifo_len = 0;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct bconn *c = h->data;
    if (c->in_cap - c->in_len < READ_CHUNK) {
        c->in_cap = c->in_len + READ_CHUNK;
        c->in = xrealloc(c->in, c->in_cap);
    }
    *buf = uv_buf_init((char *)c->in + c->in_len, (unsigned)(c->in_cap - c->in_len));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    struct bconn *c = s->data;
    struct bench *b = c->b;
    if (nread == 0)
        return;
    if (nread < 0) {
        if (!c->closed && b->phase == PHASE_RUN) {
            fprintf(stderr, "usage-bench: the %s closed a connection: %s\n",
                    b->o.redis ? "Redis server" : "daemon", uv_strerror((int)nread));
            b->failed = true;
        }
        uv_read_stop(s);
        c->closed = true;
        give_up_on(c, mono_ns()); /* its requests will never be answered */
        check_finished(b);
        return;
    }
    c->in_len += (size_t)nread;
    uint64_t now = mono_ns();
    const uint8_t *p = c->in, *end = c->in + c->in_len;
    while (p < end) {
        const uint8_t *q = p;
        int r = b->o.redis ? resp_skip(&q, end) : mp_skip(&q, end);
        if (r == 0)
            break;
        if (r < 0) {
            fprintf(stderr, "usage-bench: the %s sent bytes that are not %s\n",
                    b->o.redis ? "Redis server" : "daemon", b->o.redis ? "RESP" : "MessagePack");
            b->failed = true;
            p = end;
            break;
        }
        if (b->o.redis)
            handle_redis_reply(c, p, q, now);
        else
            handle_answer(c, p, q, now);
        p = q;
    }
    size_t used = (size_t)(p - c->in);
    memmove(c->in, p, c->in_len - used);
    c->in_len -= used;
    if (b->o.rate > 0)
        drain_backlog(b);
    else
        pump(c);
    check_finished(b);
}

/* ---- phases ---- */

static void stop_loop_handles(struct bench *b)
{
    if (b->o.rate > 0)
        uv_poll_stop(&b->tick);
    uv_timer_stop(&b->phase_timer);
    for (uint32_t i = 0; i < b->o.connections; i++) {
        struct bconn *c = &b->conns[i];
        uv_timer_stop(&c->backoff);
        if (!uv_is_closing(&c->h.handle))
            uv_close(&c->h.handle, NULL);
        if (!uv_is_closing((uv_handle_t *)&c->backoff))
            uv_close((uv_handle_t *)&c->backoff, NULL);
        c->closed = true;
    }
    if (b->o.rate > 0)
        uv_close((uv_handle_t *)&b->tick, NULL);
    uv_close((uv_handle_t *)&b->phase_timer, NULL);
}

static void finish_run(struct bench *b)
{
    if (b->phase == PHASE_DONE)
        return;
    if (b->recording) {
        b->t_end_ns = mono_ns();
        b->recording = false;
    }
    b->phase = PHASE_DONE;
    stop_loop_handles(b);
}

static void on_drain_timeout(uv_timer_t *t)
{
    struct bench *b = t->data;
    uint64_t now = mono_ns();
    fprintf(stderr,
            "usage-bench: %" PRIu64 " requests still unanswered and %" PRIu64
            " not sent after the run\n",
            b->inflight, b->scheduled - b->issued);
    if (b->phase == PHASE_RUN)
        b->failed = true; /* --total-events not reached within --duration */
    for (uint32_t i = 0; i < b->o.connections; i++)
        give_up_on(&b->conns[i], now);
    for (; b->issued < b->scheduled; b->issued++) {
        uint64_t due = due_ns(b, b->issued);
        int kind = pick_kind(b);
        if (!is_request(b, kind) || !counted(b, due))
            continue;
        b->c.unanswered++;
        hist_record(&b->c.lat[kind], now > due ? now - due : 0);
    }
    finish_run(b);
}

static void on_phase_timer(uv_timer_t *t);

static void start_measuring(struct bench *b)
{
    memset(&b->c, 0, sizeof(b->c));
    b->recording = true;
    b->t_measure_ns = mono_ns();
    sample_processes(b, &b->d0, b->w0, &b->self0, &b->d0_ns);
}

/* Notifications have no answer: a ping behind them on each connection is answered once the
 * daemon has taken everything sent before it. */
static void send_pings(struct bench *b)
{
    for (uint32_t i = 0; i < b->o.connections; i++) {
        struct bconn *c = &b->conns[i];
        if (!c->connected || c->closed)
            continue;
        uint32_t s = b->o.pipeline;
        struct slot *slot = &c->slots[s];
        slot->used = true;
        slot->kind = K_PING;
        slot->t_ns = mono_ns();
        slot->seq = ++c->seq;
        msgpack_packer pk;
        msgpack_packer_init(&pk, &c->out, obuf_write);
        msgpack_pack_array(&pk, 4);
        msgpack_pack_uint8(&pk, 0);
        msgpack_pack_uint32(&pk, (uint32_t)slot->seq << 16 | s);
        msgpack_pack_str_with_body(&pk, "ping", 4);
        msgpack_pack_array(&pk, 0);
        b->inflight++;
        conn_flush(c);
    }
}

/* No more new work: in the open loop, send what fell due before the window ended; then wait
 * for every answer (10 s at most). */
static void begin_drain(struct bench *b)
{
    if (b->phase != PHASE_RUN)
        return;
    if (b->o.rate > 0) {
        schedule_due(b, b->t_end_ns ? b->t_end_ns : mono_ns());
        uv_poll_stop(&b->tick);
    }
    b->phase = PHASE_DRAIN;
    uv_timer_start(&b->phase_timer, on_drain_timeout, 10000, 0);
    if (b->o.rate > 0)
        drain_backlog(b);
    else
        check_finished(b);
}

static void on_phase_timer(uv_timer_t *t)
{
    struct bench *b = t->data;
    if (b->phase != PHASE_RUN)
        return;
    if (!b->recording) {
        start_measuring(b);
        uv_timer_start(&b->phase_timer, on_phase_timer, (uint64_t)(b->o.duration_s * 1000.0 + 0.5),
                       0);
        return;
    }
    /* The window is over: answers after now are not counted. */
    b->t_end_ns = mono_ns();
    b->recording = false;
    sample_processes(b, &b->d1, b->w1, &b->self1, &b->d1_ns);
    begin_drain(b);
}

static void start_run(struct bench *b)
{
    b->phase = PHASE_RUN;
    b->t_start_ns = mono_ns();
    if (b->o.total_events > 0 || b->o.warmup_s <= 0) {
        start_measuring(b);
        b->t_measure_ns = b->t_start_ns;
        if (b->o.total_events == 0 || b->o.mix[K_CHECK] > 0)
            uv_timer_start(&b->phase_timer, on_phase_timer,
                           (uint64_t)(b->o.duration_s * 1000.0 + 0.5), 0);
        else
            uv_timer_start(&b->phase_timer, on_drain_timeout,
                           (uint64_t)(b->o.duration_s * 1000.0 + 0.5), 0);
    } else {
        uv_timer_start(&b->phase_timer, on_phase_timer, (uint64_t)(b->o.warmup_s * 1000.0 + 0.5),
                       0);
    }
    if (b->o.rate > 0) {
        start_ticking(b);
    } else {
        for (uint32_t i = 0; i < b->o.connections; i++)
            pump(&b->conns[i]);
    }
}

static void on_connect(uv_connect_t *req, int status)
{
    struct bconn *c = req->data;
    struct bench *b = c->b;
    if (status < 0)
        die("cannot connect to %s: %s", b->o.socket_path ? b->o.socket_path : b->o.tcp,
            uv_strerror(status));
    c->connected = true;
    int rc = uv_read_start(&c->h.stream, on_alloc, on_read);
    if (rc < 0)
        die("cannot read: %s", uv_strerror(rc));
    if (++b->connected == b->o.connections)
        start_run(b);
}

static void parse_host_port(const char *s, struct sockaddr_storage *ss)
{
    const char *colon = strrchr(s, ':');
    if (!colon)
        die("--tcp takes HOST:PORT");
    char host[256];
    size_t n = (size_t)(colon - s);
    if (n >= sizeof(host))
        die("--tcp: host too long");
    memcpy(host, s, n);
    host[n] = '\0';
    if (strcmp(host, "localhost") == 0)
        snprintf(host, sizeof(host), "127.0.0.1");
    int port = atoi(colon + 1);
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) != 0)
        die("--tcp: %s is not an IP address", host);
}

static void connect_all(struct bench *b)
{
    b->conns = xcalloc(b->o.connections, sizeof(*b->conns));
    struct sockaddr_storage ss;
    if (b->o.tcp)
        parse_host_port(b->o.tcp, &ss);
    for (uint32_t i = 0; i < b->o.connections; i++) {
        struct bconn *c = &b->conns[i];
        c->b = b;
        /* One slot more than the pipeline: the last is the closing ping's. */
        c->slots = xcalloc(b->o.pipeline + 1, sizeof(*c->slots));
        c->free_slots = xmalloc(b->o.pipeline * sizeof(*c->free_slots));
        for (uint32_t s = 0; s < b->o.pipeline; s++)
            c->free_slots[s] = b->o.pipeline - 1 - s;
        c->nfree = b->o.pipeline;
        if (b->o.redis)
            c->fifo = xmalloc(b->o.pipeline * sizeof(*c->fifo));
        c->next_kind = pick_kind(b);
        c->connect_req.data = c;
        uv_timer_init(b->loop, &c->backoff);
        c->backoff.data = c;
        if (b->o.tcp) {
            uv_tcp_init(b->loop, &c->h.tcp);
            uv_tcp_nodelay(&c->h.tcp, 1);
            c->h.handle.data = c;
            int rc = uv_tcp_connect(&c->connect_req, &c->h.tcp, (struct sockaddr *)&ss, on_connect);
            if (rc < 0)
                die("cannot connect to %s: %s", b->o.tcp, uv_strerror(rc));
        } else {
            uv_pipe_init(b->loop, &c->h.pipe, 0);
            c->h.handle.data = c;
            uv_pipe_connect(&c->connect_req, &c->h.pipe, b->o.socket_path, on_connect);
        }
    }
}

/* ---- outside the loop: PostgreSQL, the daemon's stats, /proc ---- */

static PGconn *pg_open(const char *conninfo)
{
    PGconn *pg = PQconnectdb(conninfo);
    if (PQstatus(pg) != CONNECTION_OK)
        die("postgres: %s", PQerrorMessage(pg));
    return pg;
}

static int64_t pg_count(PGconn *pg, const char *table)
{
    char sql[128];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s", table);
    PGresult *r = PQexec(pg, sql);
    int64_t n = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
        n = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    else
        fprintf(stderr, "usage-bench: postgres: %s", PQerrorMessage(pg));
    PQclear(r);
    return n;
}

/* rows_written of both tables, from the daemon's stats; false when it cannot be read. */
static bool daemon_rows_written(const struct options *o, uint64_t written[2])
{
    int fd = -1;
    if (o->socket_path) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", o->socket_path);
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
            if (fd >= 0)
                close(fd);
            return false;
        }
    } else {
        struct sockaddr_storage ss;
        parse_host_port(o->tcp, &ss);
        fd = socket(ss.ss_family, SOCK_STREAM, 0);
        socklen_t len =
            ss.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
        if (fd < 0 || connect(fd, (struct sockaddr *)&ss, len) < 0) {
            if (fd >= 0)
                close(fd);
            return false;
        }
    }
    static const uint8_t req[] = {0x94, 0x00, 0x01, 0xa5, 's', 't', 'a', 't', 's', 0x90};
    bool ok = false;
    if (write(fd, req, sizeof(req)) == (ssize_t)sizeof(req)) {
        msgpack_unpacker up;
        msgpack_unpacked res;
        msgpack_unpacker_init(&up, 1 << 16);
        msgpack_unpacked_init(&res);
        for (;;) {
            msgpack_unpacker_reserve_buffer(&up, 1 << 16);
            ssize_t n = read(fd, msgpack_unpacker_buffer(&up), 1 << 16);
            if (n <= 0)
                break;
            msgpack_unpacker_buffer_consumed(&up, (size_t)n);
            if (msgpack_unpacker_next(&up, &res) != MSGPACK_UNPACK_SUCCESS)
                continue;
            const msgpack_object *m = &res.data;
            if (m->type != MSGPACK_OBJECT_ARRAY || m->via.array.size != 4)
                break;
            const msgpack_object *v = &m->via.array.ptr[3];
            const char *path[] = {"ingest", "tables"};
            for (int d = 0; d < 2 && v; d++) {
                const msgpack_object *next = NULL;
                if (v->type == MSGPACK_OBJECT_MAP)
                    for (uint32_t i = 0; i < v->via.map.size; i++)
                        if (v->via.map.ptr[i].key.type == MSGPACK_OBJECT_STR &&
                            str_is(v->via.map.ptr[i].key.via.str.ptr,
                                   v->via.map.ptr[i].key.via.str.size, path[d]))
                            next = &v->via.map.ptr[i].val;
                v = next;
            }
            if (!v || v->type != MSGPACK_OBJECT_MAP)
                break;
            for (uint32_t i = 0; i < v->via.map.size; i++) {
                const msgpack_object *k = &v->via.map.ptr[i].key, *t = &v->via.map.ptr[i].val;
                int idx = k->type == MSGPACK_OBJECT_STR &&
                                  str_is(k->via.str.ptr, k->via.str.size, "api_usage_logs")
                              ? 0
                              : 1;
                if (t->type != MSGPACK_OBJECT_MAP)
                    continue;
                for (uint32_t j = 0; j < t->via.map.size; j++) {
                    const msgpack_object *tk = &t->via.map.ptr[j].key;
                    if (tk->type == MSGPACK_OBJECT_STR &&
                        str_is(tk->via.str.ptr, tk->via.str.size, "rows_written") &&
                        t->via.map.ptr[j].val.type == MSGPACK_OBJECT_POSITIVE_INTEGER)
                        written[idx] = t->via.map.ptr[j].val.via.u64;
                }
            }
            ok = true;
            break;
        }
        msgpack_unpacked_destroy(&res);
        msgpack_unpacker_destroy(&up);
    }
    close(fd);
    return ok;
}

static struct proc_sample proc_read(int pid)
{
    struct proc_sample s = {0};
    char path[64], buf[4096];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return s;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* Fields after the command (which may hold spaces) start after the last ')'. */
    char *p = strrchr(buf, ')');
    if (!p)
        return s;
    unsigned long long utime = 0, stime = 0;
    /* state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
        return s;
    s.cpu_s = (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
    /* The time the main thread (the event loop) spent runnable without a CPU: on a machine whose
     * cores are shared, the latency the process could not help. */
    snprintf(path, sizeof(path), "/proc/%d/schedstat", pid);
    f = fopen(path, "r");
    if (f) {
        unsigned long long on_cpu, delay;
        if (fscanf(f, "%llu %llu", &on_cpu, &delay) == 2)
            s.wait_s = (double)delay / 1e9;
        fclose(f);
    }
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    f = fopen(path, "r");
    if (f) {
        while (fgets(buf, sizeof(buf), f)) {
            unsigned long long v;
            if (sscanf(buf, "VmHWM: %llu kB", &v) == 1)
                s.hwm_kib = v;
            else if (sscanf(buf, "VmRSS: %llu kB", &v) == 1)
                s.rss_kib = v;
        }
        fclose(f);
    }
    s.ok = true;
    return s;
}

static struct proc_sample watch_sample(const struct options *o, int w)
{
    struct proc_sample sum = {.ok = true};
    for (int i = 0; i < o->watch[w].npids; i++) {
        struct proc_sample s = proc_read(o->watch[w].pids[i]);
        if (s.ok) {
            sum.cpu_s += s.cpu_s;
            sum.wait_s += s.wait_s;
        }
    }
    return sum;
}

static void sample_processes(struct bench *b, struct proc_sample *d, struct proc_sample *w,
                             struct proc_sample *self, uint64_t *t_ns)
{
    *t_ns = mono_ns();
    if (b->o.pid)
        *d = proc_read(b->o.pid);
    for (int i = 0; i < b->o.nwatch; i++)
        w[i] = watch_sample(&b->o, i);
    *self = proc_read(getpid());
}

static double self_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* ---- CSV ---- */

static void csv_text(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"')
            fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static void format_ts(uint64_t ms, char *out, size_t cap)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    size_t n = strftime(out, cap, "%Y-%m-%d %H:%M:%S", &tm);
    snprintf(out + n, cap - n, ".%03u+00", (unsigned)(ms % 1000));
}

static int emit_csv(struct bench *b)
{
    FILE *f = strcmp(b->o.emit_csv, "-") == 0 ? stdout : fopen(b->o.emit_csv, "w");
    if (!f)
        die("%s: %s", b->o.emit_csv, strerror(errno));
    static char fbuf[1 << 20];
    setvbuf(f, fbuf, _IOFBF, sizeof(fbuf));
    if (b->o.client_ids)
        fputs("id,", f);
    fputs("user_id,provider,endpoint,request_size,response_size,response_time_ms,status_code,"
          "error_message,created_at\n",
          f);
    uint64_t last_ms = 0;
    char ts[48] = "";
    for (uint64_t i = 0; i < b->o.csv_rows; i++) {
        struct gen_usage u;
        gen_usage(&b->gen, &u);
        uint64_t now = wall_ms();
        if (now != last_ms) {
            format_ts(now, ts, sizeof(ts));
            last_ms = now;
        }
        char user[GEN_UUID_LEN + 1];
        gen_user_id(u.user, user);
        if (b->o.client_ids) {
            char id[GEN_UUID_LEN + 1];
            gen_uuid_v7(&b->gen, now, id);
            /* created_at: the id's own time, as the daemon derives it */
            char its[48];
            format_ts(b->gen.v7_last_ms, its, sizeof(its));
            fprintf(f, "%s,%s,%s,%s,%d,%d,%d,%d,", id, user, b->gen.providers[u.provider],
                    u.endpoint, u.request_size, u.response_size, u.response_time_ms, u.status_code);
            if (u.error_message)
                csv_text(f, u.error_message);
            fprintf(f, ",%s\n", its);
            continue;
        }
        fprintf(f, "%s,%s,%s,%d,%d,%d,%d,", user, b->gen.providers[u.provider], u.endpoint,
                u.request_size, u.response_size, u.response_time_ms, u.status_code);
        if (u.error_message)
            csv_text(f, u.error_message);
        fprintf(f, ",%s\n", ts);
    }
    if (f != stdout && fclose(f) != 0)
        die("%s: %s", b->o.emit_csv, strerror(errno));
    if (f == stdout)
        fflush(f);
    return 0;
}

/* ---- report ---- */

struct result {
    double window_s;
    double requests_per_s, events_per_s, checks_per_s, notifications_per_s;
    uint64_t requests_ok, requests_err, notifications;
    bool have_pg;
    int64_t rows_before[2], rows_after[2];
    double commit_s; /* from the first send to all rows committed (or the count after) */
    bool all_committed;
    bool have_pid;
    double sampled_s; /* between the two samples of the processes */
    double client_cpu_s;
    struct hist all;
};

static void print_lat_row(const char *name, const struct hist *h)
{
    if (h->total == 0)
        return;
    printf("  %-11s %10" PRIu64 " %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f\n", name, h->total,
           (double)hist_quantile(h, 0.5) / 1e3, (double)hist_quantile(h, 0.9) / 1e3,
           (double)hist_quantile(h, 0.99) / 1e3, (double)hist_quantile(h, 0.999) / 1e3,
           (double)h->max / 1e3, hist_mean(h) / 1e3);
}

static void json_lat(const char *name, const struct hist *h, bool comma)
{
    printf("\"%s\": {\"count\": %" PRIu64 ", \"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, "
           "\"p999\": %.1f, \"p9999\": %.1f, \"max\": %.1f, \"mean\": %.1f}%s",
           name, h->total, (double)hist_quantile(h, 0.5) / 1e3, (double)hist_quantile(h, 0.9) / 1e3,
           (double)hist_quantile(h, 0.99) / 1e3, (double)hist_quantile(h, 0.999) / 1e3,
           (double)hist_quantile(h, 0.9999) / 1e3, (double)h->max / 1e3, hist_mean(h) / 1e3,
           comma ? ", " : "");
}

static void mix_string(const struct options *o, char *out, size_t cap)
{
    size_t n = 0;
    out[0] = '\0';
    for (int k = 0; k < K_COUNT; k++)
        if (o->mix[k] && n < cap)
            n += (size_t)snprintf(out + n, cap - n, "%s%s=%u", n ? "," : "", kind_names[k],
                                  o->mix[k]);
}

static void report(const struct bench *b, const struct result *r)
{
    const struct options *o = &b->o;
    double sampled = r->sampled_s > 0 ? r->sampled_s : 1e-9;
    char mix[128];
    mix_string(o, mix, sizeof(mix));
    double rows_committed = 0;
    if (r->have_pg)
        rows_committed =
            (double)(r->rows_after[0] - r->rows_before[0] + r->rows_after[1] - r->rows_before[1]);
    if (o->json) {
        printf("{\"label\": \"%s\", \"target\": \"%s\", \"connections\": %u, \"pipeline\": %u, "
               "\"mix\": \"%s\", "
               "\"events_per_request\": %u, \"ack\": \"%s\", \"notify\": %s, \"rate\": %.0f, "
               "\"window_s\": %.3f, ",
               o->label ? o->label : "", o->redis ? "redis" : "usaged", o->connections, o->pipeline,
               mix, o->events_per_request, o->ack ? o->ack : "default",
               o->notify ? "true" : "false", o->rate, r->window_s);
        printf("\"requests_ok\": %" PRIu64 ", \"requests_err\": %" PRIu64
               ", \"notifications\": %" PRIu64 ", \"requests_per_s\": %.1f, \"events_per_s\": "
               "%.1f, \"checks_per_s\": %.1f, \"notifications_per_s\": %.1f, ",
               r->requests_ok, r->requests_err, r->notifications, r->requests_per_s,
               r->events_per_s, r->checks_per_s, r->notifications_per_s);
        printf("\"checks\": {\"allowed\": %" PRIu64 ", \"denied\": %" PRIu64
               ", \"degraded\": %" PRIu64 "}, ",
               b->c.allowed, b->c.denied, b->c.degraded);
        printf("\"errors\": {");
        bool first = true;
        for (int i = 0; i < NCODES; i++)
            if (b->c.codes[i]) {
                printf("%s\"%s\": %" PRIu64, first ? "" : ", ", error_codes[i], b->c.codes[i]);
                first = false;
            }
        printf("}, \"latency_us\": {");
        json_lat("all", &r->all, true);
        for (int k = 0; k < K_COUNT; k++)
            json_lat(kind_names[k], &b->c.lat[k], k < K_COUNT - 1);
        printf("}, ");
        if (o->rate > 0) {
            printf("\"open_loop\": {\"tick_us\": %u, \"unanswered\": %" PRIu64
                   ", \"max_backlog\": %" PRIu64 ", ",
                   o->tick_us, b->c.unanswered, b->max_backlog);
            json_lat("send_lag_us", &b->c.send_lag, false);
            printf("}, ");
        }
        if (r->have_pg)
            printf("\"postgres\": {\"rows_before\": %" PRId64 ", \"rows_after\": %" PRId64
                   ", \"prompt_rows_before\": %" PRId64 ", \"prompt_rows_after\": %" PRId64
                   ", \"rows_committed\": %.0f, \"commit_s\": %.3f, \"all_committed\": %s, "
                   "\"committed_per_s\": %.1f}, ",
                   r->rows_before[0], r->rows_after[0], r->rows_before[1], r->rows_after[1],
                   rows_committed, r->commit_s, r->all_committed ? "true" : "false",
                   r->commit_s > 0 ? rows_committed / r->commit_s : 0.0);
        if (r->have_pid)
            printf("\"daemon\": {\"pid\": %d, \"peak_rss_kib\": %" PRIu64 ", \"rss_kib\": %" PRIu64
                   ", \"cpu_s\": %.2f, \"cpu_pct\": %.1f, \"wait_s\": %.3f}, ",
                   o->pid, b->d1.hwm_kib, b->d1.rss_kib, b->d1.cpu_s - b->d0.cpu_s,
                   100.0 * (b->d1.cpu_s - b->d0.cpu_s) / sampled, b->d1.wait_s - b->d0.wait_s);
        printf("\"watch\": {");
        for (int w = 0; w < o->nwatch; w++)
            printf("%s\"%s\": {\"cpu_s\": %.2f, \"cpu_pct\": %.1f, \"wait_s\": %.3f}",
                   w ? ", " : "", o->watch[w].name, b->w1[w].cpu_s - b->w0[w].cpu_s,
                   100.0 * (b->w1[w].cpu_s - b->w0[w].cpu_s) / sampled,
                   b->w1[w].wait_s - b->w0[w].wait_s);
        printf("}, \"client_cpu_s\": %.2f, \"client\": {\"cpu_pct\": %.1f, \"wait_s\": %.3f}, "
               "\"failed\": %s}\n",
               r->client_cpu_s, 100.0 * (b->self1.cpu_s - b->self0.cpu_s) / sampled,
               b->self1.wait_s - b->self0.wait_s, b->failed ? "true" : "false");
        return;
    }
    printf("usage-bench%s%s: %u connections x pipeline %u over %s%s, mix %s", o->label ? " " : "",
           o->label ? o->label : "", o->connections, o->pipeline,
           o->socket_path ? o->socket_path : o->tcp,
           o->redis ? " (Redis itself: EVALSHA of the check script)" : "", mix);
    if (o->mix[K_USAGE] || o->mix[K_PROMPT])
        printf(", %u events/request, ack %s%s", o->events_per_request, o->ack ? o->ack : "default",
               o->notify ? ", as notifications" : "");
    if (o->rate > 0)
        printf(", open loop at %.0f/s", o->rate);
    else
        printf(", closed loop");
    printf("\nwindow: %.2f s\n", r->window_s);
    if (o->rate > 0)
        printf("due in the window: %" PRIu64 " requests, of which %" PRIu64 " answered (%" PRIu64
               " with an error) by %.2f s after the window began\n",
               r->all.total + r->notifications, r->requests_ok + r->requests_err, r->requests_err,
               b->t_last_answer_ns > b->t_measure_ns ? secs(b->t_last_answer_ns - b->t_measure_ns)
                                                     : 0.0);
    printf("%s: %.0f requests/s, %.0f events/s, %.0f checks/s",
           o->rate > 0 ? "per second of the window" : "throughput", r->requests_per_s,
           r->events_per_s, r->checks_per_s);
    if (r->notifications)
        printf(", %.0f notifications/s", r->notifications_per_s);
    printf("\n");
    if (b->c.allowed + b->c.denied)
        printf("checks: %" PRIu64 " allowed, %" PRIu64 " denied, %" PRIu64 " degraded\n",
               b->c.allowed, b->c.denied, b->c.degraded);
    bool any = false;
    for (int i = 0; i < NCODES; i++)
        if (b->c.codes[i]) {
            printf("%s%s=%" PRIu64, any ? " " : "errors: ", error_codes[i], b->c.codes[i]);
            any = true;
        }
    if (any)
        printf("\n");
    if (r->all.total) {
        printf("latency (us)    count       p50       p90       p99     p99.9       max      "
               "mean\n");
        print_lat_row("all", &r->all);
        for (int k = 0; k < K_COUNT; k++)
            if (b->c.lat[k].total && b->c.lat[k].total != r->all.total)
                print_lat_row(kind_names[k], &b->c.lat[k]);
        if (o->rate > 0)
            print_lat_row("send lag", &b->c.send_lag);
    }
    if (o->rate > 0) {
        if (b->c.unanswered)
            printf("unanswered: %" PRIu64 " requests (counted as late as the wait lasted)\n",
                   b->c.unanswered);
        printf("(latency from when each request was due; send lag: due -> handed to the socket, "
               "the client's own part; at most %" PRIu64 " requests waited to be sent)\n",
               b->max_backlog);
    }
    if (r->have_pg) {
        printf("postgres: %.0f rows committed (api_usage_logs %+" PRId64 ", prompt_history "
               "%+" PRId64 ") in %.2f s = %.0f rows/s%s\n",
               rows_committed, r->rows_after[0] - r->rows_before[0],
               r->rows_after[1] - r->rows_before[1], r->commit_s,
               r->commit_s > 0 ? rows_committed / r->commit_s : 0.0,
               o->wait_committed_s > 0
                   ? (r->all_committed ? " (all committed)" : " (NOT all committed in time)")
                   : "");
    }
    if (r->have_pid)
        printf("daemon pid %d: peak RSS %.1f MiB (now %.1f MiB), CPU %.2f s (%.0f%% of a core), "
               "waited %.0f ms for a CPU\n",
               o->pid, (double)b->d1.hwm_kib / 1024.0, (double)b->d1.rss_kib / 1024.0,
               b->d1.cpu_s - b->d0.cpu_s, 100.0 * (b->d1.cpu_s - b->d0.cpu_s) / sampled,
               1e3 * (b->d1.wait_s - b->d0.wait_s));
    for (int w = 0; w < o->nwatch; w++)
        printf("%s: CPU %.2f s (%.0f%% of a core), waited %.0f ms for a CPU\n", o->watch[w].name,
               b->w1[w].cpu_s - b->w0[w].cpu_s, 100.0 * (b->w1[w].cpu_s - b->w0[w].cpu_s) / sampled,
               1e3 * (b->w1[w].wait_s - b->w0[w].wait_s));
    printf("client: CPU %.2f s, waited %.0f ms for a CPU in the window\n", r->client_cpu_s,
           1e3 * (b->self1.wait_s - b->self0.wait_s));
}

/* ---- options ---- */

static void usage(FILE *f)
{
    fputs("usage: usage-bench (-s SOCKET | -t HOST:PORT) [options]\n"
          "       usage-bench --redis (unix:PATH | HOST:PORT) --evalsha SHA [options]\n"
          "       usage-bench --emit-csv FILE --rows N [--users N] [--providers LIST] "
          "[--client-ids]\n"
          "\n"
          "  -s, --socket PATH          the daemon's Unix socket\n"
          "  -t, --tcp HOST:PORT        or its TCP listener\n"
          "  -c, --connections N        connections (default 16)\n"
          "  -p, --pipeline N           requests in flight per connection (default 16)\n"
          "  -m, --mix SPEC             e.g. check=50,log_usage=40,log_prompt=10 (default "
          "check=100)\n"
          "  -e, --events-per-request N events per log request (default 10)\n"
          "      --ack queued|durable   ack asked of log requests (default: the daemon's)\n"
          "      --notify               send log_usage/log_prompt as notifications\n"
          "  -u, --users N              users b0000000-0000-4000-8000-<i> (default 1000)\n"
          "  -P, --providers LIST       (default openai,anthropic,google,mistral,groq)\n"
          "      --cost N               cost sent with each check (default: not sent, 1)\n"
          "      --tokens N             tokens sent with each check (default: not sent)\n"
          "      --spend USD            spend sent with each check (default: not sent)\n"
          "  -r, --rate N               open loop: total requests per second, latency from\n"
          "                             when each was due (default 0: closed loop)\n"
          "      --tick-us N            open loop: shortest wait between wake-ups (default 20)\n"
          "  -d, --duration S           measured seconds (default 10)\n"
          "  -w, --warmup S             seconds before measuring (default 1)\n"
          "      --total-events N       stop once N log events were accepted (ingest runs)\n"
          "      --wait-committed S     then wait up to S s until all are committed\n"
          "      --pid PID              the daemon: peak RSS (VmHWM) and CPU seconds\n"
          "      --watch NAME=PID[,PID] CPU seconds of other processes (e.g. redis)\n"
          "      --pg CONNINFO          count rows in PostgreSQL before and after\n"
          "      --client-ids           send a UUIDv7 id with every event\n"
          "      --prompt-chars IN,OUT  lengths of user_input and ai_response (default 300,1200)\n"
          "      --seed N               random seed (default 1)\n"
          "      --label TEXT           a name for this run in the report\n"
          "      --json                 one JSON object instead of text\n"
          "      --emit-csv FILE        write --rows usage rows as CSV (for psql \\copy) and exit\n"
          "      --rows N\n"
          "\n"
          "  Redis itself, with the daemon's check script (checks only):\n"
          "      --redis ADDR           unix:PATH or HOST:PORT of Redis\n"
          "      --evalsha SHA          the script's sha1 (SCRIPT LOAD of bench/limiter-script)\n"
          "      --redis-limits M,D     the provider's requests per minute and per day, the\n"
          "                             rules the daemon sends (-1: unlimited, no rule;\n"
          "                             default 2000000000,2100000000)\n"
          "      --key-prefix TEXT      the daemon's redis.key_prefix (default usaged:)\n"
          "      --redis-batch N        at most N checks in one call, of those due together\n"
          "                             (the daemon batches a loop iteration's checks, a key's\n"
          "                             in one part of the call; default 1: a call per check)\n",
          f);
}

static uint64_t parse_u64(const char *s, const char *what)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-')
        die("%s: not a number: %s", what, s);
    return v;
}

static double parse_double(const char *s, const char *what)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || v < 0 || !isfinite(v))
        die("%s: not a number: %s", what, s);
    return v;
}

static void parse_mix(struct options *o, const char *spec)
{
    memset(o->mix, 0, sizeof(o->mix));
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", spec);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        if (!eq)
            die("--mix: expected NAME=WEIGHT, got %s", tok);
        *eq = '\0';
        int k;
        for (k = 0; k < K_COUNT; k++)
            if (strcmp(tok, kind_names[k]) == 0)
                break;
        if (k == K_COUNT)
            die("--mix: unknown method %s (check, log_usage, log_prompt)", tok);
        o->mix[k] = (uint32_t)parse_u64(eq + 1, "--mix");
    }
}

static void parse_watch(struct options *o, const char *spec)
{
    if (o->nwatch == MAX_WATCH)
        die("--watch: at most %d", MAX_WATCH);
    const char *eq = strchr(spec, '=');
    if (!eq)
        die("--watch takes NAME=PID[,PID...]");
    char *name = xmalloc((size_t)(eq - spec) + 1);
    memcpy(name, spec, (size_t)(eq - spec));
    name[eq - spec] = '\0';
    o->watch[o->nwatch].name = name;
    char buf[512];
    snprintf(buf, sizeof(buf), "%s", eq + 1);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        if (o->watch[o->nwatch].npids == 16)
            break;
        o->watch[o->nwatch].pids[o->watch[o->nwatch].npids++] = (int)parse_u64(tok, "--watch");
    }
    o->nwatch++;
}

enum {
    OPT_ACK = 256,
    OPT_NOTIFY,
    OPT_COST,
    OPT_TOKENS,
    OPT_SPEND,
    OPT_TOTAL_EVENTS,
    OPT_WAIT_COMMITTED,
    OPT_PID,
    OPT_WATCH,
    OPT_PG,
    OPT_JSON,
    OPT_SEED,
    OPT_CLIENT_IDS,
    OPT_PROMPT_CHARS,
    OPT_EMIT_CSV,
    OPT_ROWS,
    OPT_LABEL,
    OPT_REDIS,
    OPT_EVALSHA,
    OPT_REDIS_LIMITS,
    OPT_KEY_PREFIX,
    OPT_TICK_US,
    OPT_REDIS_BATCH,
};

static void parse_options(struct options *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"socket", required_argument, NULL, 's'},
        {"tcp", required_argument, NULL, 't'},
        {"connections", required_argument, NULL, 'c'},
        {"pipeline", required_argument, NULL, 'p'},
        {"mix", required_argument, NULL, 'm'},
        {"events-per-request", required_argument, NULL, 'e'},
        {"ack", required_argument, NULL, OPT_ACK},
        {"notify", no_argument, NULL, OPT_NOTIFY},
        {"users", required_argument, NULL, 'u'},
        {"providers", required_argument, NULL, 'P'},
        {"cost", required_argument, NULL, OPT_COST},
        {"tokens", required_argument, NULL, OPT_TOKENS},
        {"spend", required_argument, NULL, OPT_SPEND},
        {"rate", required_argument, NULL, 'r'},
        {"duration", required_argument, NULL, 'd'},
        {"warmup", required_argument, NULL, 'w'},
        {"total-events", required_argument, NULL, OPT_TOTAL_EVENTS},
        {"wait-committed", required_argument, NULL, OPT_WAIT_COMMITTED},
        {"pid", required_argument, NULL, OPT_PID},
        {"watch", required_argument, NULL, OPT_WATCH},
        {"pg", required_argument, NULL, OPT_PG},
        {"json", no_argument, NULL, OPT_JSON},
        {"seed", required_argument, NULL, OPT_SEED},
        {"client-ids", no_argument, NULL, OPT_CLIENT_IDS},
        {"prompt-chars", required_argument, NULL, OPT_PROMPT_CHARS},
        {"emit-csv", required_argument, NULL, OPT_EMIT_CSV},
        {"rows", required_argument, NULL, OPT_ROWS},
        {"label", required_argument, NULL, OPT_LABEL},
        {"redis", required_argument, NULL, OPT_REDIS},
        {"evalsha", required_argument, NULL, OPT_EVALSHA},
        {"redis-limits", required_argument, NULL, OPT_REDIS_LIMITS},
        {"key-prefix", required_argument, NULL, OPT_KEY_PREFIX},
        {"tick-us", required_argument, NULL, OPT_TICK_US},
        {"redis-batch", required_argument, NULL, OPT_REDIS_BATCH},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *o = (struct options){
        .connections = 16,
        .pipeline = 16,
        .mix = {100, 0, 0},
        .events_per_request = 10,
        .users = 1000,
        .providers = "openai,anthropic,google,mistral,groq",
        .cost = -1,
        .tokens = -1,
        .duration_s = 10,
        .warmup_s = 1,
        .seed = 1,
        .prompt_input_chars = 300,
        .prompt_response_chars = 1200,
        .redis_limits = "2000000000,2100000000",
        .key_prefix = "usaged:",
        .tick_us = 20,
        .redis_batch = 1,
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "s:t:c:p:m:e:u:P:r:d:w:h", longopts, NULL)) != -1) {
        switch (ch) {
        case 's':
            o->socket_path = optarg;
            break;
        case 't':
            o->tcp = optarg;
            break;
        case 'c':
            o->connections = (uint32_t)parse_u64(optarg, "--connections");
            break;
        case 'p':
            o->pipeline = (uint32_t)parse_u64(optarg, "--pipeline");
            break;
        case 'm':
            parse_mix(o, optarg);
            break;
        case 'e':
            o->events_per_request = (uint32_t)parse_u64(optarg, "--events-per-request");
            break;
        case OPT_ACK:
            if (strcmp(optarg, "queued") != 0 && strcmp(optarg, "durable") != 0)
                die("--ack takes queued or durable");
            o->ack = optarg;
            break;
        case OPT_NOTIFY:
            o->notify = true;
            break;
        case 'u':
            o->users = (uint32_t)parse_u64(optarg, "--users");
            break;
        case 'P':
            o->providers = optarg;
            break;
        case OPT_COST:
            o->cost = (int64_t)parse_u64(optarg, "--cost");
            break;
        case OPT_TOKENS:
            o->tokens = (int64_t)parse_u64(optarg, "--tokens");
            break;
        case OPT_SPEND:
            o->spend = optarg;
            break;
        case 'r':
            o->rate = parse_double(optarg, "--rate");
            break;
        case 'd':
            o->duration_s = parse_double(optarg, "--duration");
            break;
        case 'w':
            o->warmup_s = parse_double(optarg, "--warmup");
            break;
        case OPT_TOTAL_EVENTS:
            o->total_events = parse_u64(optarg, "--total-events");
            break;
        case OPT_WAIT_COMMITTED:
            o->wait_committed_s = parse_double(optarg, "--wait-committed");
            break;
        case OPT_PID:
            o->pid = (int)parse_u64(optarg, "--pid");
            break;
        case OPT_WATCH:
            parse_watch(o, optarg);
            break;
        case OPT_PG:
            o->pg = optarg;
            break;
        case OPT_JSON:
            o->json = true;
            break;
        case OPT_SEED:
            o->seed = parse_u64(optarg, "--seed");
            break;
        case OPT_CLIENT_IDS:
            o->client_ids = true;
            break;
        case OPT_PROMPT_CHARS:
            if (sscanf(optarg, "%u,%u", &o->prompt_input_chars, &o->prompt_response_chars) != 2)
                die("--prompt-chars takes IN,OUT");
            break;
        case OPT_EMIT_CSV:
            o->emit_csv = optarg;
            break;
        case OPT_ROWS:
            o->csv_rows = parse_u64(optarg, "--rows");
            break;
        case OPT_LABEL:
            o->label = optarg;
            break;
        case OPT_REDIS:
            o->redis = true;
            if (strncmp(optarg, "unix:", 5) == 0)
                o->socket_path = optarg + 5;
            else
                o->tcp = optarg;
            break;
        case OPT_EVALSHA:
            o->evalsha = optarg;
            break;
        case OPT_REDIS_LIMITS:
            o->redis_limits = optarg;
            break;
        case OPT_KEY_PREFIX:
            o->key_prefix = optarg;
            break;
        case OPT_TICK_US:
            o->tick_us = (uint32_t)parse_u64(optarg, "--tick-us");
            break;
        case OPT_REDIS_BATCH:
            o->redis_batch = (uint32_t)parse_u64(optarg, "--redis-batch");
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            exit(2);
        }
    }
    if (optind < argc)
        die("unexpected argument: %s", argv[optind]);
    if (o->emit_csv)
        return;
    if (!o->socket_path == !o->tcp)
        die("give one of --socket, --tcp and --redis");
    if (o->redis) {
        if (!o->evalsha || strlen(o->evalsha) != 40 || strspn(o->evalsha, "0123456789abcdef") != 40)
            die("--redis needs --evalsha with the 40 hex digits of the loaded script");
        if (o->mix[K_USAGE] || o->mix[K_PROMPT] || o->notify || o->pg || o->total_events)
            die("--redis sends checks only (no log methods, --notify, --pg or --total-events)");
        if (o->tokens >= 0 || o->spend)
            die("--redis sends checks under the provider's two v1 rules, which count requests "
                "only (no --tokens or --spend)");
    }
    if (o->redis_batch == 0 || o->redis_batch > CHECK_CALL_MAX_CHECKS)
        die("--redis-batch must be 1..%d", CHECK_CALL_MAX_CHECKS);
    if (o->tick_us > 1000000)
        die("--tick-us must be at most 1000000");
    if (o->connections == 0 || o->connections > 10000)
        die("--connections must be 1..10000");
    if (o->pipeline == 0 || o->pipeline > 65535)
        die("--pipeline must be 1..65535");
    if (o->events_per_request == 0)
        die("--events-per-request must be at least 1");
    if (o->users == 0)
        die("--users must be at least 1");
    if (o->mix[K_CHECK] + o->mix[K_USAGE] + o->mix[K_PROMPT] == 0)
        die("--mix: all weights are 0");
    if (o->wait_committed_s > 0 && o->total_events == 0)
        die("--wait-committed needs --total-events");
    if (o->duration_s <= 0)
        die("--duration must be positive");
}

/* ---- main ---- */

int main(int argc, char **argv)
{
    static struct bench bench;
    struct bench *b = &bench;
    parse_options(&b->o, argc, argv);
    if (!gen_init(&b->gen, b->o.seed, b->o.users, b->o.providers))
        die("--providers: 1 to %d comma-separated names", GEN_MAX_PROVIDERS);
    if (b->o.emit_csv) {
        int rc = emit_csv(b);
        gen_free(&b->gen);
        return rc;
    }
    b->mix_total = b->o.mix[K_CHECK] + b->o.mix[K_USAGE] + b->o.mix[K_PROMPT];
    build_pools(b);

    struct result r = {0};
    PGconn *pg = NULL;
    if (b->o.pg) {
        pg = pg_open(b->o.pg);
        r.rows_before[0] = pg_count(pg, "public.api_usage_logs");
        r.rows_before[1] = pg_count(pg, "public.prompt_history");
        r.have_pg = r.rows_before[0] >= 0 && r.rows_before[1] >= 0;
    }
    uint64_t written_before[2] = {0, 0};
    bool have_written = b->o.wait_committed_s > 0 && daemon_rows_written(&b->o, written_before);
    if (b->o.pid) {
        r.have_pid = proc_read(b->o.pid).ok;
        if (!r.have_pid)
            fprintf(stderr, "usage-bench: cannot read /proc/%d\n", b->o.pid);
    }
    double cpu0 = self_cpu();

    b->loop = uv_default_loop();
    b->tick_fd = -1;
    uv_timer_init(b->loop, &b->phase_timer);
    b->phase_timer.data = b;
    connect_all(b);
    uv_run(b->loop, UV_RUN_DEFAULT);
    uint64_t t_loop_end = mono_ns();

    if (b->o.total_events > 0 && b->o.mix[K_CHECK] == 0)
        b->t_end_ns = b->t_last_answer_ns ? b->t_last_answer_ns : t_loop_end;
    r.window_s = secs(b->t_end_ns - b->t_measure_ns);
    r.commit_s = r.window_s;
    r.all_committed = false;
    if (b->o.wait_committed_s > 0) {
        /* Until the daemon has written every accepted row; then PostgreSQL's count says what
         * is really there. */
        uint64_t expected = b->events_accepted;
        uint64_t deadline = mono_ns() + (uint64_t)(b->o.wait_committed_s * 1e9);
        for (;;) {
            uint64_t written[2] = {0, 0};
            uint64_t now = mono_ns();
            if (have_written && daemon_rows_written(&b->o, written) &&
                written[0] + written[1] - written_before[0] - written_before[1] >= expected) {
                r.all_committed = true;
                r.commit_s = secs(now - b->t_start_ns);
                break;
            }
            if (!have_written && pg) {
                int64_t n =
                    pg_count(pg, "public.api_usage_logs") + pg_count(pg, "public.prompt_history");
                if ((uint64_t)(n - r.rows_before[0] - r.rows_before[1]) >= expected) {
                    r.all_committed = true;
                    r.commit_s = secs(now - b->t_start_ns);
                    break;
                }
            }
            if (now > deadline) {
                r.commit_s = secs(now - b->t_start_ns);
                break;
            }
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    } else if (b->o.pg) {
        r.commit_s = secs(mono_ns() - b->t_measure_ns);
    }
    r.client_cpu_s = self_cpu() - cpu0;
    if (b->d1_ns == 0)
        sample_processes(b, &b->d1, b->w1, &b->self1, &b->d1_ns);
    else if (b->o.pid)
        b->d1.hwm_kib = proc_read(b->o.pid).hwm_kib; /* the peak over the whole run */
    r.sampled_s = secs(b->d1_ns - b->d0_ns);
    if (pg) {
        r.rows_after[0] = pg_count(pg, "public.api_usage_logs");
        r.rows_after[1] = pg_count(pg, "public.prompt_history");
        PQfinish(pg);
    }

    double w = r.window_s > 0 ? r.window_s : 1e-9;
    for (int k = 0; k < K_COUNT; k++) {
        r.requests_ok += b->c.ok[k];
        r.requests_err += b->c.errors[k];
        r.notifications += b->c.notified[k];
        hist_merge(&r.all, &b->c.lat[k]);
    }
    r.requests_per_s = (double)(r.requests_ok + r.requests_err) / w;
    r.events_per_s = (double)(b->c.events[K_USAGE] + b->c.events[K_PROMPT]) / w;
    r.checks_per_s = (double)(b->c.ok[K_CHECK]) / w;
    r.notifications_per_s = (double)r.notifications / w;
    report(b, &r);

    uv_loop_close(b->loop);
    if (b->tick_fd >= 0)
        close(b->tick_fd);
    for (uint32_t i = 0; i < b->o.connections; i++) {
        free(b->conns[i].slots);
        free(b->conns[i].free_slots);
        free(b->conns[i].fifo);
        free(b->conns[i].out.data);
        free(b->conns[i].wbuf.data);
        free(b->conns[i].in);
    }
    free(b->conns);
    pool_free(&b->usage_pool);
    pool_free(&b->prompt_pool);
    pool_free(&b->check_pool);
    check_call_free(b->redis_call);
    gen_free(&b->gen);
    for (int i = 0; i < b->o.nwatch; i++)
        free((char *)b->o.watch[i].name);
    return b->failed ? 1 : 0;
}
