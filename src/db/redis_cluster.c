/* redis_cluster: see redis_cluster.h.
 *
 * Nodes are only ever closed from the timer, never inside a callback of their own connection:
 * a new slot map marks the nodes it no longer names, and the timer sweeps them. */
#include "redis_cluster.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "redis.h"
#include "xalloc.h"

#define REFRESH_MIN_MS 100   /* between two CLUSTER SLOTS */
#define REFRESH_RETRY_MS 500 /* after one that failed */
#define TRYAGAIN_MS 10       /* before a call refused with TRYAGAIN goes again */

struct cluster_node {
    struct redis_cluster *cl;
    struct redis_conn conn;
    char *address; /* "host:port" as the map (or the seed list) names it */
    bool in_map;   /* owns slots in the last map */
    bool ever_up;  /* has been connected: while it reconnects, its calls fail at once */
    struct cluster_node *next;
};

struct redis_cluster {
    struct redis_client *r;
    uv_loop_t *loop;
    char **seeds;
    size_t nseeds;
    uint32_t timeout_ms; /* of a CLUSTER SLOTS */
    struct cluster_node *nodes;
    struct cluster_node **slots; /* REDIS_SLOTS of them, NULL where no node is known */
    bool map_known;
    bool refreshing;       /* a CLUSTER SLOTS is in flight */
    bool refresh_due;      /* the timer asks for the map */
    bool sweep_due;        /* the timer closes the nodes out of the map */
    uint64_t refreshed_ms; /* loop time the last CLUSTER SLOTS was answered */
    uv_timer_t timer;
    struct cluster_call *retry; /* calls waiting to go again after a TRYAGAIN */
    uv_timer_t retry_timer;
    bool closing;
    int open; /* nodes still closing, and the timers */
    char last_error[256];
    uint64_t last_logged_ms;
};

struct cluster_call {
    struct redis_cluster *cl;
    redis_reply_fn cb;
    void *arg;
    uint64_t deadline_ms; /* loop time */
    uint16_t slot;
    uint8_t redirects;
    bool asked; /* last sent behind ASKING */
    int numkeys;
    int argc;
    struct cluster_call *next; /* in cl->retry */
    size_t len;                /* of args */
    char *args; /* in RESP: a copy, for a redirect after the caller's buffers are gone */
};

static void refresh_soon(struct redis_cluster *cl, uint64_t delay_ms);
static void timer_soon(struct redis_cluster *cl, uint64_t delay_ms);

static void update_up(struct redis_cluster *cl)
{
    if (cl->closing)
        return;
    bool up = false;
    for (struct cluster_node *n = cl->nodes; n && !up; n = n->next)
        up = n->in_map && n->conn.connected;
    redis_set_up(cl->r, cl->map_known && up);
}

static void on_node_state(struct redis_conn *c, bool up, void *arg)
{
    (void)c;
    struct cluster_node *n = arg;
    struct redis_cluster *cl = n->cl;
    n->ever_up |= up;
    /* A node that came up may be the first to ask for the map; one that went down may have
     * handed its slots to a replica. */
    if (!up || !cl->map_known)
        refresh_soon(cl, 0);
    update_up(cl);
}

static struct cluster_node *node_find(struct redis_cluster *cl, const char *address)
{
    for (struct cluster_node *n = cl->nodes; n; n = n->next)
        if (strcmp(n->address, address) == 0)
            return n;
    return NULL;
}

static struct cluster_node *node_get(struct redis_cluster *cl, const char *address)
{
    struct cluster_node *n = node_find(cl, address);
    if (n)
        return n;
    n = xcalloc(1, sizeof(*n));
    n->cl = cl;
    n->address = xstrdup(address);
    n->next = cl->nodes;
    cl->nodes = n;
    cl->open++;
    redis_conn_init(&n->conn, cl->loop, &cl->r->setup, on_node_state, n);
    redis_conn_connect(&n->conn, address);
    return n;
}

static void cluster_free(struct redis_cluster *cl)
{
    struct redis_client *r = cl->r;
    for (size_t i = 0; i < cl->nseeds; i++)
        free(cl->seeds[i]);
    free(cl->seeds);
    free(cl->slots);
    free(cl);
    redis_part_closed(r);
}

static void part_closed(struct redis_cluster *cl)
{
    if (--cl->open == 0 && cl->closing)
        cluster_free(cl);
}

static void on_node_closed(struct redis_conn *c, void *arg)
{
    (void)c;
    struct cluster_node *n = arg;
    struct redis_cluster *cl = n->cl;
    free(n->address);
    free(n);
    part_closed(cl);
}

