/* client: the C client library (include/usaged/client.h). Non-blocking sockets with poll() for
 * the timeout; msgpack-c's streaming unpacker for answers. Every answer received is kept, each with
 * its own zone, until its wait; sending also reads, so a long pipeline never has both sides stuck
 * writing to each other. */
#include "usaged/client.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

struct kept_answer {
    uint32_t msgid;
    bool taken;
    msgpack_unpacked msg;
};

struct usaged_client {
    int fd;
    int timeout_ms;
    uint32_t next_msgid;
    msgpack_sbuffer out;
    msgpack_packer pk;
    msgpack_unpacker unpacker;
    msgpack_unpacked current; /* the answer last returned by usaged_wait */
    /* Answers not yet waited for, in arrival order from kept_head; taken ones leave holes that
     * the head skips and compaction drops, so waiting in order costs O(1) each. */
    struct kept_answer *kept;
    size_t kept_head, kept_count, kept_cap;
    char err_code[32];
    char err_message[256];
    char err_field[64];
    int64_t err_index;
    uint32_t err_retry_after_ms;
};

static int set_error(usaged_client *c, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int set_error(usaged_client *c, int status, const char *code, const char *fmt, ...)
{
    snprintf(c->err_code, sizeof(c->err_code), "%s", code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err_message, sizeof(c->err_message), fmt, ap);
    va_end(ap);
    c->err_field[0] = '\0';
    c->err_index = -1;
    c->err_retry_after_ms = 0;
    if (status == USAGED_ERR_IO || status == USAGED_ERR_TIMEOUT || status == USAGED_ERR_PROTOCOL) {
        /* The stream is unusable: whatever was packed for it is dropped with it. */
        if (c->fd >= 0)
            close(c->fd);
        c->fd = -1;
        msgpack_sbuffer_clear(&c->out);
    }
    return status;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A Unix socket whose listen queue is full refuses a non-blocking connect() with EAGAIN (a
 * blocking one would wait without limit), and there is nothing to poll for until it is accepted:
 * so retry, backing off to 50 ms, until timeout_ms (< 0: no limit) has passed. */
static int connect_unix(const char *path, int timeout_ms, char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        snprintf(err, errlen, "%s: path too long", path);
        return -1;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    int64_t deadline = now_ms() + timeout_ms;
    int delay_ms = 1;
    for (;;) {
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
            return fd;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            break;
        int64_t left = deadline - now_ms();
        if (timeout_ms >= 0 && left <= 0) {
            errno = ETIMEDOUT;
            break;
        }
        poll(NULL, 0, timeout_ms >= 0 && left < delay_ms ? (int)left : delay_ms);
        if (delay_ms < 50)
            delay_ms *= 2;
    }
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    close(fd);
    return -1;
}

/* connect() with a deadline: the socket is non-blocking, so an unreachable host costs at most
 * timeout_ms (< 0: no limit) instead of the kernel's minutes of SYN retries. */
static int connect_within(int fd, const struct sockaddr *sa, socklen_t len, int timeout_ms)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    if (connect(fd, sa, len) == 0)
        return 0;
    if (errno != EINPROGRESS)
        return -1;
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int n;
    do
        n = poll(&p, 1, timeout_ms);
    while (n < 0 && errno == EINTR);
    if (n == 0) {
        errno = ETIMEDOUT;
        return -1;
    }
    int soerr = 0;
    socklen_t soerr_len = sizeof(soerr);
    if (n < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &soerr_len) < 0)
        return -1;
    if (soerr) {
        errno = soerr;
        return -1;
    }
    return 0;
}

static int connect_tcp(const char *address, int timeout_ms, char *err, size_t errlen)
{
    char host[256];
    const char *colon = strrchr(address, ':');
    if (!colon || (size_t)(colon - address) >= sizeof(host)) {
        snprintf(err, errlen, "%s: expected host:port", address);
        return -1;
    }
    const char *h = address;
    size_t hlen = (size_t)(colon - address);
    if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']') {
        h++;
        hlen -= 2;
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
    int rc = getaddrinfo(host, colon + 1, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "%s: %s", address, gai_strerror(rc));
        return -1;
    }
    int fd = -1, saved = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        if (connect_within(fd, ai->ai_addr, ai->ai_addrlen, timeout_ms) == 0)
            break;
        saved = errno;
        close(fd);
        fd = -1;
    }
    if (fd < 0)
        snprintf(err, errlen, "%s: %s", address, strerror(saved));
    freeaddrinfo(res);
    return fd;
}

