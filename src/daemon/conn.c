/* conn: see conn.h.
 *
 * Reads land in one buffer shared by all connections; complete messages are dispatched straight
 * from it and only a partial tail is copied into the connection's own buffer, so an idle
 * connection costs no input memory. Output is packed into the connection's buffer and flushed
 * once per loop iteration (a uv_check pass), with a direct uv_try_write first, so that answers to
 * pipelined requests leave in as few writes as possible. */
#include "conn.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

static void conn_close(struct conn *c);
static void conn_maybe_close(struct conn *c);
static void conn_mark_dirty(struct conn *c);
static void conn_flush(struct conn *c);
static void conn_update_pause(struct conn *c);
static void conn_start_reading(struct conn *c);
static size_t conn_process(struct conn *c, const uint8_t *data, size_t len);
static void resume_input(struct conn_set *set);

/* ---- the set ---- */

/* Output is flushed in the check phase, once per loop iteration, after the poll for I/O. Output
 * packed in the poll phase (a read, a database's answer) goes out in the same iteration; output
 * packed before it (in a timer's callback: a Redis deadline's fallback answer, a resume) would
 * wait in the poll for the next event, so an active idle handle makes that poll not block. */
static void on_flush_soon(uv_idle_t *idle)
{
    (void)idle;
}

static void on_flush_check(uv_check_t *check)
{
    struct conn_set *set = check->data;
    while (set->dirty) {
        struct conn *c = set->dirty;
        set->dirty = c->next_dirty;
        c->next_dirty = NULL;
        c->dirty = false;
        conn_flush(c);
        /* Answers sent (or pending requests answered) may let a paused connection go on. */
        conn_update_pause(c);
        /* A check sent as a notification ends with nothing to write: a connection waiting for
         * its last pending work to close (a broken stream, the end of its input) closes here. */
        conn_maybe_close(c);
        conn_unref(c);
    }
    /* Here rather than where the input shrank: a resumed connection dispatches what it holds,
     * which must not run inside another connection's read. */
    resume_input(set);
    uv_idle_stop(&set->flush_soon);
}

/* Closed by the idle timeout: a connection that has made no progress (no byte read or written)
 * for idle_ms and is owed no answer. It holds nothing, or a message it stopped sending halfway
 * (its bytes would otherwise stay buffered as long as the client likes), or answers it does not
 * read. Input held back by the daemon's own doing (backpressure, max_pending_requests) is not
 * the client's stall: closing would drop what it sent. */
static bool conn_is_idle(const struct conn *c, uint64_t now, uint64_t idle_ms)
{
    return c->pending == 0 && !(c->pause & (CONN_PAUSE_BACKPRESSURE | CONN_PAUSE_PENDING)) &&
           now - c->last_active_ms >= idle_ms;
}

static void on_idle_timer(uv_timer_t *timer)
{
    struct conn_set *set = timer->data;
    uint64_t idle_ms = set->limits.idle_timeout_ms;
    if (idle_ms == 0)
        return;
    uint64_t now = uv_now(set->loop);
    for (struct conn *c = set->head, *next; c; c = next) {
        next = c->next;
        /* A write in flight that the kernel keeps taking from is progress too. */
        size_t queued = c->writing ? uv_stream_get_write_queue_size(&c->h.stream) : 0;
        if (queued != c->seen_write_queue) {
            c->seen_write_queue = queued;
            c->last_active_ms = now;
        }
        if (conn_is_idle(c, now, idle_ms)) {
            const char *what = c->writing || c->out.len ? "with answers it does not read"
                               : c->in.len              ? "halfway through a message"
                                                        : "idle";
            log_debug("conn %llu (%s): %s for %llu ms, closing", (unsigned long long)c->id, c->peer,
                      what, (unsigned long long)idle_ms);
            set->stats.closed_idle++;
            conn_close(c);
        }
    }
}

static void start_idle_timer(struct conn_set *set)
{
    uint64_t idle_ms = set->limits.idle_timeout_ms;
    if (idle_ms == 0) {
        uv_timer_stop(&set->idle_timer);
        return;
    }
    /* A sweep every second (or sooner for short timeouts) is exact enough and costs one timer
     * for all connections instead of one per connection. */
    uint64_t period = idle_ms < 1000 ? idle_ms : 1000;
    uv_timer_start(&set->idle_timer, on_idle_timer, period, period);
}

