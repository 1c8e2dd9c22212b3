/* methods_log: see methods_log.h. */
#include "methods_log.h"

#include <stdlib.h>

#include "fields.h"
#include "rpc.h"
#include "xalloc.h"

/* A durable request waiting for its batch. */
struct log_ack {
    struct batch_ack base;
    struct conn *conn;
    uint32_t msgid;
    uint32_t accepted;
};

static void answer_accepted(struct conn *c, uint32_t msgid, uint32_t accepted)
{
    msgpack_packer *pk = conn_reply(c, msgid);
    msgpack_pack_map(pk, 1);
    rpc_pack_str(pk, "accepted");
    msgpack_pack_uint32(pk, accepted);
}

/* Runs from the batcher's work: conn_reply only packs (the pause state and held-back requests
 * are dealt with by the connection's own flush pass), so nothing here re-enters the batcher. */
static void on_kept(struct batch_ack *base, const struct rpc_error *err)
{
    struct log_ack *a = (struct log_ack *)base;
    if (err)
        conn_reply_error(a->conn, a->msgid, err);
    else
        answer_accepted(a->conn, a->msgid, a->accepted);
    conn_unref(a->conn);
    free(a);
}

/* Runs from the batcher's room callback, a loop callback of its own: a resumed connection
 * dispatches what it held back, and may be paused again. */
static void on_room(void *arg)
{
    struct methods_log *ml = arg;
    /* Take the list first: a resumed connection may pause again and re-register. */
    struct conn **list = ml->paused;
    uint32_t n = ml->npaused;
    ml->paused = NULL;
    ml->npaused = 0;
    ml->cap_paused = 0;
    for (uint32_t i = 0; i < n; i++) {
        conn_resume(list[i], CONN_PAUSE_BACKPRESSURE);
        conn_unref(list[i]);
    }
    free(list);
}

void methods_log_init(struct methods_log *ml, struct batcher *b)
{
    ml->batcher = b;
    ml->paused = NULL;
    ml->npaused = ml->cap_paused = 0;
    b->on_room = on_room;
    b->room_arg = ml;
}

void methods_log_close(struct methods_log *ml)
{
    for (uint32_t i = 0; i < ml->npaused; i++)
        conn_unref(ml->paused[i]);
    free(ml->paused);
    ml->paused = NULL;
    ml->npaused = ml->cap_paused = 0;
}

static void pause_sender(struct methods_log *ml, struct conn *c)
{
    for (uint32_t i = 0; i < ml->npaused; i++)
        if (ml->paused[i] == c)
            return;
    if (ml->npaused == ml->cap_paused) {
        ml->cap_paused = ml->cap_paused ? ml->cap_paused * 2 : 16;
        ml->paused = xrealloc(ml->paused, ml->cap_paused * sizeof(*ml->paused));
    }
    conn_ref(c);
    conn_pause(c, CONN_PAUSE_BACKPRESSURE);
    ml->paused[ml->npaused++] = c;
}

static const char *const ack_modes[] = {"queued", "durable", NULL};

static const struct fields_spec option_specs[] = {
    {FIELDS_NAME("ack"), .kind = FIELDS_CHOICE, .choices = ack_modes,
     .invalid = "ack must be \"queued\" or \"durable\""},
};

static const struct fields_table options = {option_specs,
                                            (int)(sizeof(option_specs) / sizeof(option_specs[0])),
                                            "unknown option; the only one is ack"};

/* Reads params: [[events]] or [[events], {"ack": ...}]. */
static bool parse_params(const struct batcher *b, const struct rpc_message *m,
                         const msgpack_object_array **events, enum config_ack *ack,
                         struct rpc_error *err)
{
    const msgpack_object_array *p = m->params;
    if (p->size < 1 || p->size > 2 || p->ptr[0].type != MSGPACK_OBJECT_ARRAY) {
        rpc_error_set(err, RPC_BAD_REQUEST,
                      "%s takes params [[event, ...]] or "
                      "[[event, ...], {\"ack\": \"queued\"|\"durable\"}]",
                      rpc_method_name(m->method));
        return false;
    }
    *events = &p->ptr[0].via.array;
    *ack = b->default_ack;
    if (p->size == 2) {
        if (p->ptr[1].type != MSGPACK_OBJECT_MAP) {
            rpc_error_set(err, RPC_BAD_REQUEST, "the second param must be a map of options");
            return false;
        }
        struct fields_value v[1];
        bool given[1];
        if (!fields_parse(&options, &p->ptr[1].via.map, v, given, err))
            return false;
        if (given[0])
            *ack = v[0].choice == 1 ? CONFIG_ACK_DURABLE : CONFIG_ACK_QUEUED;
    }
    return true;
}

void methods_log_count_refused(struct methods_log *ml, const struct rpc_message *m,
                               const struct rpc_error *err)
{
    if (m->params->size >= 1 && m->params->ptr[0].type == MSGPACK_OBJECT_ARRAY) {
        uint32_t n = m->params->ptr[0].via.array.size;
        ml->batcher->stats.events_received += n;
        ml->batcher->stats.events_rejected[err->code] += n;
    }
}

