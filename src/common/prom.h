/* prom: the stats map (the `stats` method's answer) as the Prometheus text exposition format,
 * version 0.0.4. Pure: a msgpack_object in, text in a buf out; no I/O, no clock. Both the metrics
 * endpoint and `usagectl stats --prometheus` print through it, so the two always agree.
 *
 * The rules, kept generic so that a section a module adds to `stats` shows up with no change here:
 *   - a numeric or boolean leaf becomes one sample named after its path in the map, prefix first,
 *     every character outside [a-zA-Z0-9_] turned into '_': connections.open is
 *     usaged_connections_open; true and false are 1 and 0;
 *   - a map under one of a few label-keyed section names (errors, dropped_notifications and
 *     events_rejected by error code, tables by table name, views by view name, providers by
 *     provider name, denied by reason, shadow_denied_rules by rule) does not add its keys to the
 * metric name: each key becomes the value of the section's label instead, and what is under it is
 * walked as if it stood in the section's place: errors.bad_request is
 * usaged_errors{code="bad_request"}, and ingest.tables.api_usage_logs.rows_written is
 *     usaged_ingest_tables_rows_written{table="api_usage_logs"};
 *   - a non-empty string leaf becomes an info sample of value 1 carrying the string as a label
 *     named after its key: usaged_version_info{version="0.1.0"} 1;
 *   - nil, arrays, bin and ext are left out.
 * Every family is a gauge (the map does not say which figures only grow; PromQL's rate() works on
 * gauges alike), has one # HELP naming its path in `stats`, and has its samples together. */
#ifndef USAGED_PROM_H
#define USAGED_PROM_H

#include <msgpack.h>
#include <stddef.h>

#include "buf.h"

/* Appends the exposition of `stats` to out, metric names starting with `prefix` ("usaged").
 * Returns the number of samples written. A stats value that is not a map yields nothing. */
size_t prom_render(const msgpack_object *stats, const char *prefix, struct buf *out);

#endif