void conn_set_init(struct conn_set *set, uv_loop_t *loop, const struct conn_limits *limits,
                   conn_dispatch_fn dispatch, void *ctx)
{
    memset(set, 0, offsetof(struct conn_set, read_buf));
    set->loop = loop;
    set->limits = *limits;
    set->dispatch = dispatch;
    set->dispatch_ctx = ctx;
    set->next_id = 1;
    set->drop_log.period_ms = 10000;
    set->drop_log.burst = 10;
    msgpack_zone_init(&set->zone, 64 * 1024);
    buf_init(&set->scratch);
    msgpack_packer_init(&set->scratch_pk, &set->scratch, buf_msgpack_write);
    uv_check_init(loop, &set->flush_check);
    set->flush_check.data = set;
    uv_check_start(&set->flush_check, on_flush_check);
    uv_unref((uv_handle_t *)&set->flush_check);
    uv_idle_init(loop, &set->flush_soon);
    uv_unref((uv_handle_t *)&set->flush_soon);
    uv_timer_init(loop, &set->idle_timer);
    set->idle_timer.data = set;
    uv_unref((uv_handle_t *)&set->idle_timer);
    uv_timer_init(loop, &set->finish_timer);
    set->finish_timer.data = set;
    start_idle_timer(set);
}

void conn_set_limits(struct conn_set *set, const struct conn_limits *limits)
{
    bool idle_changed = set->limits.idle_timeout_ms != limits->idle_timeout_ms;
    set->limits = *limits;
    if (idle_changed)
        start_idle_timer(set);
    /* A new max_message_bytes applies to messages that start from now on. */
    for (struct conn *c = set->head; c; c = c->next) {
        if (c->in.len == 0)
            frame_init(&c->scan, limits->max_message_bytes);
        conn_update_pause(c);
    }
}

static void maybe_finish_set(struct conn_set *set)
{
    if (set->finishing && set->count == 0 && set->on_finished) {
        void (*cb)(struct conn_set *) = set->on_finished;
        set->on_finished = NULL;
        cb(set);
    }
}

static void conn_maybe_close(struct conn *c)
{
    if (c->closing)
        return;
    /* Closed once every answer owed is written: requests read before the stream broke (or
     * before the end of its input) were acted on, and their answers are the client's to read.
     * Every pending request ends within its own deadline (Redis's timeout_ms, a durable ack's
     * keep-or-refuse), so the wait is bounded. */
    bool flushed = c->out.len == 0 && c->writing == 0;
    if ((c->close_after_flush || c->eof || c->set->finishing) && c->pending == 0 && flushed)
        conn_close(c);
}

static void on_finish_timeout(uv_timer_t *timer)
{
    struct conn_set *set = timer->data;
    if (set->count == 0)
        return;
    log_warn("%u connection%s still open %llu ms into the stop (answers not read, or not yet "
             "given); closing %s",
             set->count, set->count == 1 ? "" : "s",
             (unsigned long long)set->limits.finish_timeout_ms, set->count == 1 ? "it" : "them");
    while (set->head)
        conn_close(set->head);
}

void conn_set_finish(struct conn_set *set, void (*on_done)(struct conn_set *set))
{
    set->finishing = true;
    set->on_finished = on_done;
    /* A client that does not read its answers must not hold the exit up. */
    uv_timer_start(&set->finish_timer, on_finish_timeout, set->limits.finish_timeout_ms, 0);
    for (struct conn *c = set->head, *next; c; c = next) {
        next = c->next;
        conn_maybe_close(c);
    }
    maybe_finish_set(set);
}

void conn_set_close(struct conn_set *set)
{
    uv_close((uv_handle_t *)&set->flush_check, NULL);
    uv_close((uv_handle_t *)&set->flush_soon, NULL);
    uv_close((uv_handle_t *)&set->idle_timer, NULL);
    uv_close((uv_handle_t *)&set->finish_timer, NULL);
    msgpack_zone_destroy(&set->zone);
    buf_free(&set->scratch);
}