usaged_client *usaged_connect(const char *address, int timeout_ms, char *err, size_t errlen)
{
    int fd;
    if (strncmp(address, "unix:", 5) == 0)
        fd = connect_unix(address + 5, timeout_ms, err, errlen);
    else if (address[0] == '/' || address[0] == '.')
        fd = connect_unix(address, timeout_ms, err, errlen);
    else
        fd = connect_tcp(address, timeout_ms, err, errlen);
    if (fd < 0)
        return NULL;
    /* Non-blocking from here on: every wait goes through poll() with the timeout. */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    usaged_client *c = calloc(1, sizeof(*c));
    if (!c || !msgpack_unpacker_init(&c->unpacker, 64 * 1024)) {
        snprintf(err, errlen, "out of memory");
        free(c);
        close(fd);
        return NULL;
    }
    c->fd = fd;
    c->timeout_ms = timeout_ms;
    c->next_msgid = 1;
    msgpack_sbuffer_init(&c->out);
    msgpack_packer_init(&c->pk, &c->out, msgpack_sbuffer_write);
    msgpack_unpacked_init(&c->current);
    c->err_index = -1;
    return c;
}

void usaged_close(usaged_client *c)
{
    if (!c)
        return;
    if (c->fd >= 0)
        close(c->fd);
    msgpack_sbuffer_destroy(&c->out);
    msgpack_unpacker_destroy(&c->unpacker);
    msgpack_unpacked_destroy(&c->current);
    for (size_t i = c->kept_head; i < c->kept_count; i++)
        if (!c->kept[i].taken)
            msgpack_unpacked_destroy(&c->kept[i].msg);
    free(c->kept);
    free(c);
}

void usaged_set_timeout(usaged_client *c, int timeout_ms)
{
    c->timeout_ms = timeout_ms;
}

const char *usaged_error_code(const usaged_client *c)
{
    return c->err_code;
}

const char *usaged_error_message(const usaged_client *c)
{
    return c->err_message;
}

const char *usaged_error_field(const usaged_client *c)
{
    return c->err_field[0] ? c->err_field : NULL;
}

int64_t usaged_error_index(const usaged_client *c)
{
    return c->err_index;
}

uint32_t usaged_error_retry_after_ms(const usaged_client *c)
{
    return c->err_retry_after_ms;
}

static void pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

msgpack_packer *usaged_begin_request(usaged_client *c, const char *method, uint32_t nparams,
                                     uint32_t *msgid)
{
    *msgid = c->next_msgid++;
    msgpack_pack_array(&c->pk, 4);
    msgpack_pack_uint8(&c->pk, USAGED_MSG_REQUEST);
    msgpack_pack_uint32(&c->pk, *msgid);
    pack_str(&c->pk, method);
    msgpack_pack_array(&c->pk, nparams);
    return &c->pk;
}

msgpack_packer *usaged_begin_notification(usaged_client *c, const char *method, uint32_t nparams)
{
    msgpack_pack_array(&c->pk, 3);
    msgpack_pack_uint8(&c->pk, USAGED_MSG_NOTIFICATION);
    pack_str(&c->pk, method);
    msgpack_pack_array(&c->pk, nparams);
    return &c->pk;
}

/* Waits until fd is ready for `events` or the deadline passes; *revents says for what. */
static int wait_fd(usaged_client *c, short events, int64_t deadline, short *revents)
{
    for (;;) {
        int64_t left = c->timeout_ms < 0 ? -1 : deadline - now_ms();
        if (c->timeout_ms >= 0 && left <= 0)
            return set_error(c, USAGED_ERR_TIMEOUT, "timeout", "no answer within %d ms",
                             c->timeout_ms);
        struct pollfd p = {.fd = c->fd, .events = events};
        int n = poll(&p, 1, (int)left);
        if (n > 0) {
            *revents = p.revents;
            return USAGED_OK;
        }
        if (n < 0 && errno != EINTR)
            return set_error(c, USAGED_ERR_IO, "io", "poll: %s", strerror(errno));
    }
}

static int take_answers(usaged_client *c);

