/* conn on one end of a socketpair, with a real loop: framing, a pipelined burst, a partial
 * message, pause and resume. The test's end of the pair is a client that writes raw bytes and
 * reads the answers through the same loop. Every wait is for a condition; a watchdog timer only
 * ends a wait that would otherwise never end. */
#include "check.h"
#include "conn.h"

#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_SEEN 512
#define WATCHDOG_MS 10000

struct answer {
    int type;       /* 1: response, 2: notification */
    uint32_t msgid; /* responses */
    char code[32];  /* the "error" notification's code */
};

struct harness {
    uv_loop_t loop;
    struct conn_set set;
    int client_fd;    /* the client's end: raw writes */
    uv_pipe_t client; /* the client's end, read by the loop */
    msgpack_unpacker unpacker;
    struct answer answers[MAX_SEEN];
    size_t nanswers;
    bool client_eof;
    uint32_t dispatched[MAX_SEEN]; /* msgids in dispatch order */
    size_t ndispatched;
    struct conn *conn;  /* the daemon's side, once a message came */
    int refuse_next;    /* dispatches to turn away with a backpressure pause */
    size_t turned_away; /* dispatches turned away */
    uv_timer_t watchdog;
    bool timed_out;
    uv_timer_t resumer; /* resumes conn from a loop callback, as the daemon's parts do */
    bool resumed;
};

static enum conn_dispatch_result dispatch(void *ctx, struct conn *c, const struct rpc_message *m)
{
    struct harness *h = ctx;
    h->conn = c;
    if (h->refuse_next > 0) {
        h->refuse_next--;
        h->turned_away++;
        conn_pause(c, CONN_PAUSE_BACKPRESSURE);
        return CONN_RETRY_LATER;
    }
    if (h->ndispatched < MAX_SEEN)
        h->dispatched[h->ndispatched++] = m->msgid;
    if (m->kind == RPC_KIND_REQUEST)
        msgpack_pack_uint32(conn_reply(c, m->msgid), m->msgid);
    return CONN_DISPATCHED;
}

static void record(struct harness *h, const msgpack_object *o)
{
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size < 3 || h->nanswers >= MAX_SEEN)
        return;
    const msgpack_object *a = o->via.array.ptr;
    struct answer *ans = &h->answers[h->nanswers++];
    memset(ans, 0, sizeof(*ans));
    ans->type = (int)a[0].via.u64;
    if (ans->type == 1) {
        ans->msgid = (uint32_t)a[1].via.u64;
        return;
    }
    /* [2, "error", [{code: ..., ...}]] */
    if (a[2].type != MSGPACK_OBJECT_ARRAY || a[2].via.array.size != 1 ||
        a[2].via.array.ptr[0].type != MSGPACK_OBJECT_MAP)
        return;
    const msgpack_object_map *e = &a[2].via.array.ptr[0].via.map;
    for (uint32_t i = 0; i < e->size; i++) {
        const msgpack_object *k = &e->ptr[i].key, *v = &e->ptr[i].val;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == 4 &&
            memcmp(k->via.str.ptr, "code", 4) == 0 && v->type == MSGPACK_OBJECT_STR &&
            v->via.str.size < sizeof(ans->code))
            memcpy(ans->code, v->via.str.ptr, v->via.str.size);
    }
}

static void on_client_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *b)
{
    struct harness *h = handle->data;
    (void)suggested;
    msgpack_unpacker_reserve_buffer(&h->unpacker, 4096);
    b->base = msgpack_unpacker_buffer(&h->unpacker);
    b->len = msgpack_unpacker_buffer_capacity(&h->unpacker);
}

static void on_client_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *b)
{
    struct harness *h = stream->data;
    (void)b;
    if (nread < 0) {
        h->client_eof = true;
        uv_read_stop(stream);
        return;
    }
    msgpack_unpacker_buffer_consumed(&h->unpacker, (size_t)nread);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    while (msgpack_unpacker_next(&h->unpacker, &u) == MSGPACK_UNPACK_SUCCESS)
        record(h, &u.data);
    msgpack_unpacked_destroy(&u);
}

static void on_watchdog(uv_timer_t *t)
{
    struct harness *h = t->data;
    h->timed_out = true;
}

static void on_resume(uv_timer_t *t)
{
    struct harness *h = t->data;
    conn_resume(h->conn, CONN_PAUSE_BACKPRESSURE);
    h->resumed = true;
}

