/* redis_cluster: Redis Cluster (redis.cluster: seed nodes).
 *
 * The slot map comes from CLUSTER SLOTS, asked of any connected node: at start, on a MOVED, and
 * when a node's connection is lost (its slots may have moved to a replica). One redis_conn per
 * primary in the map, each with its own handshake and reconnect. A call goes to the node that
 * owns its slot; a MOVED reply updates that slot and sends the call there, an ASK sends it once
 * to the importing node behind ASKING, a TRYAGAIN (keys of a migrating slot on both nodes, or some
 * on neither) sends it again 10 ms later; a call keeps what is left of its own timeout through
 * all of it, and is redirected at most REDIS_CLUSTER_MAX_REDIRECTS times (an ASK that sends a
 * call the importing node answered TRYAGAIN back there again counts once: that is waiting). A node
 * that is down answers only its own slots' calls with REDIS_CALL_DOWN. The calls of one script must
 * declare every key they touch: routing during a migration looks at those alone. */
#ifndef USAGED_REDIS_CLUSTER_H
#define USAGED_REDIS_CLUSTER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "redis_conn.h"

#define REDIS_CLUSTER_MAX_REDIRECTS 5

struct redis_client;
struct redis_cluster;

struct redis_cluster *redis_cluster_new(struct redis_client *r, uv_loop_t *loop,
                                        const char *const *seeds, size_t count,
                                        uint32_t timeout_ms);
void redis_cluster_start(struct redis_cluster *cl);
/* args, len: argc arguments in RESP (redis_eval_resp). */
void redis_cluster_eval(struct redis_cluster *cl, uint16_t slot, int numkeys, int argc,
                        const char *args, size_t len, uint32_t timeout_ms, redis_reply_fn cb,
                        void *arg);
/* Closes every node; redis_part_closed runs when all are gone, and cl is freed. */
void redis_cluster_close(struct redis_cluster *cl);

#endif