/* Reads whatever the daemon has sent, without waiting, and keeps the answers in it. */
static int receive(usaged_client *c)
{
    for (;;) {
        if (!msgpack_unpacker_reserve_buffer(&c->unpacker, 64 * 1024))
            return set_error(c, USAGED_ERR_IO, "io", "out of memory");
        ssize_t n = recv(c->fd, msgpack_unpacker_buffer(&c->unpacker),
                         msgpack_unpacker_buffer_capacity(&c->unpacker), 0);
        if (n > 0) {
            msgpack_unpacker_buffer_consumed(&c->unpacker, (size_t)n);
            int rc = take_answers(c);
            if (rc != USAGED_OK)
                return rc;
            continue;
        }
        if (n == 0)
            return set_error(c, USAGED_ERR_IO, "io", "the daemon closed the connection");
        if (errno == EAGAIN)
            return USAGED_OK;
        if (errno != EINTR)
            return set_error(c, USAGED_ERR_IO, "io", "recv: %s", strerror(errno));
    }
}

int usaged_flush(usaged_client *c)
{
    if (c->fd < 0)
        return set_error(c, USAGED_ERR_IO, "io", "not connected");
    int64_t deadline = now_ms() + c->timeout_ms;
    size_t off = 0;
    while (off < c->out.size) {
        ssize_t n = send(c->fd, c->out.data + off, c->out.size - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno != EAGAIN)
            return set_error(c, USAGED_ERR_IO, "io", "send: %s", strerror(errno));
        /* The daemon stops reading while its answers to us wait unread: read them meanwhile. */
        short revents;
        int rc = wait_fd(c, POLLIN | POLLOUT, deadline, &revents);
        if (rc == USAGED_OK && (revents & (POLLIN | POLLHUP | POLLERR)))
            rc = receive(c);
        if (rc != USAGED_OK)
            return rc;
    }
    msgpack_sbuffer_clear(&c->out);
    return USAGED_OK;
}

/* Copies the error map of an answer into the client's error fields. */
static int take_server_error(usaged_client *c, const msgpack_object *e)
{
    set_error(c, USAGED_ERR_SERVER, "internal", "the daemon answered with an error");
    if (e->type != MSGPACK_OBJECT_MAP)
        return USAGED_ERR_SERVER;
    for (uint32_t i = 0; i < e->via.map.size; i++) {
        const msgpack_object *k = &e->via.map.ptr[i].key, *v = &e->via.map.ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR)
            continue;
        const char *key = k->via.str.ptr;
        uint32_t klen = k->via.str.size;
        if (v->type == MSGPACK_OBJECT_STR) {
            char *dst = NULL;
            size_t cap = 0;
            if (klen == 4 && memcmp(key, "code", 4) == 0) {
                dst = c->err_code;
                cap = sizeof(c->err_code);
            } else if (klen == 7 && memcmp(key, "message", 7) == 0) {
                dst = c->err_message;
                cap = sizeof(c->err_message);
            } else if (klen == 5 && memcmp(key, "field", 5) == 0) {
                dst = c->err_field;
                cap = sizeof(c->err_field);
            }
            if (dst)
                snprintf(dst, cap, "%.*s", (int)v->via.str.size, v->via.str.ptr);
        } else if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
            if (klen == 5 && memcmp(key, "index", 5) == 0)
                c->err_index = (int64_t)v->via.u64;
            else if (klen == 14 && memcmp(key, "retry_after_ms", 14) == 0)
                c->err_retry_after_ms = (uint32_t)v->via.u64;
        }
    }
    return USAGED_ERR_SERVER;
}

/* Hands out the answer in c->current: its result, or its error. */
static int deliver(usaged_client *c, const msgpack_object **result)
{
    const msgpack_object *a = c->current.data.via.array.ptr;
    if (a[2].type != MSGPACK_OBJECT_NIL)
        return take_server_error(c, &a[2]);
    if (result)
        *result = &a[3];
    return USAGED_OK;
}