/* ---- lifetime ---- */

/* Counts the connection's input buffer (by capacity: what it really holds) in the set's total,
 * and lets go of it when empty: an idle connection holds no input memory. */
static void account_input(struct conn *c)
{
    if (c->in.len == 0 && c->in.cap > 0)
        buf_free(&c->in);
    if (c->in.len == 0 && c->set->input_owner == c)
        c->set->input_owner = NULL; /* its message is done: another may go on */
    c->set->input_bytes = c->set->input_bytes - c->input_held + c->in.cap;
    c->input_held = c->in.cap;
}

static void pause_for_input(struct conn *c)
{
    if ((c->pause & CONN_PAUSE_INPUT) || c->closing || c == c->set->input_owner)
        return;
    c->set->stats.paused_input++;
    c->set->input_paused++;
    conn_pause(c, CONN_PAUSE_INPUT);
}

/* Past listen.max_input_bytes a connection that holds input is not read, except one, the owner,
 * which goes on until its message is whole: a message can always be finished, and the memory is
 * given back one message at a time. One that holds nothing is still read (its complete messages
 * cost nothing), and paused once a read leaves a partial message behind: the total may pass the
 * bound by the owner's message and by one read (64 KiB) per connection. */
static void bound_input(struct conn *c)
{
    struct conn_set *set = c->set;
    if (set->input_full) {
        if (c->in.len > 0)
            pause_for_input(c);
        return;
    }
    if (set->input_bytes <= set->limits.max_input_bytes)
        return;
    set->input_full = true;
    if (c->in.len > 0 && !c->closing)
        set->input_owner = c;
    for (struct conn *o = set->head; o; o = o->next)
        if (o->in.len > 0)
            pause_for_input(o);
}

/* Below half the bound every paused connection is read again; until then, when the owner's message
 * is done, the next one paused (one holding input first: finishing it gives memory back) becomes
 * the owner. Runs from the flush pass: a resumed connection dispatches what it holds. */
static void resume_input(struct conn_set *set)
{
    bool all = set->input_bytes <= set->limits.max_input_bytes / 2;
    if (!set->input_full || (!all && set->input_owner))
        return;
    if (all)
        set->input_full = false;
    struct conn *pick = NULL;
    for (struct conn *c = set->head; c && !all; c = c->next)
        if ((c->pause & CONN_PAUSE_INPUT) && (!pick || (c->in.len > 0 && pick->in.len == 0)))
            pick = c;
    for (struct conn *c = all ? set->head : pick, *next; c; c = all ? next : NULL) {
        conn_ref(c); /* a resumed connection may close while it dispatches what it holds */
        if (c->pause & CONN_PAUSE_INPUT) {
            set->input_paused--;
            if (!all)
                set->input_owner = c;
            conn_resume(c, CONN_PAUSE_INPUT);
        }
        next = c->next;
        conn_unref(c);
    }
}

void conn_hold(struct conn *c)
{
    c->pending++;
    conn_ref(c);
}

void conn_release(struct conn *c)
{
    if (c->pending > 0)
        c->pending--;
    conn_mark_dirty(c); /* the flush pass updates the pause state */
    conn_unref(c);
}

void conn_ref(struct conn *c)
{
    c->refs++;
}

void conn_unref(struct conn *c)
{
    if (--c->refs > 0)
        return;
    buf_free(&c->in);
    account_input(c);
    buf_free(&c->out);
    free(c);
}

static void on_close(uv_handle_t *handle)
{
    conn_unref(handle->data);
}

