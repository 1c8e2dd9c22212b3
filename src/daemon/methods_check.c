/* methods_check: the `check` and `settle` methods' side of the protocol, and the `reservation`
 * of log_prompt events. Parses their params, hands the limiter plain requests with completion
 * callbacks, and packs their answers (and the limiter's stats) for the client. The limiter never
 * sees a connection. */
#include "methods_check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check_answer.h"
#include "clock.h"
#include "fields.h"
#include "money.h"
#include "rpc.h"
#include "xalloc.h"

#include "usaged/protocol.h"

#define TOKENS_MAX 1000000000000LL /* per check or settle: far past any model's context */
#define RESERVATION_SHAPE "reservation must be a string as check returned it (\"<uuid>.<16 hex>\")"

/* ---- params ---- */

#define SPEND_INVALID                                                                              \
    "spend must be a decimal of USD >= 0 with at most 6 places, as a string (\"0.0035\") or a "    \
    "number"

static const struct fields_spec check_specs[] = {
    {FIELDS_NAME("user_id"), .kind = FIELDS_UUID, .required = true,
     .invalid = "user_id must be a uuid"},
    {FIELDS_NAME("provider"), .kind = FIELDS_TEXT, .required = true, .min_chars = 1,
     .max_chars = RULES_PROVIDER_MAX,
     .invalid = "provider must be a UTF-8 string of 1 to 50 characters"},
    {FIELDS_NAME("model"), .kind = FIELDS_TEXT, .min_chars = 1, .max_chars = RULES_MODEL_MAX,
     .invalid = "model must be a UTF-8 string of 1 to 50 characters"},
    {FIELDS_NAME("cost"), .kind = FIELDS_INT, .min = 0, .max = INT32_MAX,
     .invalid = "cost must be an integer from 0 to 2147483647"},
    {FIELDS_NAME("tokens"), .kind = FIELDS_INT, .min = 0, .max = TOKENS_MAX,
     .invalid = "tokens must be an integer from 0 to 1000000000000"},
    {FIELDS_NAME("spend"), .kind = FIELDS_DECIMAL, .invalid = SPEND_INVALID},
};
static const struct fields_table check_table = {
    check_specs, 6, "unknown field; check takes user_id, provider, model, cost, tokens and spend"};
enum { CHECK_USER, CHECK_PROVIDER, CHECK_MODEL, CHECK_COST, CHECK_TOKENS, CHECK_SPEND };

static const struct fields_spec settle_specs[] = {
    {FIELDS_NAME("reservation"), .kind = FIELDS_TEXT, .required = true, .min_chars = 1,
     .max_chars = 64, .invalid = RESERVATION_SHAPE},
    {FIELDS_NAME("tokens"), .kind = FIELDS_INT, .min = 0, .max = TOKENS_MAX,
     .invalid = "tokens must be an integer from 0 to 1000000000000"},
    {FIELDS_NAME("spend"), .kind = FIELDS_DECIMAL, .invalid = SPEND_INVALID},
    {FIELDS_NAME("cancel"), .kind = FIELDS_BOOL},
};
static const struct fields_table settle_table = {
    settle_specs, 4, "unknown field; settle takes reservation, tokens, spend and cancel"};
enum { SETTLE_RESERVATION, SETTLE_TOKENS, SETTLE_SPEND, SETTLE_CANCEL };

static const struct fields_spec usage_specs[] = {
    {FIELDS_NAME("user_id"), .kind = FIELDS_UUID, .required = true,
     .invalid = "user_id must be a uuid"},
    {FIELDS_NAME("provider"), .kind = FIELDS_TEXT, .min_chars = 1, .max_chars = RULES_PROVIDER_MAX,
     .invalid = "provider must be a UTF-8 string of 1 to 50 characters"},
    {FIELDS_NAME("model"), .kind = FIELDS_TEXT, .min_chars = 1, .max_chars = RULES_MODEL_MAX,
     .invalid = "model must be a UTF-8 string of 1 to 50 characters"},
};
static const struct fields_table usage_table = {usage_specs, 3,
                                                "unknown field; usage takes user_id, provider "
                                                "and model"};