enum conn_dispatch_result methods_log(struct methods_log *ml, enum event_kind kind, struct conn *c,
                                      const struct rpc_message *m)
{
    struct rpc_error err;
    struct batcher_request req = {.kind = kind, .can_wait = m->kind == RPC_KIND_NOTIFICATION};
    enum config_ack ack;
    if (!parse_params(ml->batcher, m, &req.events, &ack, &err)) {
        methods_log_count_refused(ml, m, &err);
        return conn_refuse(c, m, &err);
    }
    struct log_ack *a = NULL;
    if (m->kind == RPC_KIND_REQUEST && ack == CONFIG_ACK_DURABLE && req.events->size > 0) {
        a = xmalloc(sizeof(*a));
        *a = (struct log_ack){{on_kept}, c, m->msgid, req.events->size};
        req.ack = &a->base;
        conn_ref(c); /* held until on_kept */
    }
    enum batcher_result r = batcher_submit(ml->batcher, &req, &err);
    if (r == BATCHER_ACCEPTED) {
        if (!a && m->kind == RPC_KIND_REQUEST)
            answer_accepted(c, m->msgid, req.events->size);
        return CONN_DISPATCHED;
    }
    if (a) {
        conn_unref(c);
        free(a);
    }
    if (r == BATCHER_WAIT) {
        pause_sender(ml, c);
        return CONN_RETRY_LATER;
    }
    return conn_refuse(c, m, &err);
}

void methods_log_pack_stats(const struct batcher *b, msgpack_packer *pk)
{
    msgpack_pack_map(pk, 10);
    rpc_pack_u64(pk, "events_received", b->stats.events_received);
    rpc_pack_u64(pk, "events_accepted", b->stats.events_accepted);
    rpc_pack_str(pk, "events_rejected");
    msgpack_pack_map(pk, RPC_CODE_COUNT);
    for (int i = 0; i < RPC_CODE_COUNT; i++)
        rpc_pack_u64(pk, rpc_code_name((enum rpc_code)i), b->stats.events_rejected[i]);
    rpc_pack_u64(pk, "queue_rows", b->queued_rows);
    rpc_pack_u64(pk, "queue_bytes", b->queued_bytes);
    rpc_pack_u64(pk, "spooling_bytes", b->spooling_bytes);
    rpc_pack_u64(pk, "requests_overloaded", b->stats.requests_overloaded);
    rpc_pack_u64(pk, "denied_rows_dropped", b->stats.denied_rows_dropped);
    rpc_pack_u64(pk, "notification_senders_paused", b->stats.notifications_paused);
    rpc_pack_str(pk, "tables");
    msgpack_pack_map(pk, EVENT_KIND_COUNT);
    for (int k = 0; k < EVENT_KIND_COUNT; k++) {
        const struct batcher_table *t = &b->tables[k];
        rpc_pack_str(pk, t->table->name);
        msgpack_pack_map(pk, 16);
        rpc_pack_u64(pk, "queue_rows", t->queued_rows);
        rpc_pack_u64(pk, "rows_queued", t->stats.rows_queued);
        rpc_pack_u64(pk, "rows_written", t->stats.rows_written);
        rpc_pack_u64(pk, "rows_rejected", t->stats.rows_rejected);
        rpc_pack_u64(pk, "rows_spooled", t->stats.rows_spooled);
        rpc_pack_u64(pk, "batches", t->stats.batches);
        rpc_pack_u64(pk, "statements", t->stats.statements);
        rpc_pack_u64(pk, "idempotent_writes", t->stats.idempotent_writes);
        rpc_pack_u64(pk, "retries", t->stats.retries);
        rpc_pack_u64(pk, "copy_ms", t->stats.copy_us / 1000);
        uint64_t up = batcher_table_writers_up(t), connects = 0;
        for (uint32_t i = 0; i < t->nwriters; i++)
            connects += t->writers[i].pg.stats.connects;
        rpc_pack_u64(pk, "rows_replayed", t->stats.rows_replayed);
        rpc_pack_u64(pk, "writers", t->nwriters);
        rpc_pack_u64(pk, "writers_up", up);
        rpc_pack_str(pk, "postgres");
        rpc_pack_str(pk, up == t->nwriters ? "up" : up ? "partly up" : "down");
        rpc_pack_str(pk, "last_error");
        rpc_pack_str(pk, t->last_error);
        rpc_pack_u64(pk, "postgres_connects", connects);
    }
}

void methods_log_pack_spool_stats(const struct spool *s, msgpack_packer *pk)
{
    struct spool_figures f;
    spool_figures(s, &f);
    msgpack_pack_map(pk, 16);
    rpc_pack_str(pk, "state");
    rpc_pack_str(pk, f.state);
    rpc_pack_u64(pk, "bytes", s->bytes);
    rpc_pack_u64(pk, "max_bytes", s->max_bytes);
    rpc_pack_u64(pk, "segments", f.segments);
    rpc_pack_u64(pk, "records_pending", f.records_pending);
    rpc_pack_u64(pk, "oldest_age_ms", f.oldest_age_ms);
    rpc_pack_u64(pk, "records_spooled", s->stats.records_spooled);
    rpc_pack_u64(pk, "rows_spooled", s->stats.rows_spooled);
    rpc_pack_u64(pk, "records_replayed", s->stats.records_replayed);
    rpc_pack_u64(pk, "rows_replayed", s->stats.rows_replayed);
    rpc_pack_u64(pk, "fsyncs", s->stats.fsyncs);
    rpc_pack_u64(pk, "write_errors", s->stats.write_errors);
    rpc_pack_u64(pk, "corrupt_records", s->stats.corrupt_records);
    rpc_pack_u64(pk, "quarantined_bytes", s->stats.quarantined_bytes);
    rpc_pack_u64(pk, "segments_remade", s->stats.segments_remade);
    rpc_pack_str(pk, "error");
    rpc_pack_str(pk, f.error);
}
