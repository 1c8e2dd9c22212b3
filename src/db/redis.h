/* redis: the limiter's Redis, in whichever of Redis's deployments it runs (redis.* keys).
 *
 * - one server (redis.address): one connection (redis_conn.h), reconnected with backoff;
 * - Sentinel (redis.sentinels, redis.sentinel_master): the sentinels are asked for the primary,
 *   which must confirm with ROLE; a lost connection, a -READONLY reply or Sentinel's
 *   +switch-master moves the connection to the primary the sentinels name (redis_sentinel.h);
 * - Cluster (redis.cluster): the slot map from CLUSTER SLOTS, one connection per primary, each
 *   call sent to the node that owns its first key's slot, MOVED and ASK followed
 *   (redis_cluster.h). Every KEY of one call must hash to one slot (redis_key_slot).
 * Every connection authenticates first when redis.password_file is set (with redis.username as
 * the ACL user). The password is read once, at start; it appears in no log line, stat or error.
 *
 * Calls run the registered Lua script; each callback runs exactly once, within its timeout. */
#ifndef USAGED_REDIS_H
#define USAGED_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <msgpack.h>
#include <stdint.h>
#include <uv.h>

#include "redis_conn.h"

struct config;
struct redis_sentinel;
struct redis_cluster;

enum redis_mode { REDIS_MODE_SINGLE = 0, REDIS_MODE_SENTINEL, REDIS_MODE_CLUSTER };

#define REDIS_SLOTS 16384

struct redis_client {
    uv_loop_t *loop;
    enum redis_mode mode;
    struct redis_conn_setup setup; /* shared by every connection */
    char *username;
    char *password; /* from redis.password_file; NULL: no AUTH */
    char *script;
    char *address;            /* one server's, or the primary's the sentinels named */
    bool password_missing;    /* redis.password_file could not be read: never connects */
    struct redis_conn single; /* one server, or the Sentinel-steered primary */
    struct redis_sentinel *sentinel;
    struct redis_cluster *cluster;
    bool up;
    struct redis_stats stats;
    void (*on_state)(struct redis_client *r, bool up, void *arg);
    void *state_arg;
    void (*on_closed)(struct redis_client *r, void *arg);
    void *closed_arg;
    int closing;     /* parts still closing */
    struct buf args; /* redis_eval's arguments, formatted */
};

/* Reads redis.* from config (and the password from redis.password_file, now, before the loop
 * runs). on_state runs when the client goes up (a primary, or a slot map, is known and
 * connected) or down. */
void redis_init(struct redis_client *r, uv_loop_t *loop, const struct config *config,
                const char *script, void (*on_state)(struct redis_client *r, bool up, void *arg),
                void *arg);
void redis_start(struct redis_client *r);

/* Runs the script with string arguments, the first numkeys of them its KEYS (in Cluster, all in
 * one slot: the call goes to the node owning argv[0]'s); cb runs once, within timeout_ms. When
 * the server (or the slot's node) is not connected, cb runs at once with REDIS_CALL_DOWN. */
void redis_eval(struct redis_client *r, int numkeys, int argc, const char *const *argv,
                const size_t *arg_lens, uint32_t timeout_ms, redis_reply_fn cb, void *arg);
/* The same with the arguments already in RESP (args, len: argc of them, each "$" length CRLF
 * bytes CRLF, as redis_conn_put_arg and redis_conn_close_arg write them): the check path writes
 * them so, and nothing formats them twice. */
void redis_eval_resp(struct redis_client *r, int numkeys, int argc, const char *args, size_t len,
                     uint32_t timeout_ms, redis_reply_fn cb, void *arg);

/* Some server can take calls (in Cluster: the slot map is known and a node is connected; the
 * slots of a node that is down still answer REDIS_CALL_DOWN). */
static inline bool redis_is_up(const struct redis_client *r)
{
    return r->up;
}

static inline bool redis_is_cluster(const struct redis_client *r)
{
    return r->mode == REDIS_MODE_CLUSTER;
}

/* The Cluster slot of a key: CRC16 of its hash tag (the part between the first { and the next
 * }, when not empty) or of the whole key, modulo 16384. Calls are grouped by it. */
uint16_t redis_key_slot(const char *key, size_t len);

/* For a Redis Cluster, where one script call may only hold the KEYS of one slot: splits a list
 * of n items (linked through the pointer at next_offset in each) into runs of one slot each,
 * in the list's order within a run, and calls send(arg, run, count) for each run, its last item
 * linked to NULL. Every run is linked before the first is sent (a send may free its items). */
void redis_send_by_slot(void *list, size_t n, size_t next_offset,
                        uint16_t (*slot_of)(const void *item, void *arg),
                        void (*send)(void *arg, void *run, size_t n), void *arg);

/* Closes for good; calls in flight complete with REDIS_CALL_DOWN; on_closed runs at the end. */
void redis_close(struct redis_client *r, void (*on_closed)(struct redis_client *r, void *arg),
                 void *arg);

/* The "redis" map of stats: state, mode, counters, latency. No password, ever. */
void redis_pack_stats(const struct redis_client *r, msgpack_packer *pk);

/* An estimate of the q-quantile (0..1) of reply latency, in microseconds. */
uint64_t redis_latency_quantile(const struct redis_stats *s, double q);

/* ---- for the modes' modules ---- */

/* A mode's module reports its state (each failed attempt too); the client tells its owner. */
void redis_set_up(struct redis_client *r, bool up);
/* A mode's module has closed. */
void redis_part_closed(struct redis_client *r);

#endif
