/* alerts: see alerts.h. */
#include "alerts.h"

#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    int n = snprintf(key, sizeof(key), "%s\n%s\n%u\n%u\n%d\n%" PRIu64, alert->provider,
                     alert->model, alert->dimension, alert->window, alert->shadow,
                     alert->window_start_ms);
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

static void send_head(struct alerts *a);

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
                     o->error ? o->error : "error", a->n);
        a->waiting = true; /* until the retry timer's next tick */
        return;
    }
    a->head = (a->head + 1) % a->size;
    a->n--;
}

static void on_retry(uv_timer_t *t)
{
    struct alerts *a = t->data;
    a->waiting = false;
    send_head(a);
}

static void send_head(struct alerts *a)
{
    if (!a->n || a->in_flight || a->waiting || a->closing || !pg_is_idle(&a->pg))
        return;
    const struct alerts_alert *al = at(a, 0);
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
    a->op = (struct pg_op){.sql = insert_sql,
                           .nparams = 12,
                           .params = a->param_ptrs,
                           .done = on_written,
                           .arg = a};
    if (pg_submit(&a->pg, &a->op) == 0)
        a->in_flight = true;
}

static void on_pg_ready(struct pg_conn *pg, void *arg)
{
    (void)pg;
    send_head(arg);
}

static const struct pg_callbacks alerts_callbacks = {.ready = on_pg_ready};

void alerts_init(struct alerts *a, uv_loop_t *loop, const struct config *config)
{
    memset(a, 0, sizeof(*a));
    a->loop = loop;
    a->cap = config->limits.alert_queue;
    uv_timer_init(loop, &a->retry_timer);
    a->retry_timer.data = a;
    pg_init(&a->pg, loop, "alerts", config->postgres.conninfo,
            config->postgres.connect_timeout_s * 1000, config->postgres.reconnect_max_ms,
            &alerts_callbacks, a);
}

void alerts_push(struct alerts *a, const struct alerts_alert *alert)
{
    a->stats.raised++;
    if (a->closing)
        return;
    if (a->n == a->cap) {
        a->stats.dropped++;
        uint64_t now = uv_now(a->loop);
        if (!a->full_logged_ms || now - a->full_logged_ms >= 10000) {
            a->full_logged_ms = now;
            log_error("alerts: %u alerts wait for PostgreSQL (limits.alert_queue); new ones are "
                      "dropped",
                      a->n);
        }
        return;
    }
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
    a->queue[(a->head + a->n) % a->size] = *alert;
    a->n++;
    if (!a->started) {
        a->started = true;
        uv_timer_start(&a->retry_timer, on_retry, RETRY_MS, RETRY_MS);
        uv_unref((uv_handle_t *)&a->retry_timer);
        pg_start(&a->pg);
        return;
    }
    send_head(a);
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
    for (uint32_t i = 0; i < a->n; i++) {
        const struct alerts_alert *al = at(a, i);
        char user[UUID_STRING_LEN + 1];
        uuid_format(al->user_id, user);
        log_error("alerts: not written (PostgreSQL away at shutdown): user %s, provider %s, "
                  "model %s, %s per %s, %u%% of %" PRId64,
                  user, al->provider[0] ? al->provider : "*", al->model[0] ? al->model : "*",
                  rules_dimension_name(al->dimension), rules_window_name(al->window),
                  al->percent, al->limit);
        a->stats.dropped++;
    }
    a->n = 0;
    a->on_closed = on_closed;
    a->closed_arg = arg;
    a->closing = 2;
    uv_close((uv_handle_t *)&a->retry_timer, on_timer_closed);
    pg_close(&a->pg, on_pg_closed);
}
