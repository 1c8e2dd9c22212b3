/* libFuzzer target: the front end's whole decoding path, as a connection runs it. Bytes are cut
 * into messages by the frame scanner, each complete message is decoded by msgpack-c and parsed as
 * an RPC envelope, and the events of log methods go through validation and COPY encoding (and
 * back to JSON, as for the rejects table). Checks that the scanner and msgpack-c agree on where a
 * message ends, and (with ASan's allocator limit) that no declared size makes msgpack-c allocate
 * beyond the budget. */
#include <msgpack.h>
#include <stdint.h>
#include <stdlib.h>

#include "event.h"
#include "frame.h"
#include "rpc.h"

#define BUDGET 65536

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct frame_scanner s;
    frame_init(&s, BUDGET);
    msgpack_zone zone;
    msgpack_zone_init(&zone, 4096);
    size_t off = 0;
    while (off < size) {
        enum frame_status st = frame_scan(&s, data + off, size - off);
        if (st != FRAME_COMPLETE)
            break;
        size_t len = frame_length(&s);
        msgpack_object obj;
        size_t used = 0;
        msgpack_unpack_return ret =
            msgpack_unpack((const char *)data + off, len, &used, &zone, &obj);
        /* The scanner said: exactly one whole object. msgpack-c must agree. */
        if (ret != MSGPACK_UNPACK_SUCCESS || used != len)
            abort();
        struct rpc_message m;
        struct rpc_error e;
        if (rpc_parse(&obj, &m, &e) == RPC_VALID &&
            (m.method == RPC_LOG_USAGE || m.method == RPC_LOG_PROMPT) && m.params->size >= 1 &&
            m.params->ptr[0].type == MSGPACK_OBJECT_ARRAY) {
            enum event_kind kind = m.method == RPC_LOG_USAGE ? EVENT_USAGE : EVENT_PROMPT;
            const msgpack_object_array *events = &m.params->ptr[0].via.array;
            struct uuid_v7_gen ids;
            uuid_v7_init(&ids, 1);
            struct event_context ctx = {.now_ms = 1700000000000, .ids = &ids};
            struct buf row, json;
            buf_init(&row);
            buf_init(&json);
            for (uint32_t i = 0; i < events->size; i++) {
                buf_clear(&row);
                if (!event_encode(kind, &events->ptr[i], &ctx, &row, &e))
                    continue;
                const struct event_table *t = event_table(kind);
                buf_clear(&json);
                copy_row_to_json(t->columns, t->ncolumns, row.data, row.len, &json);
            }
            buf_free(&row);
            buf_free(&json);
        }
        msgpack_zone_clear(&zone);
        frame_reset(&s);
        off += len;
    }
    msgpack_zone_destroy(&zone);
    return 0;
}
