/* libFuzzer target: the front end's whole decoding path, as a connection runs it. Bytes are cut
 * into messages by the frame scanner, each complete message is decoded by msgpack-c and parsed as
 * an RPC envelope. Checks that the scanner and msgpack-c agree on where a message ends, and (with
 * ASan's allocator limit) that no declared size makes msgpack-c allocate beyond the budget. */
#include <msgpack.h>
#include <stdint.h>
#include <stdlib.h>

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
        (void)rpc_parse(&obj, &m, &e);
        msgpack_zone_clear(&zone);
        frame_reset(&s);
        off += len;
    }
    msgpack_zone_destroy(&zone);
    return 0;
}