/* Runs the loop until cond holds (or the watchdog fires: the CHECK after it then fails). */
#define RUN_UNTIL(h, cond)                                                                         \
    do {                                                                                           \
        (h)->timed_out = false;                                                                    \
        uv_timer_start(&(h)->watchdog, on_watchdog, WATCHDOG_MS, 0);                               \
        while (!(cond) && !(h)->timed_out)                                                         \
            uv_run(&(h)->loop, UV_RUN_ONCE);                                                       \
        uv_timer_stop(&(h)->watchdog);                                                             \
        if ((h)->timed_out)                                                                        \
            fprintf(stderr, "%s:%d: gave up waiting for %s\n", __FILE__, __LINE__, #cond);         \
    } while (0)

static void harness_open(struct harness *h, uint32_t max_message_bytes)
{
    memset(h, 0, sizeof(*h));
    uv_loop_init(&h->loop);
    struct conn_limits limits = {.max_connections = 8,
                                 .max_message_bytes = max_message_bytes,
                                 .max_output_bytes = 1 << 20,
                                 .max_pending_requests = 4096,
                                 .max_input_bytes = 64 << 20,
                                 .idle_timeout_ms = 0,
                                 .finish_timeout_ms = 1000};
    conn_set_init(&h->set, &h->loop, &limits, dispatch, h);
    int fds[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
    CHECK(conn_open_fd(&h->set, fds[0]) == 0);
    h->client_fd = dup(fds[1]);
    uv_pipe_init(&h->loop, &h->client, 0);
    h->client.data = h;
    CHECK(uv_pipe_open(&h->client, fds[1]) == 0);
    msgpack_unpacker_init(&h->unpacker, 4096);
    uv_read_start((uv_stream_t *)&h->client, on_client_alloc, on_client_read);
    uv_timer_init(&h->loop, &h->watchdog);
    h->watchdog.data = h;
    uv_timer_init(&h->loop, &h->resumer);
    h->resumer.data = h;
}

/* The client hangs up; the daemon's side closes; every handle closes; nothing is left. */
static void harness_close(struct harness *h)
{
    close(h->client_fd);
    uv_close((uv_handle_t *)&h->client, NULL);
    RUN_UNTIL(h, h->set.count == 0);
    CHECK_EQ_INT(h->set.count, 0);
    conn_set_close(&h->set);
    uv_close((uv_handle_t *)&h->watchdog, NULL);
    uv_close((uv_handle_t *)&h->resumer, NULL);
    uv_run(&h->loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&h->loop), 0);
    msgpack_unpacker_destroy(&h->unpacker);
}

static void send_bytes(struct harness *h, const void *data, size_t len)
{
    /* Small writes into an empty socket buffer: taken whole. */
    CHECK_EQ_INT(write(h->client_fd, data, len), (long long)len);
}

/* A request [0, msgid, "ping", []] appended to sb. */
static void pack_ping(msgpack_sbuffer *sb, uint32_t msgid)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, 0);
    msgpack_pack_uint32(&pk, msgid);
    msgpack_pack_str_with_body(&pk, "ping", 4);
    msgpack_pack_array(&pk, 0);
}

static void check_answers_in_order(const struct harness *h, uint32_t first, size_t count)
{
    CHECK_EQ_INT(h->nanswers, count);
    for (size_t i = 0; i < h->nanswers && i < count; i++) {
        CHECK_EQ_INT(h->answers[i].type, 1);
        CHECK_EQ_INT(h->answers[i].msgid, first + i);
    }
}

TEST(a_pipelined_burst_is_dispatched_and_answered_in_order)
{
    struct harness h;
    harness_open(&h, 1 << 20);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    for (uint32_t id = 1; id <= 300; id++)
        pack_ping(&sb, id);
    send_bytes(&h, sb.data, sb.size);
    RUN_UNTIL(&h, h.nanswers == 300);
    CHECK_EQ_INT(h.ndispatched, 300);
    for (size_t i = 0; i < h.ndispatched; i++)
        CHECK_EQ_INT(h.dispatched[i], i + 1);
    check_answers_in_order(&h, 1, 300);
    CHECK_EQ_INT(h.set.stats.messages, 300);
    msgpack_sbuffer_destroy(&sb);
    harness_close(&h);
}

TEST(past_the_input_bound_one_connection_still_finishes_its_message)
{
    struct harness h;
    harness_open(&h, 1 << 20);
    h.set.limits.max_input_bytes = 1; /* any partial message is over it */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    pack_ping(&sb, 9);
    size_t half = sb.size / 2;
    send_bytes(&h, sb.data, half);
    RUN_UNTIL(&h, h.set.stats.bytes_in == half);
    CHECK(h.set.input_bytes >= half); /* the partial message is counted */
    send_bytes(&h, sb.data + half, sb.size - half);
    RUN_UNTIL(&h, h.nanswers == 1);
    check_answers_in_order(&h, 9, 1);
    CHECK_EQ_INT(h.set.stats.paused_input, 0); /* the one holding input is not paused */
    CHECK_EQ_INT(h.set.input_bytes, 0);        /* and holds nothing once its message is whole */
    CHECK(h.set.input_owner == NULL);
    msgpack_sbuffer_destroy(&sb);
    harness_close(&h);
}

