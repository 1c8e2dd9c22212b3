/* redis_sentinel: finds the primary through Redis Sentinel and keeps the client's connection on
 * it (redis.sentinels, redis.sentinel_master).
 *
 * One session at a time with one sentinel: AUTH with the client's credentials when it has some
 * (a sentinel without a password refuses it, harmlessly), ask SENTINEL get-master-addr-by-name,
 * then SUBSCRIBE
 * +switch-master on the same connection. The primary's connection (a managed redis_conn, which
 * confirms with ROLE) is sent to the named address; it moves on +switch-master, and when it is
 * lost (a dead primary, -READONLY, ROLE not master) a new session asks again, with backoff. A
 * sentinel that does not answer, does not know the name or goes away is left for the next. While
 * no primary is connected, the client is down and the fallback policy answers. */
#ifndef USAGED_REDIS_SENTINEL_H
#define USAGED_REDIS_SENTINEL_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

struct redis_client;
struct redis_conn;
struct redis_sentinel;

struct redis_sentinel *redis_sentinel_new(struct redis_client *r, uv_loop_t *loop,
                                          const char *const *sentinels, size_t count,
                                          const char *master, struct redis_conn *primary);
void redis_sentinel_start(struct redis_sentinel *s);
/* The primary's connection came up or went down. */
void redis_sentinel_primary_state(struct redis_sentinel *s, bool up);
/* Ends the session; redis_part_closed runs when it is gone, and s is freed. */
void redis_sentinel_close(struct redis_sentinel *s);

#endif