enum { USAGE_USER, USAGE_PROVIDER, USAGE_MODEL };

/* A decimal the fields module read, as micro-dollars: at most 6 places. */
static bool spend_of(const struct fields_value *v, int64_t *out, struct rpc_error *e)
{
    if (money_parse(v->decimal.text, v->decimal.len, out))
        return true;
    return fields_error(e, "spend", "%s", SPEND_INVALID);
}

static bool reservation_of(const char *s, size_t len, struct limiter_settle_request *req,
                           struct rpc_error *e)
{
    if (limiter_parse_reservation(s, len, req->user_id, req->rid))
        return true;
    return fields_error(e, "reservation", "%s", RESERVATION_SHAPE);
}

/* The one map params of check and settle. */
static const msgpack_object_map *params_map(const struct rpc_message *m, const char *usage,
                                            struct rpc_error *e)
{
    if (m->params->size == 1 && m->params->ptr[0].type == MSGPACK_OBJECT_MAP)
        return &m->params->ptr[0].via.map;
    rpc_error_set(e, RPC_BAD_REQUEST, "%s", usage);
    return NULL;
}

static bool parse_check(const struct rpc_message *m, struct limiter_request *req,
                        struct rpc_error *e)
{
    const msgpack_object_map *map =
        params_map(m,
                   "check takes params [{\"user_id\": uuid, \"provider\": str, \"model\": str, "
                   "\"cost\": uint, \"tokens\": uint, \"spend\": decimal}]",
                   e);
    struct fields_value v[6];
    bool given[6];
    if (!map || !fields_parse(&check_table, map, v, given, e))
        return false;
    memcpy(req->user_id, v[CHECK_USER].uuid, 16);
    req->provider = v[CHECK_PROVIDER].text.ptr;
    req->provider_len = v[CHECK_PROVIDER].text.len;
    if (given[CHECK_MODEL]) {
        req->model = v[CHECK_MODEL].text.ptr;
        req->model_len = v[CHECK_MODEL].text.len;
    }
    req->amounts.cost = given[CHECK_COST] ? (uint32_t)v[CHECK_COST].i : 1;
    req->amounts.tokens = given[CHECK_TOKENS] ? (uint64_t)v[CHECK_TOKENS].i : 0;
    return !given[CHECK_SPEND] || spend_of(&v[CHECK_SPEND], &req->amounts.spend, e);
}

static bool parse_settle(const struct rpc_message *m, struct limiter_settle_request *req,
                         struct rpc_error *e)
{
    const msgpack_object_map *map =
        params_map(m,
                   "settle takes params [{\"reservation\": str, \"tokens\": uint, \"spend\": "
                   "decimal, \"cancel\": bool}]",
                   e);
    struct fields_value v[4];
    bool given[4];
    memset(req, 0, sizeof(*req));
    if (!map || !fields_parse(&settle_table, map, v, given, e) ||
        !reservation_of(v[SETTLE_RESERVATION].text.ptr, v[SETTLE_RESERVATION].text.len, req, e))
        return false;
    req->has_tokens = given[SETTLE_TOKENS];
    req->tokens = given[SETTLE_TOKENS] ? (uint64_t)v[SETTLE_TOKENS].i : 0;
    req->cancel = given[SETTLE_CANCEL] && v[SETTLE_CANCEL].b;
    req->has_spend = given[SETTLE_SPEND];
    return !given[SETTLE_SPEND] || spend_of(&v[SETTLE_SPEND], &req->spend, e);
}

/* ---- check and settle ---- */

/* The tag carries the msgid, and whether the call came as a notification (bit 32). */
#define TAG_NOTIFICATION (1ULL << 32)

/* Held before the limiter sees it: it may answer at once, from inside the call. */
static uint64_t hold(struct conn *c, const struct rpc_message *m)
{
    if (m->kind == RPC_KIND_NOTIFICATION) {
        conn_hold(c); /* bounded by listen.max_pending_requests like requests */
        return TAG_NOTIFICATION;
    }
    conn_ref(c);
    return m->msgid;
}

