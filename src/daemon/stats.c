/* stats: see stats.h. */
#include "stats.h"

#include <stdio.h>

#include "methods_check.h"
#include "methods_log.h"
#include "rpc.h"

static void pack_by_code(msgpack_packer *pk, const char *key, const uint64_t *counts)
{
    rpc_pack_str(pk, key);
    msgpack_pack_map(pk, RPC_CODE_COUNT);
    for (int i = 0; i < RPC_CODE_COUNT; i++)
        rpc_pack_u64(pk, rpc_code_name((enum rpc_code)i), counts[i]);
}

uint64_t stats_uptime_ms(const struct stats_sources *s)
{
    return uv_now(s->loop) - s->started_ms;
}

void stats_pack(const struct stats_sources *s, msgpack_packer *pk)
{
    const struct conn_stats *cs = &s->conns->stats;
    msgpack_pack_map(pk, 11);
    rpc_pack_str(pk, "version");
    rpc_pack_str(pk, USAGED_VERSION);
    rpc_pack_u64(pk, "uptime_ms", stats_uptime_ms(s));

    rpc_pack_str(pk, "connections");
    msgpack_pack_map(pk, 9);
    rpc_pack_u64(pk, "open", s->conns->count);
    rpc_pack_u64(pk, "accepted", cs->accepted);
    rpc_pack_u64(pk, "refused", cs->refused);
    rpc_pack_u64(pk, "closed_idle", cs->closed_idle);
    rpc_pack_u64(pk, "stream_errors", cs->stream_errors);
    rpc_pack_u64(pk, "paused_output", cs->paused_output);
    rpc_pack_u64(pk, "paused_pending", cs->paused_pending);
    rpc_pack_u64(pk, "paused_input", cs->paused_input);
    rpc_pack_u64(pk, "input_bytes", s->conns->input_bytes);

    rpc_pack_str(pk, "messages");
    msgpack_pack_map(pk, 3);
    rpc_pack_u64(pk, "received", cs->messages);
    rpc_pack_u64(pk, "bytes_in", cs->bytes_in);
    rpc_pack_u64(pk, "bytes_out", cs->bytes_out);

    pack_by_code(pk, "errors", cs->errors);
    pack_by_code(pk, "dropped_notifications", cs->dropped);

    rpc_pack_str(pk, "ingest");
    methods_log_pack_stats(s->batcher, pk);

    rpc_pack_str(pk, "spool");
    methods_log_pack_spool_stats(s->spool, pk);

    rpc_pack_str(pk, "limits");
    methods_check_pack_stats(s->limiter, pk);

    rpc_pack_str(pk, "refresh");
    refresh_pack_stats(s->refresh, pk);
    rpc_pack_str(pk, "maintenance");
    maintenance_pack_stats(s->maintenance, pk);
}

void stats_summary(const struct stats_sources *s, char *out, size_t len)
{
    uint64_t written = batcher_rows_written(s->batcher);
    unsigned up = batcher_writers_up(s->batcher), writers = batcher_writers(s->batcher);
    unsigned long long queued = s->batcher->queued_rows;
    snprintf(out, len, "%s%u connections, %llu rows queued, %llu rows written, postgres %u/%u up",
             *s->stopping ? "draining: " : "", s->conns->count, queued, (unsigned long long)written,
             up, writers);
}