static void node_close(struct cluster_node *n)
{
    redis_conn_close(&n->conn, on_node_closed, n);
}

/* Closes the nodes the last map does not name (seeds the cluster knows by another name, nodes
 * gone from the cluster). */
static void sweep(struct redis_cluster *cl)
{
    struct cluster_node **link = &cl->nodes;
    while (*link) {
        struct cluster_node *n = *link;
        if (n->in_map) {
            link = &n->next;
            continue;
        }
        *link = n->next;
        node_close(n);
    }
}

/* ---- the slot map ---- */

static void cluster_log(struct redis_cluster *cl, const char *why)
{
    uint64_t now = uv_now(cl->loop);
    if (strcmp(why, cl->last_error) != 0 || now - cl->last_logged_ms >= 60000) {
        log_warn("redis: cluster: %s", why);
        cl->last_logged_ms = now;
    }
    snprintf(cl->last_error, sizeof(cl->last_error), "%s", why);
}

/* One entry of CLUSTER SLOTS: [start, end, [ip, port, id, ...], replicas...]. An empty ip is
 * the asked node's own (a node that does not know its address). */
static bool slot_range(const redisReply *e, const char *asked_host, long long *start,
                       long long *end, char *addr, size_t addrlen)
{
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
        e->element[0]->type != REDIS_REPLY_INTEGER || e->element[1]->type != REDIS_REPLY_INTEGER)
        return false;
    const redisReply *m = e->element[2];
    if (m->type != REDIS_REPLY_ARRAY || m->elements < 2 ||
        m->element[0]->type != REDIS_REPLY_STRING || m->element[1]->type != REDIS_REPLY_INTEGER)
        return false;
    *start = e->element[0]->integer;
    *end = e->element[1]->integer;
    if (*start < 0 || *end >= REDIS_SLOTS || *start > *end)
        return false;
    const char *ip = m->element[0]->len ? m->element[0]->str : asked_host;
    snprintf(addr, addrlen, strchr(ip, ':') ? "[%s]:%lld" : "%s:%lld", ip, m->element[1]->integer);
    return true;
}

static void on_slots(enum redis_status status, const redisReply *reply, void *arg)
{
    struct cluster_node *asked = arg;
    struct redis_cluster *cl = asked->cl;
    cl->refreshing = false;
    cl->refreshed_ms = uv_now(cl->loop);
    if (cl->closing)
        return;
    if (status != REDIS_CALL_OK || reply->type != REDIS_REPLY_ARRAY) {
        char why[300];
        snprintf(why, sizeof(why), "CLUSTER SLOTS at %s failed: %s", asked->address,
                 status == REDIS_CALL_TIMEOUT       ? "timeout"
                 : status == REDIS_CALL_DOWN        ? "connection lost"
                 : reply->type == REDIS_REPLY_ERROR ? reply->str
                                                    : "unexpected reply");
        cluster_log(cl, why);
        refresh_soon(cl, REFRESH_RETRY_MS);
        return;
    }
    char asked_host[256];
    uint16_t port;
    if (!config_split_host_port(asked->address, asked_host, sizeof(asked_host), &port))
        snprintf(asked_host, sizeof(asked_host), "127.0.0.1");
    struct cluster_node **slots = xcalloc(REDIS_SLOTS, sizeof(*slots));
    for (struct cluster_node *n = cl->nodes; n; n = n->next)
        n->in_map = false;
    size_t covered = 0;
    for (size_t i = 0; i < reply->elements; i++) {
        long long start, end;
        char addr[300];
        if (!slot_range(reply->element[i], asked_host, &start, &end, addr, sizeof(addr)))
            continue;
        struct cluster_node *n = node_get(cl, addr);
        n->in_map = true;
        for (long long s = start; s <= end; s++)
            slots[s] = n;
        covered += (size_t)(end - start + 1);
    }
    free(cl->slots);
    cl->slots = slots;
    if (!cl->map_known || covered < REDIS_SLOTS) {
        char why[200];
        snprintf(why, sizeof(why), "slot map from %s: %zu of %d slots served", asked->address,
                 covered, REDIS_SLOTS);
        if (covered < REDIS_SLOTS)
            cluster_log(cl, why);
        else
            log_info("redis: cluster: %s", why);
    }
    cl->map_known = true;
    cl->sweep_due = true;
    timer_soon(cl, 0);
    update_up(cl);
}