static void release(struct conn *c, uint64_t tag)
{
    if (tag & TAG_NOTIFICATION)
        conn_release(c);
    else
        conn_unref(c);
}

static void on_checked(void *arg, uint64_t tag, const struct check_result *r)
{
    struct conn *c = arg;
    if (!(tag & TAG_NOTIFICATION))
        check_answer_pack(conn_reply(c, (uint32_t)tag), r);
    release(c, tag);
}

enum conn_dispatch_result methods_check(struct limiter *l, struct conn *c,
                                        const struct rpc_message *m)
{
    struct rpc_error e;
    struct limiter_request req = {0};
    if (!parse_check(m, &req, &e))
        return conn_refuse(c, m, &e);
    uint64_t tag = hold(c, m);
    if (!limiter_check(l, &req, on_checked, c, tag, &e)) {
        release(c, tag);
        return conn_refuse(c, m, &e);
    }
    return CONN_DISPATCHED;
}

static void on_settled(void *arg, uint64_t tag, enum limiter_settled result)
{
    struct conn *c = arg;
    if (!(tag & TAG_NOTIFICATION)) {
        struct rpc_error e;
        if (result == LIMITER_UNKNOWN) {
            rpc_error_set(&e, RPC_UNKNOWN_RESERVATION,
                          "no such reservation: never made, or settled and older than "
                          "limits.reservation_ttl_s");
            conn_reply_error(c, (uint32_t)tag, &e);
        } else if (result == LIMITER_UNAVAILABLE) {
            rpc_error_set(&e, RPC_UNAVAILABLE,
                          "Redis cannot be reached; nothing was settled, send it again");
            e.retry_after_ms = 1000;
            conn_reply_error(c, (uint32_t)tag, &e);
        } else {
            msgpack_packer *pk = conn_reply(c, (uint32_t)tag);
            msgpack_pack_map(pk, 2);
            rpc_pack_str(pk, "settled");
            msgpack_pack_true(pk);
            rpc_pack_str(pk, "duplicate");
            result == LIMITER_DUPLICATE ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
        }
    }
    release(c, tag);
}

enum conn_dispatch_result methods_settle(struct limiter *l, struct conn *c,
                                         const struct rpc_message *m)
{
    struct rpc_error e;
    struct limiter_settle_request req;
    if (!parse_settle(m, &req, &e))
        return conn_refuse(c, m, &e);
    limiter_settle(l, &req, on_settled, c, hold(c, m));
    return CONN_DISPATCHED;
}

static void on_usage(void *arg, uint64_t tag, const struct usage_result *r)
{
    struct conn *c = arg;
    if (!(tag & TAG_NOTIFICATION))
        check_answer_pack_usage(conn_reply(c, (uint32_t)tag), r);
    release(c, tag);
}

enum conn_dispatch_result methods_usage(struct limiter *l, struct conn *c,
                                        const struct rpc_message *m)
{
    struct rpc_error e;
    const msgpack_object_map *map = params_map(
        m, "usage takes params [{\"user_id\": uuid, \"provider\": str, \"model\": str}]", &e);
    struct fields_value v[3];
    bool given[3];
    if (!map || !fields_parse(&usage_table, map, v, given, &e))
        return conn_refuse(c, m, &e);
    uint64_t tag = hold(c, m);
    if (!usage_ask(l, v[USAGE_USER].uuid, given[USAGE_PROVIDER] ? v[USAGE_PROVIDER].text.ptr : NULL,
                   given[USAGE_PROVIDER] ? v[USAGE_PROVIDER].text.len : 0,
                   given[USAGE_MODEL] ? v[USAGE_MODEL].text.ptr : NULL,
                   given[USAGE_MODEL] ? v[USAGE_MODEL].text.len : 0, on_usage, c, tag, &e)) {
        release(c, tag);
        return conn_refuse(c, m, &e);
    }
    return CONN_DISPATCHED;
}

/* ---- log_prompt's reservations ---- */

