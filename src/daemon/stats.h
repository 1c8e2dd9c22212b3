/* stats: the `stats` method's answer. Each module keeps its own counters; this module gathers
 * them into one map of sections (connections, messages, errors, ingest, limits, ...), the same
 * figures usagectl shows and the metrics endpoint exports. */
#ifndef USAGED_STATS_H
#define USAGED_STATS_H

#include <msgpack.h>

struct daemon;

void stats_pack(const struct daemon *d, msgpack_packer *pk);
/* One line of the main figures (connections, queued and written rows, PostgreSQL), for
 * systemd's STATUS= (systemctl status shows it). */
void stats_summary(const struct daemon *d, char *out, size_t len);

#endif