static void do_refresh(struct redis_cluster *cl)
{
    cl->refresh_due = false;
    struct cluster_node *pick = NULL;
    for (struct cluster_node *n = cl->nodes; n; n = n->next)
        if (n->conn.connected && (!pick || (n->in_map && !pick->in_map)))
            pick = n;
    if (!pick) {
        /* Nobody to ask: the seeds again (their connects ask when they come up). */
        for (size_t i = 0; i < cl->nseeds; i++)
            node_get(cl, cl->seeds[i]);
        return;
    }
    const char *argv[] = {"CLUSTER", "SLOTS"};
    size_t lens[] = {7, 5};
    cl->refreshing = true;
    redis_conn_command(&pick->conn, 2, argv, lens, cl->timeout_ms, on_slots, pick);
}

static void on_timer(uv_timer_t *t)
{
    struct redis_cluster *cl = t->data;
    if (cl->closing)
        return;
    if (cl->sweep_due) {
        cl->sweep_due = false;
        sweep(cl);
    }
    if (cl->refresh_due && !cl->refreshing) {
        uint64_t now = uv_now(cl->loop);
        if (cl->refreshed_ms && now - cl->refreshed_ms < REFRESH_MIN_MS) {
            uv_timer_start(&cl->timer, on_timer, REFRESH_MIN_MS - (now - cl->refreshed_ms), 0);
            return;
        }
        do_refresh(cl);
    }
}

/* Runs the timer within delay_ms (sooner if it is already due sooner). */
static void timer_soon(struct redis_cluster *cl, uint64_t delay_ms)
{
    if (cl->closing)
        return;
    if (uv_is_active((uv_handle_t *)&cl->timer) && uv_timer_get_due_in(&cl->timer) <= delay_ms)
        return;
    uv_timer_start(&cl->timer, on_timer, delay_ms, 0);
}

/* Asks for the map after delay_ms (at most one CLUSTER SLOTS in flight, one per 100 ms). */
static void refresh_soon(struct redis_cluster *cl, uint64_t delay_ms)
{
    cl->refresh_due = true;
    timer_soon(cl, delay_ms);
}

/* ---- calls ---- */

static void call_send(struct cluster_call *cc, struct cluster_node *n, bool asking);

static bool redirect_target(const char *err, const char *kind, char *addr, size_t addrlen)
{
    size_t kl = strlen(kind);
    if (strncmp(err, kind, kl) != 0 || err[kl] != ' ')
        return false;
    const char *sp = strchr(err + kl + 1, ' ');
    if (!sp || !sp[1])
        return false;
    snprintf(addr, addrlen, "%s", sp + 1);
    return true;
}

static void call_done(struct cluster_call *cc, enum redis_status status, const redisReply *reply)
{
    cc->cb(status, reply, cc->arg);
    free(cc);
}

static void on_retry_timer(uv_timer_t *t)
{
    struct redis_cluster *cl = t->data;
    struct cluster_call *cc = cl->retry;
    cl->retry = NULL;
    while (cc) {
        struct cluster_call *next = cc->next;
        struct cluster_node *n = cl->slots ? cl->slots[cc->slot] : NULL;
        if (n)
            call_send(cc, n, false);
        else
            call_done(cc, REDIS_CALL_DOWN, NULL);
        cc = next;
    }
}

/* Sends the call again (to its slot's node) TRYAGAIN_MS from now. */
static void retry_later(struct cluster_call *cc)
{
    struct redis_cluster *cl = cc->cl;
    cc->next = cl->retry;
    cl->retry = cc;
    if (!uv_is_active((uv_handle_t *)&cl->retry_timer))
        uv_timer_start(&cl->retry_timer, on_retry_timer, TRYAGAIN_MS, 0);
}

static void on_call_reply(enum redis_status status, const redisReply *reply, void *arg)
{
    struct cluster_call *cc = arg;
    struct redis_cluster *cl = cc->cl;
    if (status == REDIS_CALL_DOWN) {
        refresh_soon(cl, 0);
    } else if (status == REDIS_CALL_OK && reply->type == REDIS_REPLY_ERROR && !cl->closing) {
        char addr[300];
        bool moved = redirect_target(reply->str, "MOVED", addr, sizeof(addr));
        bool ask = !moved && redirect_target(reply->str, "ASK", addr, sizeof(addr));
        if ((moved || ask) && cc->redirects < REDIS_CLUSTER_MAX_REDIRECTS) {
            cc->redirects++;
            cl->r->stats.redirects++;
            struct cluster_node *n = node_get(cl, addr);
            if (moved) {
                /* The slot has moved for good: later calls go there at once; the rest of the
                 * map is asked for, since a resharding moves slots by the hundred. */
                n->in_map = true;
                cl->slots[cc->slot] = n;
                refresh_soon(cl, 0);
            }
            call_send(cc, n, ask);
            return;
        }
        if (strncmp(reply->str, "TRYAGAIN", 8) == 0) {
            /* Keys of a slot being migrated, some moved and some not yet (or some on neither
             * node: a key the call makes): a moment later they all are, or the slot has moved.
             * One that an ASK sent here goes back to its slot's node, which answers the same ASK
             * again: that is waiting, not one more redirect. */
            if (cc->asked) {
                cc->redirects--;
                cl->r->stats.redirects--;
            }
            retry_later(cc);
            return;
        }
        if (strncmp(reply->str, "CLUSTERDOWN", 11) == 0)
            refresh_soon(cl, REFRESH_RETRY_MS);
    }
    call_done(cc, status, reply);
}