/* An event's cost_usd (already judged by the event's own validation) in micro-dollars; one
 * with more than 6 places is rounded up to the micro-dollar rather than refused here. */
static int64_t cost_micros(const msgpack_object *v)
{
    int64_t micros = 0;
    double d = 0;
    if (v->type == MSGPACK_OBJECT_STR) {
        if (money_parse(v->via.str.ptr, v->via.str.size, &micros))
            return micros;
        char text[64];
        size_t n = v->via.str.size < sizeof(text) - 1 ? v->via.str.size : sizeof(text) - 1;
        memcpy(text, v->via.str.ptr, n);
        text[n] = '\0';
        d = strtod(text, NULL);
    } else if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        d = (double)v->via.u64;
    } else if (v->type == MSGPACK_OBJECT_FLOAT32) {
        /* Read as the float32's own shortest decimal (0.1f is 0.1), as check's spend is. */
        char text[64];
        size_t n = fields_double_to_decimal(v->via.f64, true, text, sizeof(text));
        if (n > 0 && money_parse(text, n, &micros))
            return micros;
        d = v->via.f64;
    } else if (v->type == MSGPACK_OBJECT_FLOAT64) {
        d = v->via.f64;
    }
    if (money_from_double(d, &micros))
        return micros;
    double scaled = d * MONEY_SCALE;
    return d > 0 && scaled < (double)MONEY_MAX ? (int64_t)scaled + 1 : (d > 0 ? MONEY_MAX : 0);
}