static void conn_close(struct conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    struct conn_set *set = c->set;
    if (c->pause & CONN_PAUSE_INPUT)
        set->input_paused--;
    if (set->input_owner == c)
        set->input_owner = NULL;
    if (!c->processing) { /* nothing more is read from it (else on_read lets go of it) */
        buf_free(&c->in);
        account_input(c);
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        set->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    set->count--;
    log_debug("conn %llu (%s): closed", (unsigned long long)c->id, c->peer);
    uv_close(&c->h.handle, on_close);
    maybe_finish_set(set);
}

/* ---- output ---- */

static void conn_mark_dirty(struct conn *c)
{
    if (c->dirty || c->closing)
        return;
    c->dirty = true;
    conn_ref(c); /* the dirty list holds a reference until the flush pass */
    if (!c->set->dirty)
        uv_idle_start(&c->set->flush_soon, on_flush_soon);
    c->next_dirty = c->set->dirty;
    c->set->dirty = c;
}

static void on_write(uv_write_t *req, int status)
{
    struct conn *c = req->data;
    free(c->write_data);
    c->write_data = NULL;
    c->writing = 0;
    if (c->closing) {
        conn_unref(c);
        return;
    }
    if (status < 0) {
        log_debug("conn %llu (%s): write failed: %s", (unsigned long long)c->id, c->peer,
                  uv_strerror(status));
        conn_close(c);
        conn_unref(c);
        return;
    }
    c->last_active_ms = uv_now(c->set->loop);
    conn_flush(c);
    conn_update_pause(c);
    conn_maybe_close(c);
    conn_unref(c);
}

static void conn_flush(struct conn *c)
{
    if (c->closing || c->writing || c->out.len == 0)
        return;
    uv_buf_t b = uv_buf_init((char *)c->out.data, (unsigned)c->out.len);
    int n = uv_try_write(&c->h.stream, &b, 1);
    if (n < 0 && n != UV_EAGAIN) {
        log_debug("conn %llu (%s): write failed: %s", (unsigned long long)c->id, c->peer,
                  uv_strerror(n));
        conn_close(c);
        return;
    }
    size_t written = n > 0 ? (size_t)n : 0;
    c->set->stats.bytes_out += written;
    if (written > 0)
        c->last_active_ms = uv_now(c->set->loop); /* a slow reader is still reading */
    if (written == c->out.len) {
        buf_clear(&c->out);
        c->last_active_ms = uv_now(c->set->loop);
        conn_update_pause(c);
        conn_maybe_close(c);
        return;
    }
    /* The kernel took part of it: hand the rest to libuv and start a fresh output buffer. */
    size_t len;
    c->write_data = buf_steal(&c->out, &len);
    c->writing = len - written;
    c->set->stats.bytes_out += c->writing;
    b = uv_buf_init((char *)c->write_data + written, (unsigned)c->writing);
    c->write_req.data = c;
    conn_ref(c);
    int rc = uv_write(&c->write_req, &c->h.stream, &b, 1, on_write);
    if (rc < 0) {
        free(c->write_data);
        c->write_data = NULL;
        c->writing = 0;
        conn_unref(c);
        conn_close(c);
    }
}

static void count_error(struct conn *c, const struct rpc_error *e)
{
    c->set->stats.errors[e->code < RPC_CODE_COUNT ? e->code : RPC_INTERNAL]++;
}

msgpack_packer *conn_reply(struct conn *c, uint32_t msgid)
{
    if (c->pending > 0)
        c->pending--;
    if (c->closing) {
        buf_clear(&c->set->scratch);
        rpc_pack_result_head(&c->set->scratch_pk, msgid);
        return &c->set->scratch_pk;
    }
    rpc_pack_result_head(&c->pk, msgid);
    /* No pause update here: the caller is about to pack the result, and a resume now would run
     * held-back requests whose answers would land inside this one. The flush pass does it. */
    conn_mark_dirty(c);
    return &c->pk;
}

void conn_reply_error(struct conn *c, uint32_t msgid, const struct rpc_error *e)
{
    if (c->pending > 0)
        c->pending--;
    count_error(c, e);
    if (c->closing)
        return;
    rpc_pack_error_response(&c->pk, msgid, e);
    conn_mark_dirty(c); /* the flush pass updates the pause state, as for conn_reply */
}

static void conn_notify_error(struct conn *c, const struct rpc_error *e)
{
    count_error(c, e);
    if (c->closing)
        return;
    rpc_pack_error_notification(&c->pk, e);
    conn_mark_dirty(c);
}

bool conn_log_allowed(struct conn *c)
{
    return log_limiter_allow(&c->set->drop_log, uv_now(c->set->loop));
}

void conn_drop_notification(struct conn *c, const char *method, const struct rpc_error *e)
{
    struct conn_set *set = c->set;
    set->stats.dropped[e->code < RPC_CODE_COUNT ? e->code : RPC_INTERNAL]++;
    if (log_limiter_allow(&set->drop_log, uv_now(set->loop)))
        log_warn("conn %llu (%s): dropped an invalid %s notification: %s: %s",
                 (unsigned long long)c->id, c->peer, method, rpc_code_name(e->code), e->message);
}

enum conn_dispatch_result conn_refuse(struct conn *c, const struct rpc_message *m,
                                      const struct rpc_error *e)
{
    if (m->kind == RPC_KIND_REQUEST)
        conn_reply_error(c, m->msgid, e);
    else
        conn_drop_notification(c, rpc_method_name(m->method), e);
    return CONN_DISPATCHED;
}

void conn_close_after_flush(struct conn *c)
{
    c->close_after_flush = true;
    c->pause = 0;
    if (c->reading) {
        uv_read_stop(&c->h.stream);
        c->reading = false;
    }
    conn_maybe_close(c);
}

/* A stream that cannot be read message by message any more: say why, then close. */
static void conn_stream_error(struct conn *c, enum rpc_code code, const char *message)
{
    struct rpc_error e;
    rpc_error_set(&e, code, "%s", message);
    c->set->stats.stream_errors++;
    log_info("conn %llu (%s): closing: %s", (unsigned long long)c->id, c->peer, message);
    conn_notify_error(c, &e);
    conn_close_after_flush(c);
}

/* ---- input ---- */

static void conn_update_pause(struct conn *c)
{
    if (c->closing)
        return;
    const struct conn_limits *l = &c->set->limits;
    size_t unsent = c->out.len + c->writing;
    if (unsent > l->max_output_bytes) {
        if (!(c->pause & CONN_PAUSE_OUTPUT))
            c->set->stats.paused_output++;
        c->pause |= CONN_PAUSE_OUTPUT;
    } else if ((c->pause & CONN_PAUSE_OUTPUT) && unsent <= l->max_output_bytes / 2) {
        conn_resume(c, CONN_PAUSE_OUTPUT);
    }
    if (c->pending >= l->max_pending_requests) {
        if (!(c->pause & CONN_PAUSE_PENDING))
            c->set->stats.paused_pending++;
        c->pause |= CONN_PAUSE_PENDING;
    } else if ((c->pause & CONN_PAUSE_PENDING) && c->pending <= l->max_pending_requests / 2) {
        conn_resume(c, CONN_PAUSE_PENDING);
    }
    if (c->pause && c->reading) {
        uv_read_stop(&c->h.stream);
        c->reading = false;
    }
}

void conn_pause(struct conn *c, unsigned reasons)
{
    c->pause |= reasons;
    conn_update_pause(c);
}

void conn_resume(struct conn *c, unsigned reasons)
{
    /* The time spent paused was the daemon's (or its reader's) doing: the idle clock restarts. */
    if (c->pause & reasons)
        c->last_active_ms = uv_now(c->set->loop);
    c->pause &= ~reasons;
    if (c->pause || c->closing || c->close_after_flush)
        return;
    if (!c->processing && c->in.len > 0) {
        size_t used = conn_process(c, c->in.data, c->in.len);
        buf_consume(&c->in, used);
        account_input(c);
    }
    if (!c->pause && !c->eof && !c->closing && !c->close_after_flush)
        conn_start_reading(c);
}

static void handle_message(struct conn *c, const uint8_t *data, size_t len, bool *retry)
{
    struct conn_set *set = c->set;
    msgpack_object obj;
    size_t off = 0;
    *retry = false;
    set->stats.messages++;
    msgpack_unpack_return ret = msgpack_unpack((const char *)data, len, &off, &set->zone, &obj);
    if (ret != MSGPACK_UNPACK_SUCCESS) {
        /* The scanner accepted it, so this is an allocation failure inside msgpack-c. */
        conn_stream_error(c, RPC_INTERNAL, "the message could not be decoded");
        msgpack_zone_clear(&set->zone);
        return;
    }
    struct rpc_message m;
    struct rpc_error e;
    switch (rpc_parse(&obj, &m, &e)) {
    case RPC_VALID:
        if (m.kind == RPC_KIND_REQUEST)
            c->pending++;
        if (set->dispatch(set->dispatch_ctx, c, &m) == CONN_RETRY_LATER) {
            if (m.kind == RPC_KIND_REQUEST)
                c->pending--;
            *retry = true;
        }
        break;
    case RPC_ANSWER_ERROR:
        c->pending++;
        conn_reply_error(c, m.msgid, &e);
        break;
    case RPC_NOTIFY_ERROR:
        conn_notify_error(c, &e);
        break;
    case RPC_DROP_NOTIFICATION:
        conn_drop_notification(c, "(malformed)", &e);
        break;
    }
    msgpack_zone_clear(&set->zone);
}

/* Dispatches the complete messages in data[0 .. len), which starts at a message boundary, until
 * the data ends, the connection pauses or breaks. Returns the bytes consumed; the caller keeps
 * the rest for later. */
static size_t conn_process(struct conn *c, const uint8_t *data, size_t len)
{
    size_t off = 0;
    c->processing = true;
    while (off < len && !c->pause && !c->closing && !c->close_after_flush) {
        enum frame_status st = frame_scan(&c->scan, data + off, len - off);
        if (st == FRAME_NEED_MORE)
            break;
        if (st != FRAME_COMPLETE) {
            char msg[160];
            if (st == FRAME_TOO_LARGE)
                snprintf(msg, sizeof(msg),
                         "a message is over listen.max_message_bytes (%u) or declares a size "
                         "that cannot fit in it",
                         c->set->limits.max_message_bytes);
            else if (st == FRAME_TOO_DEEP)
                snprintf(msg, sizeof(msg), "a message nests deeper than %d levels",
                         FRAME_MAX_DEPTH);
            else
                snprintf(msg, sizeof(msg), "the stream holds bytes that are not MessagePack");
            conn_stream_error(c, st == FRAME_TOO_LARGE ? RPC_TOO_LARGE : RPC_BAD_REQUEST, msg);
            off = len;
            break;
        }
        size_t mlen = frame_length(&c->scan);
        bool retry;
        handle_message(c, data + off, mlen, &retry);
        frame_reset(&c->scan);
        if (retry)
            break; /* paused by the handler; this message is dispatched again on resume */
        off += mlen;
        conn_update_pause(c);
    }
    c->processing = false;
    return off;
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *b)
{
    (void)suggested;
    struct conn *c = handle->data;
    if (c->in.len == 0) {
        *b = uv_buf_init((char *)c->set->read_buf, sizeof(c->set->read_buf));
        return;
    }
    /* A partial message is pending: read behind it, so that it stays contiguous. */
    size_t want = 64 * 1024;
    uint8_t *p = buf_reserve(&c->in, want);
    account_input(c);
    *b = uv_buf_init((char *)p, (unsigned)(c->in.cap - c->in.len));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *b)
{
    struct conn *c = stream->data;
    if (nread == 0) {
        account_input(c); /* a buffer reserved for nothing */
        return;
    }
    if (nread < 0) {
        if (nread != UV_EOF)
            log_debug("conn %llu (%s): read failed: %s", (unsigned long long)c->id, c->peer,
                      uv_strerror((int)nread));
        uv_read_stop(stream);
        c->reading = false;
        if (nread == UV_EOF) {
            c->eof = true;
            conn_maybe_close(c);
        } else {
            conn_close(c);
        }
        return;
    }
    struct conn_set *set = c->set;
    set->stats.bytes_in += (uint64_t)nread;
    c->last_active_ms = uv_now(set->loop);
    conn_ref(c);
    if ((const uint8_t *)b->base == set->read_buf) {
        size_t used = conn_process(c, set->read_buf, (size_t)nread);
        if (!c->closing && !c->close_after_flush)
            buf_append(&c->in, set->read_buf + used, (size_t)nread - used);
    } else {
        c->in.len += (size_t)nread;
        size_t used = conn_process(c, c->in.data, c->in.len);
        buf_consume(&c->in, used);
    }
    if (c->closing)
        buf_free(&c->in);
    account_input(c);
    bound_input(c);
    conn_unref(c);
}

static void conn_start_reading(struct conn *c)
{
    if (c->reading || c->closing)
        return;
    int rc = uv_read_start(&c->h.stream, on_alloc, on_read);
    if (rc < 0) {
        log_debug("conn %llu (%s): cannot read: %s", (unsigned long long)c->id, c->peer,
                  uv_strerror(rc));
        conn_close(c);
        return;
    }
    c->reading = true;
}

/* ---- accept ---- */

static void describe_peer(struct conn *c, bool tcp)
{
    if (!tcp) {
        snprintf(c->peer, sizeof(c->peer), "unix");
        return;
    }
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (uv_tcp_getpeername(&c->h.tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *in = (struct sockaddr_in *)&ss;
            uv_ip4_name(in, host, sizeof(host));
            port = ntohs(in->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
            uv_ip6_name(in6, host, sizeof(host));
            port = ntohs(in6->sin6_port);
        }
    }
    snprintf(c->peer, sizeof(c->peer), "%s:%d", host, port);
}

static struct conn *conn_new(struct conn_set *set)
{
    struct conn *c = xcalloc(1, sizeof(*c));
    c->set = set;
    c->refs = 1;
    buf_init(&c->in);
    buf_init(&c->out);
    msgpack_packer_init(&c->pk, &c->out, buf_msgpack_write);
    frame_init(&c->scan, set->limits.max_message_bytes);
    return c;
}

/* A handle that failed to become a connection: closed before it joined the set. */
static void conn_discard(struct conn *c, const char *what, int rc)
{
    log_warn("%s failed: %s", what, uv_strerror(rc));
    c->closing = true;
    uv_close(&c->h.handle, on_close);
}

/* Joins the set: from here the connection is counted, limited and read. */
static void conn_register(struct conn *c, bool tcp)
{
    struct conn_set *set = c->set;
    c->id = set->next_id++;
    c->last_active_ms = uv_now(set->loop);
    if (tcp) {
        uv_tcp_nodelay(&c->h.tcp, 1);
        describe_peer(c, true);
    } else {
        describe_peer(c, false);
    }
    c->next = set->head;
    if (set->head)
        set->head->prev = c;
    set->head = c;
    set->count++;
    set->stats.accepted++;

    if (set->finishing) {
        struct rpc_error e;
        rpc_error_set(&e, RPC_SHUTTING_DOWN, "the daemon is stopping");
        conn_notify_error(c, &e);
        c->close_after_flush = true;
        return;
    }
    if (set->count > set->limits.max_connections) {
        set->stats.refused++;
        struct rpc_error e;
        rpc_error_set(&e, RPC_OVERLOADED, "too many connections (listen.max_connections is %u)",
                      set->limits.max_connections);
        e.retry_after_ms = 1000;
        if (log_limiter_allow(&set->drop_log, uv_now(set->loop)))
            log_warn("refusing a connection from %s: max_connections (%u) reached", c->peer,
                     set->limits.max_connections);
        conn_notify_error(c, &e);
        c->close_after_flush = true;
        return;
    }
    log_debug("conn %llu (%s): accepted", (unsigned long long)c->id, c->peer);
    conn_start_reading(c);
}

void conn_accept(struct conn_set *set, uv_stream_t *server, bool tcp)
{
    struct conn *c = conn_new(set);
    if (tcp)
        uv_tcp_init(set->loop, &c->h.tcp);
    else
        uv_pipe_init(set->loop, &c->h.pipe, 0);
    c->h.handle.data = c;
    int rc = uv_accept(server, &c->h.stream);
    if (rc < 0) {
        conn_discard(c, "accept", rc);
        return;
    }
    conn_register(c, tcp);
}

int conn_open_fd(struct conn_set *set, int fd)
{
    struct conn *c = conn_new(set);
    uv_pipe_init(set->loop, &c->h.pipe, 0);
    c->h.handle.data = c;
    int rc = uv_pipe_open(&c->h.pipe, fd);
    if (rc < 0) {
        conn_discard(c, "opening a connected socket", rc);
        return rc;
    }
    conn_register(c, false);
    return 0;
}