static void call_send(struct cluster_call *cc, struct cluster_node *n, bool asking)
{
    uint64_t now = uv_now(cc->cl->loop);
    if (now >= cc->deadline_ms) {
        cc->cl->r->stats.timeouts++;
        call_done(cc, REDIS_CALL_TIMEOUT, NULL);
        return;
    }
    if (!n->conn.connected) {
        if (!n->ever_up && n->conn.connecting) {
            /* A node first met (at start, or named by a MOVED or an ASK): its connect is a
             * moment away. The call waits, within its timeout, and goes again to its slot's
             * node (which says ASK again, if that is how it came here) by the retry timer.
             * Waiting is no redirect: an ASK that will come again is not counted twice. */
            if (asking)
                cc->redirects--;
            retry_later(cc);
            return;
        }
        call_done(cc, REDIS_CALL_DOWN, NULL);
        return;
    }
    cc->asked = asking;
    redis_conn_eval(&n->conn, cc->numkeys, cc->argc, cc->args, cc->len,
                    (uint32_t)(cc->deadline_ms - now), asking, on_call_reply, cc);
}

void redis_cluster_eval(struct redis_cluster *cl, uint16_t slot, int numkeys, int argc,
                        const char *args, size_t len, uint32_t timeout_ms, redis_reply_fn cb,
                        void *arg)
{
    struct cluster_node *n = cl->slots ? cl->slots[slot] : NULL;
    bool first_connect = n && !n->ever_up && n->conn.connecting;
    if (!n || (!n->conn.connected && !first_connect) || cl->closing) {
        if (!n)
            refresh_soon(cl, 0);
        cb(REDIS_CALL_DOWN, NULL, arg);
        return;
    }
    /* One allocation: the call, then the arguments. */
    struct cluster_call *cc = xmalloc(sizeof(*cc) + len);
    cc->cl = cl;
    cc->cb = cb;
    cc->arg = arg;
    cc->deadline_ms = uv_now(cl->loop) + timeout_ms;
    cc->slot = slot;
    cc->redirects = 0;
    cc->asked = false;
    cc->numkeys = numkeys;
    cc->argc = argc;
    cc->len = len;
    cc->args = (char *)(cc + 1);
    memcpy(cc->args, args, len);
    call_send(cc, n, false);
}

/* ---- lifecycle ---- */

struct redis_cluster *redis_cluster_new(struct redis_client *r, uv_loop_t *loop,
                                        const char *const *seeds, size_t count, uint32_t timeout_ms)
{
    struct redis_cluster *cl = xcalloc(1, sizeof(*cl));
    cl->r = r;
    cl->loop = loop;
    cl->seeds = xcalloc(count, sizeof(*cl->seeds));
    for (size_t i = 0; i < count; i++)
        cl->seeds[i] = xstrdup(seeds[i]);
    cl->nseeds = count;
    cl->timeout_ms = timeout_ms;
    uv_timer_init(loop, &cl->timer);
    cl->timer.data = cl;
    uv_timer_init(loop, &cl->retry_timer);
    cl->retry_timer.data = cl;
    cl->open = 2; /* the timers */
    return cl;
}

void redis_cluster_start(struct redis_cluster *cl)
{
    for (size_t i = 0; i < cl->nseeds; i++)
        node_get(cl, cl->seeds[i]);
}

static void on_timer_closed(uv_handle_t *h)
{
    part_closed(h->data);
}

void redis_cluster_close(struct redis_cluster *cl)
{
    cl->closing = true;
    struct cluster_node *n = cl->nodes;
    cl->nodes = NULL;
    while (n) {
        struct cluster_node *next = n->next;
        node_close(n);
        n = next;
    }
    struct cluster_call *cc = cl->retry;
    cl->retry = NULL;
    while (cc) {
        struct cluster_call *next = cc->next;
        call_done(cc, REDIS_CALL_DOWN, NULL);
        cc = next;
    }
    uv_close((uv_handle_t *)&cl->timer, on_timer_closed);
    uv_close((uv_handle_t *)&cl->retry_timer, on_timer_closed);
}