TEST(a_partial_message_waits_for_its_rest)
{
    struct harness h;
    harness_open(&h, 1 << 20);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    pack_ping(&sb, 7);
    size_t half = sb.size / 2;
    send_bytes(&h, sb.data, half);
    RUN_UNTIL(&h, h.set.stats.bytes_in == half);
    CHECK_EQ_INT(h.set.stats.bytes_in, half);
    CHECK_EQ_INT(h.ndispatched, 0);
    send_bytes(&h, sb.data + half, sb.size - half);
    RUN_UNTIL(&h, h.nanswers == 1);
    CHECK_EQ_INT(h.ndispatched, 1);
    check_answers_in_order(&h, 7, 1);
    msgpack_sbuffer_destroy(&sb);
    harness_close(&h);
}

TEST(messages_written_one_byte_at_a_time_are_framed_whole)
{
    struct harness h;
    harness_open(&h, 1 << 20);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    pack_ping(&sb, 1);
    pack_ping(&sb, 70000); /* a uint32 msgid: a longer message */
    for (size_t i = 0; i < sb.size; i++) {
        send_bytes(&h, sb.data + i, 1);
        RUN_UNTIL(&h, h.set.stats.bytes_in == i + 1);
    }
    RUN_UNTIL(&h, h.nanswers == 2);
    CHECK_EQ_INT(h.ndispatched, 2);
    CHECK_EQ_INT(h.dispatched[0], 1);
    CHECK_EQ_INT(h.dispatched[1], 70000);
    CHECK_EQ_INT(h.set.stats.messages, 2);
    msgpack_sbuffer_destroy(&sb);
    harness_close(&h);
}

TEST(a_message_over_max_message_bytes_gets_too_large_and_the_stream_closes)
{
    struct harness h;
    harness_open(&h, 1024);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    pack_ping(&sb, 1);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    static char big[2000];
    memset(big, 'x', sizeof(big));
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, 0);
    msgpack_pack_uint8(&pk, 2);
    msgpack_pack_str_with_body(&pk, "ping", 4);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_str_with_body(&pk, big, sizeof(big));
    send_bytes(&h, sb.data, sb.size);
    RUN_UNTIL(&h, h.client_eof);
    CHECK(h.client_eof);
    CHECK_EQ_INT(h.ndispatched, 1);
    CHECK_EQ_INT(h.nanswers, 2);
    CHECK_EQ_INT(h.answers[0].type, 1);
    CHECK_EQ_INT(h.answers[1].type, 2);
    CHECK_EQ_STR(h.answers[1].code, "too_large");
    CHECK_EQ_INT(h.set.stats.stream_errors, 1);
    msgpack_sbuffer_destroy(&sb);
    harness_close(&h);
}

TEST(a_paused_connection_holds_its_messages_and_resume_dispatches_them_in_order)
{
    struct harness h;
    harness_open(&h, 1 << 20);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    for (uint32_t id = 1; id <= 3; id++)
        pack_ping(&sb, id);
    h.refuse_next = 1;
    send_bytes(&h, sb.data, sb.size);
    RUN_UNTIL(&h, h.turned_away == 1 && h.conn && !h.conn->reading);
    CHECK_EQ_INT(h.turned_away, 1);
    CHECK(h.conn != NULL);
    if (!h.conn) {
        msgpack_sbuffer_destroy(&sb);
        harness_close(&h);
        return;
    }
    CHECK(!h.conn->reading);
    CHECK_EQ_INT(h.conn->pause, CONN_PAUSE_BACKPRESSURE);
    CHECK_EQ_INT(h.ndispatched, 0);
    CHECK_EQ_INT(h.conn->in.len, sb.size); /* all three wait, the first included */

    uv_timer_start(&h.resumer, on_resume, 0, 0);
    RUN_UNTIL(&h, h.resumed);
    CHECK_EQ_INT(h.ndispatched, 3);
    for (size_t i = 0; i < h.ndispatched; i++)
        CHECK_EQ_INT(h.dispatched[i], i + 1);
    CHECK(h.conn->reading);
    RUN_UNTIL(&h, h.nanswers == 3);
    check_answers_in_order(&h, 1, 3);
    msgpack_sbuffer_destroy(&sb);
    harness_close(&h);
}

int main(void)
{
    return RUN(T(a_pipelined_burst_is_dispatched_and_answered_in_order),
               T(a_partial_message_waits_for_its_rest),
               T(past_the_input_bound_one_connection_still_finishes_its_message),
               T(messages_written_one_byte_at_a_time_are_framed_whole),
               T(a_message_over_max_message_bytes_gets_too_large_and_the_stream_closes),
               T(a_paused_connection_holds_its_messages_and_resume_dispatches_them_in_order));
}