static bool is_answer(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == 4 &&
           o->via.array.ptr[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
           o->via.array.ptr[0].via.u64 == USAGED_MSG_RESPONSE &&
           o->via.array.ptr[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER;
}

/* The daemon's "error" notification: it is about to close the stream. */
static int notification_error(usaged_client *c, const msgpack_object *o)
{
    const msgpack_object *a = o->via.array.ptr;
    if (o->via.array.size == 3 && a[2].type == MSGPACK_OBJECT_ARRAY && a[2].via.array.size == 1)
        take_server_error(c, &a[2].via.array.ptr[0]);
    return USAGED_ERR_SERVER;
}

/* Keeps one answer, compacting out the taken ones before growing. */
static bool keep_answer(usaged_client *c, uint32_t msgid, msgpack_unpacked *msg)
{
    if (c->kept_count == c->kept_cap) {
        size_t live = 0;
        for (size_t i = c->kept_head; i < c->kept_count; i++)
            if (!c->kept[i].taken)
                c->kept[live++] = c->kept[i];
        c->kept_head = 0;
        c->kept_count = live;
        if (live > c->kept_cap / 2 || c->kept_cap == 0) {
            size_t cap = c->kept_cap ? c->kept_cap * 2 : 8;
            struct kept_answer *k = realloc(c->kept, cap * sizeof(*k));
            if (!k)
                return false;
            c->kept = k;
            c->kept_cap = cap;
        }
    }
    c->kept[c->kept_count++] = (struct kept_answer){.msgid = msgid, .msg = *msg};
    return true;
}

/* Moves the kept answer to msgid into c->current, if it has come. */
static bool take_kept(usaged_client *c, uint32_t msgid)
{
    for (size_t i = c->kept_head; i < c->kept_count; i++) {
        if (c->kept[i].taken || c->kept[i].msgid != msgid)
            continue;
        msgpack_unpacked_destroy(&c->current);
        c->current = c->kept[i].msg;
        c->kept[i].taken = true;
        while (c->kept_head < c->kept_count && c->kept[c->kept_head].taken)
            c->kept_head++;
        if (c->kept_head == c->kept_count)
            c->kept_head = c->kept_count = 0;
        return true;
    }
    return false;
}

/* Decodes every complete message received so far and keeps the answers. */
static int take_answers(usaged_client *c)
{
    for (;;) {
        msgpack_unpacked msg;
        msgpack_unpacked_init(&msg);
        msgpack_unpack_return ret = msgpack_unpacker_next(&c->unpacker, &msg);
        if (ret != MSGPACK_UNPACK_SUCCESS) {
            msgpack_unpacked_destroy(&msg);
            if (ret == MSGPACK_UNPACK_PARSE_ERROR || ret == MSGPACK_UNPACK_NOMEM_ERROR)
                return set_error(c, USAGED_ERR_PROTOCOL, "protocol", "undecodable answer");
            return USAGED_OK;
        }
        const msgpack_object *o = &msg.data;
        int rc = USAGED_OK;
        if (o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size >= 1 &&
            o->via.array.ptr[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
            o->via.array.ptr[0].via.u64 == USAGED_MSG_NOTIFICATION)
            rc = notification_error(c, o);
        else if (!is_answer(o))
            rc = set_error(c, USAGED_ERR_PROTOCOL, "protocol", "unexpected message");
        else if (!keep_answer(c, (uint32_t)o->via.array.ptr[1].via.u64, &msg))
            rc = set_error(c, USAGED_ERR_IO, "io", "out of memory");
        else
            continue;
        msgpack_unpacked_destroy(&msg);
        return rc;
    }
}

int usaged_wait(usaged_client *c, uint32_t msgid, const msgpack_object **result)
{
    /* An answer that came before the stream failed is still handed out. */
    int rc = usaged_flush(c);
    int64_t deadline = now_ms() + c->timeout_ms;
    for (;;) {
        if (take_kept(c, msgid))
            return deliver(c, result);
        if (rc != USAGED_OK)
            return rc;
        short revents;
        rc = wait_fd(c, POLLIN, deadline, &revents);
        if (rc == USAGED_OK)
            rc = receive(c);
    }
}

int usaged_call0(usaged_client *c, const char *method, const msgpack_object **result)
{
    uint32_t msgid;
    usaged_begin_request(c, method, 0, &msgid);
    return usaged_wait(c, msgid, result);
}

/* ---- typed methods ---- */

static const msgpack_object *map_get(const msgpack_object *map, const char *key)
{
    if (map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t n = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
            memcmp(k->via.str.ptr, key, n) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

static uint64_t get_u64(const msgpack_object *map, const char *key)
{
    const msgpack_object *v = map_get(map, key);
    return v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? v->via.u64 : 0;
}

int usaged_ping(usaged_client *c, struct usaged_ping_result *out)
{
    const msgpack_object *r;
    int rc = usaged_call0(c, USAGED_METHOD_PING, &r);
    if (rc != USAGED_OK)
        return rc;
    memset(out, 0, sizeof(*out));
    const msgpack_object *v = map_get(r, "version");
    if (v && v->type == MSGPACK_OBJECT_STR)
        snprintf(out->version, sizeof(out->version), "%.*s", (int)v->via.str.size, v->via.str.ptr);
    out->protocol = (uint32_t)get_u64(r, "protocol");
    out->uptime_ms = get_u64(r, "uptime_ms");
    return USAGED_OK;
}

int usaged_auth(usaged_client *c, const char *token)
{
    uint32_t msgid;
    pack_str(usaged_begin_request(c, USAGED_METHOD_AUTH, 1, &msgid), token);
    return usaged_wait(c, msgid, NULL);
}

static struct usaged_quota get_quota(const msgpack_object *map, const char *key)
{
    struct usaged_quota q = {false, 0};
    const msgpack_object *v = map_get(map, key);
    if (v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        q.has_value = true;
        q.value = (int64_t)v->via.u64;
    } else if (v && v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        q.has_value = true;
        q.value = v->via.i64;
    }
    return q;
}

static void read_check_result(const msgpack_object *r, struct usaged_check_result *out);

int usaged_check(usaged_client *c, const char *user_id, const char *provider, uint32_t cost,
                 struct usaged_check_result *out)
{
    if (!user_id || !provider)
        return set_error(c, USAGED_ERR_ARGUMENT, "argument", "check needs user_id and provider");
    uint32_t msgid;
    msgpack_packer *pk = usaged_begin_request(c, USAGED_METHOD_CHECK, 1, &msgid);
    msgpack_pack_map(pk, 3);
    pack_str(pk, "user_id");
    pack_str(pk, user_id);
    pack_str(pk, "provider");
    pack_str(pk, provider);
    pack_str(pk, "cost");
    msgpack_pack_uint32(pk, cost);
    const msgpack_object *r;
    int rc = usaged_wait(c, msgid, &r);
    if (rc != USAGED_OK)
        return rc;
    read_check_result(r, out);
    return USAGED_OK;
}

static void read_check_result(const msgpack_object *r, struct usaged_check_result *out)
{
    memset(out, 0, sizeof(*out));
    const msgpack_object *v = map_get(r, "allowed");
    out->allowed = v && v->type == MSGPACK_OBJECT_BOOLEAN && v->via.boolean;
    v = map_get(r, "reason");
    if (v && v->type == MSGPACK_OBJECT_STR)
        snprintf(out->reason, sizeof(out->reason), "%.*s", (int)v->via.str.size, v->via.str.ptr);
    out->limit_minute = get_quota(r, "limit_minute");
    out->limit_day = get_quota(r, "limit_day");
    out->remaining_minute = get_quota(r, "remaining_minute");
    out->remaining_day = get_quota(r, "remaining_day");
    out->reset_minute_ms = get_u64(r, "reset_minute_ms");
    out->reset_day_ms = get_u64(r, "reset_day_ms");
    out->retry_after_ms = get_u64(r, "retry_after_ms");
    v = map_get(r, "degraded");
    out->degraded = v && v->type == MSGPACK_OBJECT_BOOLEAN && v->via.boolean;
}

/* "12.345600" (the answer's spend) in micro-dollars; an integer as it is. */
static struct usaged_quota get_amount(const msgpack_object *map, const char *key)
{
    const msgpack_object *v = map_get(map, key);
    if (!v || v->type != MSGPACK_OBJECT_STR)
        return get_quota(map, key);
    struct usaged_quota q = {true, 0};
    int places = -1;
    for (uint32_t i = 0; i < v->via.str.size; i++) {
        char ch = v->via.str.ptr[i];
        if (ch == '.' && places < 0) {
            places = 0;
        } else if (ch >= '0' && ch <= '9' && places < 6) {
            q.value = q.value * 10 + (ch - '0');
            if (places >= 0)
                places++;
        } else {
            return (struct usaged_quota){false, 0};
        }
    }
    for (places = places < 0 ? 0 : places; places < 6; places++)
        q.value *= 10;
    return q;
}

static void get_text(const msgpack_object *map, const char *key, char *out, size_t cap)
{
    const msgpack_object *v = map_get(map, key);
    out[0] = '\0';
    if (v && v->type == MSGPACK_OBJECT_STR)
        snprintf(out, cap, "%.*s", (int)v->via.str.size, v->via.str.ptr);
}

static void read_limit(const msgpack_object *m, struct usaged_limit *out)
{
    memset(out, 0, sizeof(*out));
    get_text(m, "dimension", out->dimension, sizeof(out->dimension));
    get_text(m, "window", out->window, sizeof(out->window));
    get_text(m, "scope", out->scope, sizeof(out->scope));
    out->limit = get_amount(m, "limit");
    out->used = get_amount(m, "used");
    out->remaining = get_amount(m, "remaining");
    out->reset_ms = get_u64(m, "reset_ms");
    const msgpack_object *s = map_get(m, "shadow");
    out->shadow = s && s->type == MSGPACK_OBJECT_BOOLEAN && s->via.boolean;
}

int usaged_check_budget(usaged_client *c, const struct usaged_check_request *req,
                        struct usaged_budget_result *out)
{
    if (!req->user_id || !req->provider)
        return set_error(c, USAGED_ERR_ARGUMENT, "argument", "check needs user_id and provider");
    uint32_t msgid;
    msgpack_packer *pk = usaged_begin_request(c, USAGED_METHOD_CHECK, 1, &msgid);
    msgpack_pack_map(pk, 4 + (req->model != NULL) + (req->spend != NULL));
    pack_str(pk, "user_id");
    pack_str(pk, req->user_id);
    pack_str(pk, "provider");
    pack_str(pk, req->provider);
    if (req->model) {
        pack_str(pk, "model");
        pack_str(pk, req->model);
    }
    pack_str(pk, "cost");
    msgpack_pack_uint32(pk, req->cost);
    pack_str(pk, "tokens");
    msgpack_pack_uint64(pk, req->tokens);
    if (req->spend) {
        pack_str(pk, "spend");
        pack_str(pk, req->spend);
    }
    const msgpack_object *r;
    int rc = usaged_wait(c, msgid, &r);
    if (rc != USAGED_OK)
        return rc;
    memset(out, 0, sizeof(*out));
    read_check_result(r, &out->check);
    get_text(r, "reservation", out->reservation, sizeof(out->reservation));
    const msgpack_object *v = map_get(r, "limits");
    if (v && v->type == MSGPACK_OBJECT_ARRAY)
        out->nlimits_listed = v->via.array.size;
    for (uint32_t i = 0; i < out->nlimits_listed && out->nlimits < USAGED_MAX_LIMITS; i++)
        read_limit(&v->via.array.ptr[i], &out->limits[out->nlimits++]);
    v = map_get(r, "denied_by");
    if (v && v->type == MSGPACK_OBJECT_MAP) {
        out->has_denied_by = true;
        read_limit(v, &out->denied_by);
    }
    v = map_get(r, "shadow_denied_by");
    if (v && v->type == MSGPACK_OBJECT_MAP) {
        out->has_shadow_denied_by = true;
        read_limit(v, &out->shadow_denied_by);
    }
    return USAGED_OK;
}

int usaged_usage(usaged_client *c, const char *user_id, const char *provider, const char *model,
                 struct usaged_usage_limit *out, size_t cap, struct usaged_usage_answer *ans)
{
    memset(ans, 0, sizeof(*ans));
    if (!user_id)
        return set_error(c, USAGED_ERR_ARGUMENT, "argument", "usage needs a user_id");
    uint32_t msgid;
    msgpack_packer *pk = usaged_begin_request(c, USAGED_METHOD_USAGE, 1, &msgid);
    msgpack_pack_map(pk, 1 + (provider != NULL) + (model != NULL));
    pack_str(pk, "user_id");
    pack_str(pk, user_id);
    if (provider) {
        pack_str(pk, "provider");
        pack_str(pk, provider);
    }
    if (model) {
        pack_str(pk, "model");
        pack_str(pk, model);
    }
    const msgpack_object *r;
    int rc = usaged_wait(c, msgid, &r);
    if (rc != USAGED_OK)
        return rc;
    const msgpack_object *v = map_get(r, "degraded");
    ans->degraded = v && v->type == MSGPACK_OBJECT_BOOLEAN && v->via.boolean;
    v = map_get(r, "truncated");
    ans->truncated = v && v->type == MSGPACK_OBJECT_BOOLEAN && v->via.boolean;
    v = map_get(r, "limits");
    if (!v || v->type != MSGPACK_OBJECT_ARRAY)
        return USAGED_OK;
    ans->n = v->via.array.size;
    for (uint32_t i = 0; i < v->via.array.size && i < cap; i++) {
        const msgpack_object *m = &v->via.array.ptr[i];
        struct usaged_usage_limit *u = &out[i];
        memset(u, 0, sizeof(*u));
        read_limit(m, &u->limit);
        get_text(m, "provider", u->provider, sizeof(u->provider));
        get_text(m, "model", u->model, sizeof(u->model));
        u->shadow = u->limit.shadow;
    }
    return USAGED_OK;
}

int usaged_settle(usaged_client *c, const struct usaged_settle_request *req, bool *duplicate)
{
    if (!req->reservation)
        return set_error(c, USAGED_ERR_ARGUMENT, "argument", "settle needs a reservation");
    uint32_t msgid;
    msgpack_packer *pk = usaged_begin_request(c, USAGED_METHOD_SETTLE, 1, &msgid);
    msgpack_pack_map(pk, 2 + req->has_tokens + (req->spend != NULL));
    pack_str(pk, "reservation");
    pack_str(pk, req->reservation);
    if (req->has_tokens) {
        pack_str(pk, "tokens");
        msgpack_pack_uint64(pk, req->tokens);
    }
    if (req->spend) {
        pack_str(pk, "spend");
        pack_str(pk, req->spend);
    }
    pack_str(pk, "cancel");
    if (req->cancel)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
    const msgpack_object *r;
    int rc = usaged_wait(c, msgid, &r);
    if (rc == USAGED_OK && duplicate) {
        const msgpack_object *v = map_get(r, "duplicate");
        *duplicate = v && v->type == MSGPACK_OBJECT_BOOLEAN && v->via.boolean;
    }
    return rc;
}

/* Packs "key": value pairs of an event map; counts them first so the map header is exact. */
struct field_packer {
    msgpack_packer *pk;
    uint32_t count;
    bool counting;
};

static void field_str(struct field_packer *f, const char *key, const char *value)
{
    if (!value)
        return;
    f->count++;
    if (!f->counting) {
        pack_str(f->pk, key);
        pack_str(f->pk, value);
    }
}

static void field_int(struct field_packer *f, const char *key, bool has, int64_t value)
{
    if (!has)
        return;
    f->count++;
    if (!f->counting) {
        pack_str(f->pk, key);
        msgpack_pack_int64(f->pk, value);
    }
}

static void field_double(struct field_packer *f, const char *key, bool has, double value)
{
    if (!has)
        return;
    f->count++;
    if (!f->counting) {
        pack_str(f->pk, key);
        msgpack_pack_double(f->pk, value);
    }
}

static void field_bool(struct field_packer *f, const char *key, bool has, bool value)
{
    if (!has)
        return;
    f->count++;
    if (!f->counting) {
        pack_str(f->pk, key);
        if (value)
            msgpack_pack_true(f->pk);
        else
            msgpack_pack_false(f->pk);
    }
}

static void usage_fields(struct field_packer *f, const struct usaged_usage_event *e)
{
    field_str(f, "id", e->id);
    field_str(f, "user_id", e->user_id);
    field_str(f, "provider", e->provider);
    field_str(f, "endpoint", e->endpoint);
    field_int(f, "request_size", e->has_request_size, e->request_size);
    field_int(f, "response_size", e->has_response_size, e->response_size);
    field_int(f, "response_time_ms", e->has_response_time_ms, e->response_time_ms);
    field_int(f, "status_code", e->has_status_code, e->status_code);
    field_str(f, "error_message", e->error_message);
    field_int(f, "created_at", e->has_created_at, e->created_at_ms);
}

static void prompt_fields(struct field_packer *f, const struct usaged_prompt_event *e)
{
    field_str(f, "id", e->id);
    field_str(f, "user_id", e->user_id);
    field_str(f, "framework_id", e->framework_id);
    field_str(f, "framework_name", e->framework_name);
    field_str(f, "model", e->model);
    field_str(f, "provider", e->provider);
    field_str(f, "user_input", e->user_input);
    field_str(f, "ai_response", e->ai_response);
    field_str(f, "tone", e->tone);
    field_str(f, "length", e->length);
    field_double(f, "temperature", e->has_temperature, e->temperature);
    field_int(f, "max_tokens", e->has_max_tokens, e->max_tokens);
    field_int(f, "processing_time_ms", e->has_processing_time_ms, e->processing_time_ms);
    field_int(f, "tokens_used", e->has_tokens_used, e->tokens_used);
    field_bool(f, "vibe_coding", e->has_vibe_coding, e->vibe_coding);
    field_str(f, "cost_usd", e->cost_usd);
    field_str(f, "status", e->status);
    field_str(f, "error_message", e->error_message);
    field_str(f, "error_code", e->error_code);
    field_int(f, "created_at", e->has_created_at, e->created_at_ms);
}

typedef void (*fields_fn)(struct field_packer *f, const void *event);

static void usage_fields_any(struct field_packer *f, const void *e)
{
    usage_fields(f, e);
}

static void prompt_fields_any(struct field_packer *f, const void *e)
{
    prompt_fields(f, e);
}

static int send_events(usaged_client *c, const char *method, const void *events, size_t size,
                       size_t count, fields_fn fields, const char *const *reservations,
                       enum usaged_ack ack, bool notify, uint64_t *accepted)
{
    uint32_t nparams = ack == USAGED_ACK_DEFAULT ? 1 : 2;
    uint32_t msgid = 0;
    msgpack_packer *pk = notify ? usaged_begin_notification(c, method, nparams)
                                : usaged_begin_request(c, method, nparams, &msgid);
    msgpack_pack_array(pk, count);
    for (size_t i = 0; i < count; i++) {
        const void *e = (const char *)events + i * size;
        const char *reservation = reservations ? reservations[i] : NULL;
        struct field_packer f = {pk, 0, true};
        fields(&f, e);
        field_str(&f, "reservation", reservation);
        msgpack_pack_map(pk, f.count);
        f.counting = false;
        fields(&f, e);
        field_str(&f, "reservation", reservation);
    }
    if (ack != USAGED_ACK_DEFAULT) {
        msgpack_pack_map(pk, 1);
        pack_str(pk, "ack");
        pack_str(pk, ack == USAGED_ACK_DURABLE ? "durable" : "queued");
    }
    if (notify)
        return usaged_flush(c);
    const msgpack_object *r;
    int rc = usaged_wait(c, msgid, &r);
    if (rc == USAGED_OK && accepted)
        *accepted = get_u64(r, "accepted");
    return rc;
}

/* Refuses, before packing anything, events that lack a required field: a half-packed message
 * could not be taken back out of the output buffer. */
int usaged_log_usage(usaged_client *c, const struct usaged_usage_event *events, size_t count,
                     enum usaged_ack ack, bool notify, uint64_t *accepted)
{
    for (size_t i = 0; i < count; i++)
        if (!events[i].user_id || !events[i].provider)
            return set_error(c, USAGED_ERR_ARGUMENT, "argument",
                             "event %zu: user_id and provider are required", i);
    return send_events(c, USAGED_METHOD_LOG_USAGE, events, sizeof(*events), count, usage_fields_any,
                       NULL, ack, notify, accepted);
}

int usaged_log_prompt_reserved(usaged_client *c, const struct usaged_prompt_event *events,
                               const char *const *reservations, size_t count, enum usaged_ack ack,
                               bool notify, uint64_t *accepted)
{
    for (size_t i = 0; i < count; i++)
        if (!events[i].user_id || !events[i].status)
            return set_error(c, USAGED_ERR_ARGUMENT, "argument",
                             "event %zu: user_id and status are required", i);
    return send_events(c, USAGED_METHOD_LOG_PROMPT, events, sizeof(*events), count,
                       prompt_fields_any, reservations, ack, notify, accepted);
}

int usaged_log_prompt(usaged_client *c, const struct usaged_prompt_event *events, size_t count,
                      enum usaged_ack ack, bool notify, uint64_t *accepted)
{
    return usaged_log_prompt_reserved(c, events, NULL, count, ack, notify, accepted);
}

int usaged_stats(usaged_client *c, const msgpack_object **result)
{
    return usaged_call0(c, USAGED_METHOD_STATS, result);
}