/* What settles an event: its reservation, tokens_used, cost_usd and status. */
static bool event_settle(const msgpack_object_map *ev, const msgpack_object *reservation,
                         struct limiter_settle_request *req, struct rpc_error *e)
{
    if (reservation->type != MSGPACK_OBJECT_STR)
        return fields_error(e, "reservation", "%s", RESERVATION_SHAPE);
    if (!reservation_of(reservation->via.str.ptr, reservation->via.str.size, req, e))
        return false;
    req->has_tokens = req->has_spend = true; /* absent: 0, as PROTOCOL.md says */
    for (uint32_t i = 0; i < ev->size; i++) {
        const msgpack_object *k = &ev->ptr[i].key, *v = &ev->ptr[i].val;
        if (rpc_str_eq(k, "tokens_used") && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            req->tokens = v->via.u64 > (uint64_t)TOKENS_MAX ? (uint64_t)TOKENS_MAX : v->via.u64;
        else if (rpc_str_eq(k, "cost_usd"))
            req->spend = cost_micros(v);
        else if (rpc_str_eq(k, "status") && rpc_str_eq(v, "cancelled"))
            req->cancel = true;
    }
    return true;
}

/* The events with their `reservation` taken out, for the batcher (prompt_history has no such
 * column). Built only when some event has one. */
struct stripped {
    msgpack_object params[2];
    msgpack_object_array params_array;
    msgpack_object *events;
    msgpack_object_kv *pairs;
    struct limiter_settle_request *settles;
    uint32_t nsettles;
};

static bool strip_reservations(const struct rpc_message *m, struct stripped *s, struct rpc_error *e)
{
    memset(s, 0, sizeof(*s));
    if (m->params->size < 1 || m->params->size > 2 ||
        m->params->ptr[0].type != MSGPACK_OBJECT_ARRAY)
        return true; /* the batcher says what is wrong */
    const msgpack_object_array *events = &m->params->ptr[0].via.array;
    uint32_t with = 0, pairs = 0;
    for (uint32_t i = 0; i < events->size; i++) {
        if (events->ptr[i].type != MSGPACK_OBJECT_MAP)
            continue;
        const msgpack_object_map *ev = &events->ptr[i].via.map;
        for (uint32_t j = 0; j < ev->size; j++)
            if (rpc_str_eq(&ev->ptr[j].key, "reservation")) {
                with++;
                break;
            }
        pairs += ev->size;
    }
    if (!with)
        return true;
    s->events = xcalloc(events->size, sizeof(*s->events));
    s->pairs = xcalloc(pairs ? pairs : 1, sizeof(*s->pairs));
    s->settles = xcalloc(with, sizeof(*s->settles));
    msgpack_object_kv *kv = s->pairs;
    for (uint32_t i = 0; i < events->size; i++) {
        s->events[i] = events->ptr[i];
        if (events->ptr[i].type != MSGPACK_OBJECT_MAP)
            continue;
        const msgpack_object_map *ev = &events->ptr[i].via.map;
        msgpack_object_kv *first = kv;
        const msgpack_object *reservation = NULL;
        for (uint32_t j = 0; j < ev->size; j++) {
            if (!rpc_str_eq(&ev->ptr[j].key, "reservation")) {
                *kv++ = ev->ptr[j];
            } else if (reservation) {
                fields_error(e, "reservation", "reservation is given twice");
                e->index = i;
                return false;
            } else {
                reservation = &ev->ptr[j].val;
            }
        }
        s->events[i].via.map.ptr = first;
        s->events[i].via.map.size = (uint32_t)(kv - first);
        if (reservation && reservation->type != MSGPACK_OBJECT_NIL &&
            !event_settle(ev, reservation, &s->settles[s->nsettles++], e)) {
            e->index = i;
            return false;
        }
    }
    s->params_array.size = m->params->size;
    s->params_array.ptr = s->params;
    s->params[0] = m->params->ptr[0];
    s->params[0].via.array.ptr = s->events;
    if (m->params->size > 1)
        s->params[1] = m->params->ptr[1];
    return true;
}

static void stripped_free(struct stripped *s)
{
    free(s->events);
    free(s->pairs);
    free(s->settles);
}

enum conn_dispatch_result methods_log_prompt(struct methods_log *ml, struct limiter *l,
                                             struct conn *c, const struct rpc_message *m)
{
    struct stripped s;
    struct rpc_error e;
    if (!strip_reservations(m, &s, &e)) {
        stripped_free(&s);
        methods_log_count_refused(ml, m, &e);
        return conn_refuse(c, m, &e);
    }
    if (!s.events)
        return methods_log(ml, EVENT_PROMPT, c, m);
    struct rpc_message copy = *m;
    copy.params = &s.params_array;
    /* Accepted means queued, which the batcher counts, synchronously. A settle waits for that,
     * so that a refused request (nothing of it kept), or a notification told to wait (it comes
     * again), settles nothing. */
    uint64_t accepted = ml->batcher->stats.events_accepted;
    enum conn_dispatch_result result = methods_log(ml, EVENT_PROMPT, c, &copy);
    if (ml->batcher->stats.events_accepted != accepted)
        for (uint32_t i = 0; i < s.nsettles; i++)
            limiter_settle_later(l, &s.settles[i]);
    stripped_free(&s);
    return result;
}

/* ---- stats ---- */

/* Counts by a windowed rule's reason: minute_limit ... month_limit. */
static void pack_by_window(msgpack_packer *pk, const uint64_t *count)
{
    for (int w = 0; w < RULES_WINDOWS; w++) {
        char name[24];
        snprintf(name, sizeof(name), "%s_limit", rules_window_name(w));
        rpc_pack_u64(pk, name, count[w]);
    }
}

/* What shadow rules would have denied, by the rule's pattern (shadows.h). */
static void pack_shadow_rules(msgpack_packer *pk, const struct shadows *s)
{
    rpc_pack_str(pk, "shadow_denied_rules");
    msgpack_pack_map(pk, s->n + (s->other ? 1 : 0));
    for (uint32_t i = 0; i < s->n; i++)
        rpc_pack_u64(pk, s->entry[i].pattern, s->entry[i].count);
    if (s->other)
        rpc_pack_u64(pk, SHADOWS_OTHER, s->other);
}

void methods_check_pack_stats(const struct limiter *l, msgpack_packer *pk)
{
    struct ledger_figures f;
    ledger_read(&l->ledger, (uint64_t)clock_wall_ms() / 1000, &f);
    msgpack_pack_map(pk, 40);
    rpc_pack_u64(pk, "checks", l->stats.checks);
    rpc_pack_u64(pk, "allowed", l->stats.allowed);
    rpc_pack_str(pk, "denied");
    msgpack_pack_map(pk, RULES_WINDOWS + 2);
    pack_by_window(pk, l->stats.denied);
    rpc_pack_u64(pk, USAGED_REASON_CONCURRENCY_LIMIT, l->stats.denied_concurrency);
    rpc_pack_u64(pk, "provider_disabled", l->stats.denied_disabled);
    /* What shadow rules would have denied, by the reason they would have given. */
    rpc_pack_str(pk, "shadow_denied");
    msgpack_pack_map(pk, RULES_WINDOWS + 1);
    pack_by_window(pk, l->stats.shadow_denied);
    rpc_pack_u64(pk, USAGED_REASON_CONCURRENCY_LIMIT, l->stats.shadow_denied[RULES_WINDOWS]);
    pack_shadow_rules(pk, &l->shadows);
    rpc_pack_u64(pk, "degraded", l->stats.degraded);
    rpc_pack_u64(pk, "unknown_provider", l->stats.unknown_provider);
    rpc_pack_u64(pk, "unlimited", l->stats.unlimited);
    rpc_pack_u64(pk, "cache_hits", l->stats.cache_hits);
    rpc_pack_u64(pk, "coalesced", l->stats.coalesced);
    rpc_pack_u64(pk, "batched", l->stats.batched);
    rpc_pack_u64(pk, "key_errors", l->stats.key_errors);
    rpc_pack_u64(pk, "redis_round_trips", l->stats.script_calls);
    rpc_pack_u64(pk, "providers_loaded", l->rules.ndb_providers);
    rpc_pack_u64(pk, "rules_loaded", l->rules.ndb + l->rules.nconfig_rules);
    rpc_pack_u64(pk, "limits_loads", l->rules.loads);
    rpc_pack_u64(pk, "limits_notifications", l->rules.notifications);
    rpc_pack_u64(pk, "reservations", l->stats.reservations);
    rpc_pack_u64(pk, "settles", l->stats.settles);
    /* This daemon's share of the reservations and slots in Redis (ledger.h): may be negative;
     * summed over the daemons sharing the Redis, exact. */
    rpc_pack_i64(pk, "reservations_open", f.open);
    rpc_pack_i64(pk, "reservations_expired", f.expired);
    rpc_pack_i64(pk, "concurrent_slots_in_use", f.slots);
    rpc_pack_u64(pk, "concurrent_slots_taken", l->ledger.slots_taken);
    rpc_pack_u64(pk, "concurrent_slots_freed", l->ledger.slots_freed);
    rpc_pack_i64(pk, "concurrent_slots_lapsed", f.slots_lapsed);
    rpc_pack_u64(pk, "settles_duplicate", l->stats.settles_duplicate);
    rpc_pack_u64(pk, "settles_unknown", l->stats.settles_unknown);
    rpc_pack_u64(pk, "settles_queued", l->stats.settles_queued);
    rpc_pack_u64(pk, "settles_waiting", l->nlater);
    rpc_pack_u64(pk, "settles_dropped", l->stats.settles_dropped);
    rpc_pack_u64(pk, "alerts_raised", l->alerts.stats.raised);
    rpc_pack_u64(pk, "alerts_written", l->alerts.stats.written);
    rpc_pack_u64(pk, "alerts_duplicate", l->alerts.stats.duplicates);
    rpc_pack_u64(pk, "alerts_waiting", alerts_waiting(&l->alerts));
    rpc_pack_u64(pk, "alerts_dropped", l->alerts.stats.dropped);
    rpc_pack_u64(pk, "alerts_spooled", l->alerts.stats.spooled);
    rpc_pack_u64(pk, "alerts_on_disk", alerts_on_disk(&l->alerts));
    rpc_pack_u64(pk, "alerts_corrupt", l->alerts.stats.corrupt);
    rpc_pack_str(pk, "redis");
    redis_pack_stats(&l->redis, pk);
    rpc_pack_str(pk, "postgres");
    rpc_pack_str(pk, pg_state_name(l->rules.pg.state));
}
