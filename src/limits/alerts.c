/* alerts: see alerts.h. */
#include "alerts.h"

#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <errno.h>
#include <unistd.h>

#include "alerts_file.h"
#include "decision.h"
#include "log.h"
#include "money.h"
#include "uuid.h"
#include "xalloc.h"

#define RETRY_MS 2000 /* after a failed write (PostgreSQL away, or the table not there yet) */

/* The row and its NOTIFY in one statement: the notification is sent exactly when the row is
 * new, and only if the statement commits. */
static const char insert_sql[] =
    "WITH ins AS (INSERT INTO public.usage_alerts (id, user_id, provider, model, dimension, "
    "period, window_start, amount, used, alert_at_percent, shadow, created_at) VALUES ($1::uuid, "
    "$2::uuid, $3, $4, $5, $6, to_timestamp($7::bigint / 1000.0), $8::numeric, $9::numeric, "
    "$10::int, $11::bool, to_timestamp($12::bigint / 1000.0)) ON CONFLICT (id) DO NOTHING "
    "RETURNING *) SELECT pg_notify('usaged_alerts', row_to_json(ins)::text) FROM ins";

static uint64_t fnv1a(uint64_t h, const void *data, size_t len)
{
    const uint8_t *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

void alerts_id(const struct alerts_alert *alert, uint8_t id[16])
{
    /* The identity of the alert: the user, the rule and the window (never the use or the
     * time), hashed twice with two seeds into 128 bits. */
    char key[RULES_PROVIDER_BYTES + RULES_MODEL_BYTES + 64];
    int n =
        snprintf(key, sizeof(key), "%s\n%s\n%u\n%u\n%d\n%" PRIu64, alert->provider, alert->model,
                 alert->dimension, alert->window, alert->shadow, alert->window_start_ms);
    uint64_t h[2] = {0xcbf29ce484222325ULL, 0x84222325cbf29ce4ULL};
    for (int i = 0; i < 2; i++) {
        h[i] = fnv1a(h[i], alert->user_id, 16);
        h[i] = fnv1a(h[i], key, (size_t)n);
        h[i] ^= h[i] >> 29; /* spread the last bytes into the high bits */
        h[i] *= 0xbf58476d1ce4e5b9ULL;
        h[i] ^= h[i] >> 32;
    }
    for (int i = 0; i < 8; i++) {
        id[i] = (uint8_t)(h[0] >> (56 - 8 * i));
        id[8 + i] = (uint8_t)(h[1] >> (56 - 8 * i));
    }
    id[6] = (uint8_t)((id[6] & 0x0f) | 0x80); /* version 8: made by the application */
    id[8] = (uint8_t)((id[8] & 0x3f) | 0x80); /* the RFC 9562 variant */
}

static struct alerts_alert *at(struct alerts *a, uint32_t i)
{
    return &a->queue[(a->head + i) % a->size];
}

/* ---- the file's work, in the thread pool ---- */

enum alerts_job_kind { JOB_APPEND, JOB_READ, JOB_TRUNCATE };

struct alerts_job {
    uv_work_t req;
    struct alerts *a;
    enum alerts_job_kind kind;
    uint8_t *buf;
    size_t len;
    uint64_t off;
    uint32_t count; /* records in buf */
    int result;     /* 0 or a negative errno */
};

static void file_next(struct alerts *a);
static void send_next(struct alerts *a);
static void part_closed(struct alerts *a);

static void job_work(uv_work_t *req)
{
    struct alerts_job *j = req->data;
    switch (j->kind) {
    case JOB_APPEND:
        j->result = alerts_file_append(j->a->fd, j->buf, j->len, j->off);
        break;
    case JOB_READ:
        j->result = alerts_file_read(j->a->fd, j->buf, j->len, j->off);
        break;
    case JOB_TRUNCATE:
        j->result = alerts_file_truncate(j->a->fd);
        break;
    }
}

static void log_given_up(const struct alerts_alert *al, const char *why)
{
    char user[UUID_STRING_LEN + 1];
    uuid_format(al->user_id, user);
    log_error("alerts: not written (%s): user %s, provider %s, model %s, %s per %s, %u%% of "
              "%" PRId64,
              why, user, al->provider[0] ? al->provider : "*", al->model[0] ? al->model : "*",
              rules_dimension_name(al->dimension), rules_window_name(al->window), al->percent,
              al->limit);
}

/* Appends an alert to the ring in memory, grown as needed. False when it holds
 * limits.alert_queue already. */
static bool enqueue(struct alerts *a, const struct alerts_alert *al)
{
    if (a->n == a->cap)
        return false;
    if (a->n == a->size) {
        /* Grow the ring, its items in order from 0. */
        uint32_t size = a->size ? a->size * 2 : 16;
        if (size > a->cap)
            size = a->cap;
        struct alerts_alert *q = xcalloc(size, sizeof(*q));
        for (uint32_t i = 0; i < a->n; i++)
            q[i] = *at(a, i);
        free(a->queue);
        a->queue = q;
        a->size = size;
        a->head = 0;
    }
    a->queue[(a->head + a->n) % a->size] = *al;
    a->n++;
    return true;
}

/* Back into memory, when there is room (an append that failed). */
static void requeue(struct alerts *a, const struct alerts_alert *al)
{
    if (!enqueue(a, al)) {
        a->stats.dropped++;
        log_given_up(al, "the spool cannot be written and memory is full");
    }
}

static void appended(struct alerts *a, struct alerts_job *j)
{
    if (j->result == 0) {
        a->file_size += j->len;
        a->stats.spooled += j->count;
        a->disk_failed = false;
        return;
    }
    log_error("alerts: cannot write %s/alerts/pending: %s; %u alerts wait in memory", a->dir,
              strerror(-j->result), a->n + j->count);
    a->disk_failed = true;
    for (uint32_t i = 0; i < j->count; i++) {
        struct alerts_alert al;
        if (!alerts_file_decode(j->buf + (size_t)i * ALERTS_FILE_RECORD, &al))
            continue;
        if (a->closing) {
            a->stats.dropped++; /* the last chance was this append */
            log_given_up(&al, "the spool cannot be written at shutdown");
        } else {
            requeue(a, &al);
        }
    }
}

static void read_done(struct alerts *a, struct alerts_job *j)
{
    if (j->result < 0) {
        log_error("alerts: cannot read %s/alerts/pending: %s", a->dir, strerror(-j->result));
        a->disk_failed = true; /* tried again at the retry timer's next tick */
        return;
    }
    a->nreplay = a->replay_done = 0;
    for (uint32_t i = 0; i < j->count; i++) {
        if (alerts_file_decode(j->buf + (size_t)i * ALERTS_FILE_RECORD, &a->replay[a->nreplay]))
            a->nreplay++;
        else
            a->stats.corrupt++;
    }
    if (a->nreplay < j->count)
        log_error("alerts: %u damaged record(s) in %s/alerts/pending skipped",
                  j->count - a->nreplay, a->dir);
    a->replay_bytes = j->len;
    if (!a->nreplay)
        a->file_read += j->len; /* nothing in it to write */
}

static void job_done(uv_work_t *req, int status)
{
    (void)status;
    struct alerts_job *j = req->data;
    struct alerts *a = j->a;
    a->job = NULL;
    switch (j->kind) {
    case JOB_APPEND:
        appended(a, j);
        break;
    case JOB_READ:
        read_done(a, j);
        break;
    case JOB_TRUNCATE:
        if (j->result == 0)
            a->file_size = a->file_read = 0;
        break;
    }
    free(j->buf);
    free(j);
    file_next(a);
    send_next(a);
}

static void job_start(struct alerts *a, enum alerts_job_kind kind, uint8_t *buf, size_t len,
                      uint64_t off, uint32_t count)
{
    struct alerts_job *j = xcalloc(1, sizeof(*j));
    *j = (struct alerts_job){
        .a = a, .kind = kind, .buf = buf, .len = len, .off = off, .count = count};
    j->req.data = j;
    a->job = j;
    uv_queue_work(a->loop, &j->req, job_work, job_done);
}

/* What waits in memory (but the write in flight, unless closing) goes to the file. */
static void append_memory(struct alerts *a)
{
    uint32_t keep = a->in_flight && !a->replay_in_flight && !a->closing ? 1 : 0;
    uint32_t count = a->n - keep;
    uint8_t *buf = xmalloc((size_t)count * ALERTS_FILE_RECORD);
    for (uint32_t i = 0; i < count; i++)
        alerts_file_encode(at(a, keep + i), buf + (size_t)i * ALERTS_FILE_RECORD);
    if (keep)
        a->queue[(a->head + count) % a->size] = *at(a, 0); /* the head goes last... */
    a->head = (a->head + count) % a->size;                 /* ... and stays the head */
    a->n = keep;
    a->flush_wanted = false;
    job_start(a, JOB_APPEND, buf, (size_t)count * ALERTS_FILE_RECORD, a->file_size, count);
}

/* The next piece of the file's work, when none is running: what memory holds goes to disk
 * first; then, while PostgreSQL takes writes, the next records to replay are read; a file
 * whose every record is written is emptied. Closing, the last append then the close. */
static void file_next(struct alerts *a)
{
    if (a->job || a->fd < 0)
        return;
    uint32_t movable = a->n - (a->in_flight && !a->replay_in_flight && !a->closing ? 1 : 0);
    if (a->closing) {
        if (movable) {
            append_memory(a);
            return;
        }
        close(a->fd);
        a->fd = -1;
        part_closed(a);
        return;
    }
    if (a->flush_wanted && movable && !a->disk_failed) {
        append_memory(a);
        return;
    }
    if (a->nreplay || a->waiting || !a->started || a->disk_failed)
        return;
    if (a->file_read < a->file_size) {
        uint64_t left = (a->file_size - a->file_read) / ALERTS_FILE_RECORD;
        uint32_t count = left < ALERTS_REPLAY ? (uint32_t)left : ALERTS_REPLAY;
        size_t len = (size_t)count * ALERTS_FILE_RECORD;
        job_start(a, JOB_READ, xmalloc(len), len, a->file_read, count);
    } else if (a->file_size > 0) {
        job_start(a, JOB_TRUNCATE, NULL, 0, 0, 0);
    }
}

uint64_t alerts_on_disk(const struct alerts *a)
{
    return (a->file_size - a->file_read) / ALERTS_FILE_RECORD - a->replay_done;
}

/* ---- writing ---- */

/* True while an alert can be sent now: the connection is up and the last write did not fail. */
static bool writable(const struct alerts *a)
{
    return a->started && !a->waiting && (a->pg.state == PG_IDLE || a->pg.state == PG_BUSY);
}

/* PostgreSQL cannot take the alerts now: the ones in memory go to the file. */
static void spool_memory(struct alerts *a)
{
    if (a->fd < 0 || !a->n)
        return;
    a->flush_wanted = true;
    file_next(a);
}

static void written_one(struct alerts *a)
{
    if (a->replay_in_flight) {
        if (++a->replay_done == a->nreplay) {
            a->file_read += a->replay_bytes;
            a->nreplay = a->replay_done = 0;
            file_next(a);
        }
        return;
    }
    a->head = (a->head + 1) % a->size;
    a->n--;
}

static void on_written(struct pg_conn *pg, const struct pg_outcome *o, void *arg)
{
    (void)pg;
    struct alerts *a = arg;
    a->in_flight = false;
    if (a->closing)
        return;
    if (o->ok) {
        if (o->result && PQntuples(o->result) == 1)
            a->stats.written++;
        else
            a->stats.duplicates++;
    } else if (!o->connection_lost && o->sqlstate[0] != '4' && o->sqlstate[0] != '0' &&
               o->sqlstate[0] != '5') {
        /* Neither PostgreSQL away (class 08, 57), the table missing or not writable (42), nor
         * an out-of-resources error (53): the row itself is refused, and always will be. */
        a->stats.dropped++;
        log_error("alerts: PostgreSQL refused an alert of user %s: %s", a->params[1],
                  o->error ? o->error : "error");
    } else {
        if (!o->connection_lost)
            log_warn("alerts: cannot write an alert yet (%s); %u waiting, retrying",
                     o->error ? o->error : "error", a->n + a->nreplay - a->replay_done);
        a->waiting = true; /* until the retry timer's next tick */
        spool_memory(a);
        return;
    }
    written_one(a);
    send_next(a);
}

static void on_retry(uv_timer_t *t)
{
    struct alerts *a = t->data;
    a->waiting = false;
    a->disk_failed = false;
    if (!writable(a))
        spool_memory(a);
    file_next(a);
    send_next(a);
}

static void send_alert(struct alerts *a, const struct alerts_alert *al)
{
    uint8_t id[16];
    alerts_id(al, id);
    uuid_format(id, a->params[0]);
    uuid_format(al->user_id, a->params[1]);
    snprintf(a->params[4], sizeof(a->params[4]), "%s", rules_dimension_name(al->dimension));
    snprintf(a->params[5], sizeof(a->params[5]), "%s", rules_window_name(al->window));
    snprintf(a->params[6], sizeof(a->params[6]), "%" PRIu64, al->window_start_ms);
    if (al->dimension == RULES_SPEND) {
        money_format(al->limit, a->params[7]);
        money_format(al->used, a->params[8]);
    } else {
        snprintf(a->params[7], sizeof(a->params[7]), "%" PRId64, al->limit);
        snprintf(a->params[8], sizeof(a->params[8]), "%" PRId64, al->used);
    }
    snprintf(a->params[9], sizeof(a->params[9]), "%u", al->percent);
    snprintf(a->params[10], sizeof(a->params[10]), "%s", al->shadow ? "true" : "false");
    snprintf(a->params[11], sizeof(a->params[11]), "%" PRIu64, al->now_ms);
    for (int i = 0; i < 12; i++)
        a->param_ptrs[i] = a->params[i];
    /* Copies: the ring may grow (and move) while the statement is out. Provider and model are
     * NULL for a rule of every provider, any model. */
    memcpy(a->provider, al->provider, sizeof(a->provider));
    memcpy(a->model, al->model, sizeof(a->model));
    a->param_ptrs[2] = a->provider[0] ? a->provider : NULL;
    a->param_ptrs[3] = a->model[0] ? a->model : NULL;
    a->op = (struct pg_op){
        .sql = insert_sql, .nparams = 12, .params = a->param_ptrs, .done = on_written, .arg = a};
    if (pg_submit(&a->pg, &a->op) == 0)
        a->in_flight = true;
}

/* The next alert to write: the file's, read back, before memory's. */
static void send_next(struct alerts *a)
{
    if (a->in_flight || a->waiting || a->closing || !pg_is_idle(&a->pg))
        return;
    if (a->replay_done < a->nreplay) {
        a->replay_in_flight = true;
        send_alert(a, &a->replay[a->replay_done]);
    } else if (a->n) {
        a->replay_in_flight = false;
        send_alert(a, at(a, 0));
    }
}

static void on_pg_ready(struct pg_conn *pg, void *arg)
{
    (void)pg;
    struct alerts *a = arg;
    file_next(a);
    send_next(a);
}

static const struct pg_callbacks alerts_callbacks = {.ready = on_pg_ready};

/* Connects (and starts the retry timer) on the first alert, or at start when the file holds
 * some: most daemons never raise one. */
static void start(struct alerts *a)
{
    if (a->started)
        return;
    a->started = true;
    uv_timer_start(&a->retry_timer, on_retry, RETRY_MS, RETRY_MS);
    uv_unref((uv_handle_t *)&a->retry_timer);
    pg_start(&a->pg);
}

void alerts_init(struct alerts *a, uv_loop_t *loop, const struct config *config)
{
    memset(a, 0, sizeof(*a));
    a->loop = loop;
    a->cap = config->limits.alert_queue;
    a->fd = -1;
    uv_timer_init(loop, &a->retry_timer);
    a->retry_timer.data = a;
    pg_init(&a->pg, loop, "alerts", config->postgres.conninfo,
            config->postgres.connect_timeout_s * 1000, config->postgres.reconnect_max_ms,
            &alerts_callbacks, a);
    if (!config->spool.dir || !config->spool.dir[0])
        return;
    snprintf(a->dir, sizeof(a->dir), "%s", config->spool.dir);
    int fd = alerts_file_open(a->dir, &a->file_size);
    if (fd < 0) {
        log_error("alerts: cannot open %s/alerts/pending: %s; alerts wait in memory only", a->dir,
                  strerror(-fd));
        return;
    }
    a->fd = fd;
    if (a->file_size) {
        log_info("alerts: %" PRIu64 " alert(s) on disk to write",
                 a->file_size / ALERTS_FILE_RECORD);
        start(a);
    }
}

void alerts_push(struct alerts *a, const struct alerts_alert *alert)
{
    a->stats.raised++;
    if (a->closing)
        return;
    if (!enqueue(a, alert)) {
        a->stats.dropped++;
        uint64_t now = uv_now(a->loop);
        if (!a->full_logged_ms || now - a->full_logged_ms >= 10000) {
            a->full_logged_ms = now;
            log_error("alerts: %u alerts wait for PostgreSQL and the disk (limits.alert_queue); "
                      "new ones are dropped",
                      a->n);
        }
        spool_memory(a);
        return;
    }
    start(a);
    if (writable(a))
        send_next(a);
    else
        spool_memory(a);
}

void alerts_raise(struct alerts *a, const uint8_t user_id[16], const char *provider,
                  size_t provider_len, const char *model, size_t model_len,
                  const struct rules_resolved *lim, const char *list, const int64_t *used,
                  uint64_t now_ms)
{
    for (const char *p = list; *p;) {
        char *end;
        long j = strtol(p, &end, 10) - 1;
        if (end == p)
            break;
        p = *end == ',' ? end + 1 : end;
        if (j < 0 || j >= lim->counted)
            continue;
        const struct rules_applied *r = &lim->rule[j];
        struct alerts_alert al = {
            .dimension = r->dimension,
            .window = r->window,
            .shadow = r->shadow,
            .percent = r->alert_percent,
            .limit = r->limit,
            .used = used[j],
            .window_start_ms = decision_window_start_ms((enum rules_window)r->window, now_ms),
            .now_ms = now_ms,
        };
        memcpy(al.user_id, user_id, 16);
        if (r->by_provider)
            memcpy(al.provider, provider, provider_len);
        if (r->by_model)
            memcpy(al.model, model, model_len);
        alerts_push(a, &al);
    }
}

static void part_closed(struct alerts *a)
{
    if (--a->closing > 0)
        return;
    free(a->queue);
    a->queue = NULL;
    if (a->on_closed)
        a->on_closed(a, a->closed_arg);
}

static void on_timer_closed(uv_handle_t *h)
{
    part_closed(h->data);
}

static void on_pg_closed(struct pg_conn *pg)
{
    part_closed((struct alerts *)((char *)pg - offsetof(struct alerts, pg)));
}

void alerts_close(struct alerts *a, void (*on_closed)(struct alerts *a, void *arg), void *arg)
{
    a->on_closed = on_closed;
    a->closed_arg = arg;
    a->closing = 3; /* the timer, the connection, the file */
    if (a->fd < 0) {
        for (uint32_t i = 0; i < a->n; i++)
            log_given_up(at(a, i), "PostgreSQL away at shutdown, no spool");
        a->stats.dropped += a->n;
        a->n = 0;
        a->closing--;
    } else {
        file_next(a); /* now, or when the running job is done */
    }
    uv_close((uv_handle_t *)&a->retry_timer, on_timer_closed);
    pg_close(&a->pg, on_pg_closed);
}
