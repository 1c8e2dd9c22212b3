/* test_client: the C client library (include/usaged/client.h) against a running daemon, one
 * named behaviour per test; tests/integration/test_client.py starts the daemon and its servers,
 * runs this program and checks what landed in PostgreSQL.
 *
 *   test_client [-s SOCKET] [-T TOKEN] [-u USER_ID] TEST...
 *
 * SOCKET, TOKEN and USER_ID default to $USAGED_SOCKET, $USAGED_TOKEN and $USAGED_TEST_USER. Each
 * test opens its own connection (and sends auth first when a token is given, except the tests of
 * auth itself). Prints "ok TEST" or "FAIL TEST: why" per test; exits 0 when every test passed,
 * 1 when one failed, 2 on bad usage. Rows written by the log tests carry a provider (or, for
 * prompts, a model) named after the test, "c-..." below, for the caller to count. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "usaged/client.h"

struct ctx {
    const char *socket;
    const char *token;
    const char *user;
    char why[512]; /* the first failure of the running test */
};

static bool failf(struct ctx *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static bool failf(struct ctx *x, const char *fmt, ...)
{
    if (x->why[0])
        return false;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->why, sizeof(x->why), fmt, ap);
    va_end(ap);
    return false;
}

/* Fails with the client's error when rc is not the expected status. */
static bool expect_rc(struct ctx *x, usaged_client *c, int rc, int want, const char *what)
{
    if (rc == want)
        return true;
    return failf(x, "%s: status %d, want %d (%s: %s)", what, rc, want, usaged_error_code(c),
                 usaged_error_message(c));
}

static bool expect_str(struct ctx *x, const char *got, const char *want, const char *what)
{
    if (got && strcmp(got, want) == 0)
        return true;
    return failf(x, "%s: \"%s\", want \"%s\"", what, got ? got : "(null)", want);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static usaged_client *open_client(struct ctx *x, bool auth)
{
    char err[256];
    usaged_client *c = usaged_connect(x->socket, 5000, err, sizeof(err));
    if (!c) {
        failf(x, "connect %s: %s", x->socket, err);
        return NULL;
    }
    if (auth && x->token && !expect_rc(x, c, usaged_auth(c, x->token), USAGED_OK, "auth")) {
        usaged_close(c);
        return NULL;
    }
    return c;
}

static const msgpack_object *map_get(const msgpack_object *map, const char *key)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(key) &&
            memcmp(k->via.str.ptr, key, k->via.str.size) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

/* ---- ping, auth, stats ---- */

static bool test_ping(struct ctx *x, usaged_client *c)
{
    struct usaged_ping_result p;
    if (!expect_rc(x, c, usaged_ping(c, &p), USAGED_OK, "ping"))
        return false;
    if (p.protocol != USAGED_PROTOCOL_VERSION)
        return failf(x, "protocol %u", p.protocol);
    if (!p.version[0])
        return failf(x, "empty version");
    return true;
}

static bool test_requests_before_auth_are_unauthorized(struct ctx *x, usaged_client *c)
{
    struct usaged_ping_result p;
    return expect_rc(x, c, usaged_ping(c, &p), USAGED_ERR_SERVER, "ping before auth") &&
           expect_str(x, usaged_error_code(c), USAGED_ERR_UNAUTHORIZED, "error code");
}

static bool test_a_wrong_token_is_refused_and_the_connection_closed(struct ctx *x, usaged_client *c)
{
    if (!expect_rc(x, c, usaged_auth(c, "not-the-token"), USAGED_ERR_SERVER, "auth") ||
        !expect_str(x, usaged_error_code(c), USAGED_ERR_UNAUTHORIZED, "error code"))
        return false;
    struct usaged_ping_result p;
    return expect_rc(x, c, usaged_ping(c, &p), USAGED_ERR_IO, "ping after a wrong token");
}

static bool test_auth_with_the_token_allows_requests(struct ctx *x, usaged_client *c)
{
    if (!x->token)
        return failf(x, "no token given (-T or USAGED_TOKEN)");
    if (!expect_rc(x, c, usaged_auth(c, x->token), USAGED_OK, "auth"))
        return false;
    return test_ping(x, c);
}

static bool test_stats(struct ctx *x, usaged_client *c)
{
    const msgpack_object *r;
    if (!expect_rc(x, c, usaged_stats(c, &r), USAGED_OK, "stats"))
        return false;
    const msgpack_object *open = map_get(map_get(r, "connections"), "open");
    if (!open || open->type != MSGPACK_OBJECT_POSITIVE_INTEGER || open->via.u64 < 1)
        return failf(x, "stats has no connections.open >= 1");
    if (!map_get(r, "ingest"))
        return failf(x, "stats has no ingest section");
    return true;
}

/* ---- log_usage and log_prompt ---- */

static struct usaged_usage_event usage_event(struct ctx *x, const char *provider, int32_t status)
{
    struct usaged_usage_event e = {0};
    e.user_id = x->user;
    e.provider = provider;
    e.endpoint = "/v1/chat/completions";
    e.has_status_code = true;
    e.status_code = status;
    e.has_response_time_ms = true;
    e.response_time_ms = 42;
    return e;
}

static struct usaged_prompt_event prompt_event(struct ctx *x, const char *model)
{
    struct usaged_prompt_event e = {0};
    e.user_id = x->user;
    e.model = model;
    e.provider = "openai";
    e.user_input = "an idea";
    e.ai_response = "a prompt";
    e.has_temperature = true;
    e.temperature = 0.7;
    e.has_tokens_used = true;
    e.tokens_used = 128;
    e.cost_usd = "0.0021";
    e.status = "completed";
    return e;
}

static bool expect_accepted(struct ctx *x, uint64_t accepted, uint64_t want)
{
    if (accepted == want)
        return true;
    return failf(x, "accepted %" PRIu64 ", want %" PRIu64, accepted, want);
}

static bool test_log_usage_single_queued(struct ctx *x, usaged_client *c)
{
    struct usaged_usage_event e = usage_event(x, "c-usage-single", 200);
    uint64_t accepted = 0;
    return expect_rc(x, c, usaged_log_usage(c, &e, 1, USAGED_ACK_QUEUED, false, &accepted),
                     USAGED_OK, "log_usage") &&
           expect_accepted(x, accepted, 1);
}

static bool test_log_usage_batch_durable(struct ctx *x, usaged_client *c)
{
    struct usaged_usage_event e[3];
    for (int i = 0; i < 3; i++)
        e[i] = usage_event(x, "c-usage-durable", 200 + i);
    uint64_t accepted = 0;
    return expect_rc(x, c, usaged_log_usage(c, e, 3, USAGED_ACK_DURABLE, false, &accepted),
                     USAGED_OK, "log_usage") &&
           expect_accepted(x, accepted, 3);
}

/* A notification has no answer: a ping after it on the same connection proves the daemon has
 * read it (a connection's messages are handled in order). */
static bool test_log_usage_notification(struct ctx *x, usaged_client *c)
{
    struct usaged_usage_event e[2] = {usage_event(x, "c-usage-notify", 200),
                                      usage_event(x, "c-usage-notify", 500)};
    return expect_rc(x, c, usaged_log_usage(c, e, 2, USAGED_ACK_DEFAULT, true, NULL), USAGED_OK,
                     "log_usage notification") &&
           test_ping(x, c);
}

static bool test_log_usage_invalid_field(struct ctx *x, usaged_client *c)
{
    struct usaged_usage_event e[3];
    for (int i = 0; i < 3; i++)
        e[i] = usage_event(x, "c-usage-invalid", 200);
    e[1].status_code = 700;
    uint64_t accepted = 0;
    if (!expect_rc(x, c, usaged_log_usage(c, e, 3, USAGED_ACK_QUEUED, false, &accepted),
                   USAGED_ERR_SERVER, "log_usage") ||
        !expect_str(x, usaged_error_code(c), USAGED_ERR_INVALID_FIELD, "error code") ||
        !expect_str(x, usaged_error_field(c), "status_code", "error field"))
        return false;
    if (usaged_error_index(c) != 1)
        return failf(x, "error index %" PRId64 ", want 1", usaged_error_index(c));
    return test_ping(x, c); /* an error answer leaves the connection usable */
}

static bool test_log_prompt_single_queued(struct ctx *x, usaged_client *c)
{
    struct usaged_prompt_event e = prompt_event(x, "c-prompt-single");
    uint64_t accepted = 0;
    return expect_rc(x, c, usaged_log_prompt(c, &e, 1, USAGED_ACK_QUEUED, false, &accepted),
                     USAGED_OK, "log_prompt") &&
           expect_accepted(x, accepted, 1);
}

static bool test_log_prompt_batch_durable(struct ctx *x, usaged_client *c)
{
    struct usaged_prompt_event e[3];
    for (int i = 0; i < 3; i++)
        e[i] = prompt_event(x, "c-prompt-durable");
    e[2].status = "failed";
    e[2].error_code = "rate_limited";
    e[2].has_vibe_coding = true;
    e[2].vibe_coding = true;
    uint64_t accepted = 0;
    return expect_rc(x, c, usaged_log_prompt(c, e, 3, USAGED_ACK_DURABLE, false, &accepted),
                     USAGED_OK, "log_prompt") &&
           expect_accepted(x, accepted, 3);
}

static bool test_log_prompt_notification(struct ctx *x, usaged_client *c)
{
    struct usaged_prompt_event e = prompt_event(x, "c-prompt-notify");
    return expect_rc(x, c, usaged_log_prompt(c, &e, 1, USAGED_ACK_QUEUED, true, NULL), USAGED_OK,
                     "log_prompt notification") &&
           test_ping(x, c);
}

static bool test_log_prompt_invalid_field(struct ctx *x, usaged_client *c)
{
    struct usaged_prompt_event e[2] = {prompt_event(x, "c-prompt-invalid"),
                                       prompt_event(x, "c-prompt-invalid")};
    e[1].temperature = 5.0;
    uint64_t accepted = 0;
    if (!expect_rc(x, c, usaged_log_prompt(c, e, 2, USAGED_ACK_DURABLE, false, &accepted),
                   USAGED_ERR_SERVER, "log_prompt") ||
        !expect_str(x, usaged_error_code(c), USAGED_ERR_INVALID_FIELD, "error code") ||
        !expect_str(x, usaged_error_field(c), "temperature", "error field"))
        return false;
    if (usaged_error_index(c) != 1)
        return failf(x, "error index %" PRId64 ", want 1", usaged_error_index(c));
    return true;
}

/* A required field left out is caught before anything is sent; the connection stays usable. */
static bool test_a_missing_required_field_is_an_argument_error(struct ctx *x, usaged_client *c)
{
    struct usaged_usage_event u = usage_event(x, "c-usage-argument", 200);
    u.user_id = NULL;
    struct usaged_prompt_event p = prompt_event(x, "c-prompt-argument");
    p.status = NULL;
    uint64_t accepted = 0;
    return expect_rc(x, c, usaged_log_usage(c, &u, 1, USAGED_ACK_QUEUED, false, &accepted),
                     USAGED_ERR_ARGUMENT, "log_usage without user_id") &&
           expect_str(x, usaged_error_code(c), "argument", "error code") &&
           expect_rc(x, c, usaged_log_prompt(c, &p, 1, USAGED_ACK_QUEUED, false, &accepted),
                     USAGED_ERR_ARGUMENT, "log_prompt without status") &&
           test_ping(x, c);
}

/* ---- pipelining and timeouts ---- */

static bool test_pipelined_answers_are_waited_for_in_reverse_order(struct ctx *x, usaged_client *c)
{
    enum { N = 8 };
    uint32_t ids[N];
    for (int i = 0; i < N; i++)
        usaged_begin_request(c, i % 2 ? USAGED_METHOD_STATS : USAGED_METHOD_PING, 0, &ids[i]);
    if (!expect_rc(x, c, usaged_flush(c), USAGED_OK, "flush"))
        return false;
    for (int i = N - 1; i >= 0; i--) {
        const msgpack_object *r;
        if (!expect_rc(x, c, usaged_wait(c, ids[i], &r), USAGED_OK, "wait"))
            return false;
        /* Each answer is the one of its own request: a stats map or a ping map. */
        const char *key = i % 2 ? "connections" : "protocol";
        if (!map_get(r, key))
            return failf(x, "answer to request %d (msgid %u) has no %s", i, ids[i], key);
    }
    return true;
}

static bool test_waiting_for_an_unsent_msgid_times_out(struct ctx *x, usaged_client *c)
{
    const int timeout_ms = 300;
    usaged_set_timeout(c, timeout_ms);
    int64_t start = now_ms();
    const msgpack_object *r;
    int rc = usaged_wait(c, 4000000000u, &r);
    int64_t took = now_ms() - start;
    if (!expect_rc(x, c, rc, USAGED_ERR_TIMEOUT, "wait") ||
        !expect_str(x, usaged_error_code(c), "timeout", "error code"))
        return false;
    if (took < timeout_ms - 20 || took > timeout_ms + 2000)
        return failf(x, "timed out after %" PRId64 " ms, timeout %d ms", took, timeout_ms);
    return true;
}

/* 100000 pings in one flush: their answers (MiBs) overflow the daemon's max_output_bytes and
 * both socket buffers long before the requests are all sent, so the daemon stops reading until
 * the client reads. A flush that only wrote would wait for the timeout. */
static bool test_a_long_pipeline_is_flushed_without_waiting_first(struct ctx *x, usaged_client *c)
{
    enum { N = 100000 };
    static uint32_t ids[N];
    for (int i = 0; i < N; i++)
        usaged_begin_request(c, USAGED_METHOD_PING, 0, &ids[i]);
    if (!expect_rc(x, c, usaged_flush(c), USAGED_OK, "flush"))
        return false;
    for (int i = 0; i < N; i++) {
        const msgpack_object *r;
        if (!expect_rc(x, c, usaged_wait(c, ids[i], &r), USAGED_OK, "wait"))
            return failf(x, "answer %d of %d", i, N);
    }
    return test_ping(x, c);
}

/* A Unix socket whose listen queue is full (its owner never accepts): connecting gives up after
 * the timeout with an error, instead of waiting as long as the queue stays full. */
static bool test_connecting_to_a_full_listen_queue_times_out(struct ctx *x, usaged_client *c)
{
    (void)c;
    char path[108];
    snprintf(path, sizeof(path), "/tmp/usaged-full-queue-%d.sock", (int)getpid());
    unlink(path);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 0) < 0)
        return failf(x, "listener %s: %s", path, strerror(errno));
    bool ok = true;
    int queued[8], nqueued = 0;
    for (; nqueued < 8; nqueued++) {
        queued[nqueued] = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (connect(queued[nqueued], (struct sockaddr *)&sa, sizeof(sa)) < 0) {
            close(queued[nqueued]);
            break;
        }
    }
    if (nqueued == 8)
        ok = failf(x, "the listen queue of %s never filled", path);
    const int timeout_ms = 300;
    int64_t start = now_ms();
    char address[128], err[256];
    snprintf(address, sizeof(address), "unix:%s", path);
    usaged_client *d = ok ? usaged_connect(address, timeout_ms, err, sizeof(err)) : NULL;
    int64_t took = now_ms() - start;
    if (ok && d)
        ok = failf(x, "connected to a queue that never accepts");
    else if (ok && (took < timeout_ms - 20 || took > timeout_ms + 2000))
        ok = failf(x, "gave up after %" PRId64 " ms, timeout %d ms (%s)", took, timeout_ms, err);
    usaged_close(d);
    for (int i = 0; i < nqueued; i++)
        close(queued[i]);
    close(lfd);
    unlink(path);
    return ok;
}

/* ---- check ---- */

/* A check result that holds together: an allowed check has no reason and no retry delay, a
 * denied one has both a reason and, unless the provider is disabled, a delay. */
static bool expect_coherent_check(struct ctx *x, const struct usaged_check_result *r)
{
    if (r->allowed && (r->reason[0] || r->retry_after_ms))
        return failf(x, "allowed with reason \"%s\", retry_after_ms %" PRIu64, r->reason,
                     r->retry_after_ms);
    if (!r->allowed && !r->reason[0])
        return failf(x, "denied without a reason");
    if (r->limit_minute.has_value && r->remaining_minute.has_value &&
        r->remaining_minute.value > r->limit_minute.value)
        return failf(x, "remaining_minute %" PRId64 " over limit_minute %" PRId64,
                     r->remaining_minute.value, r->limit_minute.value);
    return true;
}

static bool test_check(struct ctx *x, usaged_client *c)
{
    struct usaged_check_result r;
    int rc = usaged_check(c, x->user, "openai", 1, &r);
    /* "unavailable" is an answer to retry after retry_after_ms, as every client must: right
     * after a start the limits may not have been read from PostgreSQL yet. */
    for (int tries = 0; tries < 20 && rc == USAGED_ERR_SERVER &&
                        strcmp(usaged_error_code(c), USAGED_ERR_UNAVAILABLE) == 0;
         tries++) {
        uint32_t ms = usaged_error_retry_after_ms(c);
        usleep((ms > 0 && ms < 1000 ? ms : 250) * 1000);
        rc = usaged_check(c, x->user, "openai", 1, &r);
    }
    if (!expect_rc(x, c, rc, USAGED_OK, "check"))
        return false;
    return expect_coherent_check(x, &r);
}

/* ---- budgets (the caller adds a tokens-per-day rule of 1000 for openai) ---- */

static const struct usaged_limit *find_limit(const struct usaged_budget_result *r,
                                             const char *dimension)
{
    for (size_t i = 0; i < r->nlimits; i++)
        if (strcmp(r->limits[i].dimension, dimension) == 0)
            return &r->limits[i];
    return NULL;
}

/* The tokens used so far, by a peek. */
static bool tokens_used(struct ctx *x, usaged_client *c, int64_t *used)
{
    struct usaged_check_request peek = {.user_id = x->user, .provider = "openai"};
    struct usaged_budget_result r;
    if (!expect_rc(x, c, usaged_check_budget(c, &peek, &r), USAGED_OK, "peek"))
        return false;
    const struct usaged_limit *t = find_limit(&r, "tokens");
    if (!t || !t->used.has_value)
        return failf(x, "the peek reports no tokens rule");
    *used = t->used.value;
    return true;
}

static bool test_budget_check_reserves_and_settle_applies_once(struct ctx *x, usaged_client *c)
{
    int64_t before, after;
    if (!tokens_used(x, c, &before))
        return false;
    struct usaged_check_request req = {
        .user_id = x->user, .provider = "openai", .cost = 1, .tokens = 300, .spend = "0.25"};
    struct usaged_budget_result r;
    if (!expect_rc(x, c, usaged_check_budget(c, &req, &r), USAGED_OK, "check"))
        return false;
    if (!r.check.allowed || !r.reservation[0] || r.has_denied_by)
        return failf(x, "allowed %d, reservation \"%s\"", r.check.allowed, r.reservation);
    const struct usaged_limit *t = find_limit(&r, "tokens");
    if (!t || strcmp(t->window, "day") != 0 || strcmp(t->scope, "provider") != 0 ||
        t->used.value != before + 300 || t->limit.value != 1000 ||
        t->remaining.value != 1000 - before - 300)
        return failf(x, "the tokens rule reads wrong");
    struct usaged_settle_request s = {
        .reservation = r.reservation, .has_tokens = true, .tokens = 120};
    bool duplicate = true;
    if (!expect_rc(x, c, usaged_settle(c, &s, &duplicate), USAGED_OK, "settle") || duplicate)
        return failf(x, "the first settle is a duplicate");
    if (!tokens_used(x, c, &after))
        return false;
    if (after != before + 120)
        return failf(x, "tokens used %" PRId64 " after settling 120, want %" PRId64, after,
                     before + 120);
    if (!expect_rc(x, c, usaged_settle(c, &s, &duplicate), USAGED_OK, "settle again") || !duplicate)
        return failf(x, "the second settle is not a duplicate");
    char unknown[64];
    snprintf(unknown, sizeof(unknown), "%s.0123456789abcdef", x->user);
    s.reservation = unknown;
    if (!expect_rc(x, c, usaged_settle(c, &s, NULL), USAGED_ERR_SERVER, "settle unknown"))
        return false;
    return expect_str(x, usaged_error_code(c), USAGED_ERR_UNKNOWN_RESERVATION, "error code");
}

/* The caller adds, besides the tokens-per-day rule, a shadow tokens-per-minute rule of 100. */
static bool test_budget_shadow_rules_and_usage_flags(struct ctx *x, usaged_client *c)
{
    struct usaged_check_request req = {
        .user_id = x->user, .provider = "openai", .cost = 1, .tokens = 150};
    struct usaged_budget_result r;
    if (!expect_rc(x, c, usaged_check_budget(c, &req, &r), USAGED_OK, "check"))
        return false;
    if (!r.check.allowed || r.nlimits_listed != r.nlimits || r.nlimits < 2)
        return failf(x, "allowed %d, %zu of %zu limits", r.check.allowed, r.nlimits,
                     r.nlimits_listed);
    bool shadow_listed = false;
    for (size_t i = 0; i < r.nlimits; i++)
        shadow_listed |= r.limits[i].shadow && strcmp(r.limits[i].window, "minute") == 0;
    if (!shadow_listed)
        return failf(x, "no shadow rule among the limits");
    if (!r.has_shadow_denied_by || !r.shadow_denied_by.shadow ||
        strcmp(r.shadow_denied_by.dimension, "tokens") != 0 ||
        r.shadow_denied_by.limit.value != 100)
        return failf(x, "shadow_denied_by reads wrong (%d)", r.has_shadow_denied_by);
    struct usaged_usage_limit rows[8];
    struct usaged_usage_answer ans;
    if (!expect_rc(x, c, usaged_usage(c, x->user, "openai", NULL, rows, 8, &ans), USAGED_OK,
                   "usage"))
        return false;
    bool shadow_row = false;
    for (size_t i = 0; i < ans.n && i < 8; i++)
        shadow_row |= rows[i].shadow && rows[i].limit.shadow;
    if (ans.n < 2 || ans.degraded || ans.truncated || !shadow_row)
        return failf(x, "usage: %zu rules, degraded %d, truncated %d, shadow row %d", ans.n,
                     ans.degraded, ans.truncated, shadow_row);
    return true;
}

static bool test_log_prompt_with_a_reservation_settles_it(struct ctx *x, usaged_client *c)
{
    int64_t before, after = 0;
    if (!tokens_used(x, c, &before))
        return false;
    struct usaged_check_request req = {
        .user_id = x->user, .provider = "openai", .cost = 1, .tokens = 200};
    struct usaged_budget_result r;
    if (!expect_rc(x, c, usaged_check_budget(c, &req, &r), USAGED_OK, "check") || !r.reservation[0])
        return failf(x, "no reservation");
    struct usaged_prompt_event ev = {.user_id = x->user,
                                     .model = "c-prompt-reserved",
                                     .status = "completed",
                                     .has_tokens_used = true,
                                     .tokens_used = 50};
    const char *reservations[] = {r.reservation};
    uint64_t accepted = 0;
    if (!expect_rc(x, c,
                   usaged_log_prompt_reserved(c, &ev, reservations, 1, USAGED_ACK_QUEUED, false,
                                              &accepted),
                   USAGED_OK, "log_prompt") ||
        accepted != 1)
        return failf(x, "log_prompt accepted %" PRIu64, accepted);
    /* The settle follows the acceptance: wait for it (5 s at most). */
    for (int tries = 0; tries < 100; tries++) {
        if (!tokens_used(x, c, &after))
            return false;
        if (after == before + 50)
            return true;
        usleep(50000);
    }
    return failf(x, "tokens used %" PRId64 ", want %" PRId64, after, before + 50);
}

/* ---- the runner ---- */

struct test {
    const char *name;
    bool (*fn)(struct ctx *x, usaged_client *c);
    bool auth; /* send auth with the token first */
};

static const struct test tests[] = {
    {"ping", test_ping, true},
    {"requests_before_auth_are_unauthorized", test_requests_before_auth_are_unauthorized, false},
    {"a_wrong_token_is_refused_and_the_connection_closed",
     test_a_wrong_token_is_refused_and_the_connection_closed, false},
    {"auth_with_the_token_allows_requests", test_auth_with_the_token_allows_requests, false},
    {"stats", test_stats, true},
    {"log_usage_single_queued", test_log_usage_single_queued, true},
    {"log_usage_batch_durable", test_log_usage_batch_durable, true},
    {"log_usage_notification", test_log_usage_notification, true},
    {"log_usage_invalid_field", test_log_usage_invalid_field, true},
    {"log_prompt_single_queued", test_log_prompt_single_queued, true},
    {"log_prompt_batch_durable", test_log_prompt_batch_durable, true},
    {"log_prompt_notification", test_log_prompt_notification, true},
    {"log_prompt_invalid_field", test_log_prompt_invalid_field, true},
    {"a_missing_required_field_is_an_argument_error",
     test_a_missing_required_field_is_an_argument_error, true},
    {"pipelined_answers_are_waited_for_in_reverse_order",
     test_pipelined_answers_are_waited_for_in_reverse_order, true},
    {"waiting_for_an_unsent_msgid_times_out", test_waiting_for_an_unsent_msgid_times_out, true},
    {"a_long_pipeline_is_flushed_without_waiting_first",
     test_a_long_pipeline_is_flushed_without_waiting_first, true},
    {"connecting_to_a_full_listen_queue_times_out",
     test_connecting_to_a_full_listen_queue_times_out, true},
    {"check", test_check, true},
    {"budget_check_reserves_and_settle_applies_once",
     test_budget_check_reserves_and_settle_applies_once, true},
    {"log_prompt_with_a_reservation_settles_it", test_log_prompt_with_a_reservation_settles_it,
     true},
    {"budget_shadow_rules_and_usage_flags", test_budget_shadow_rules_and_usage_flags, true},
};

static void usage(FILE *out)
{
    fprintf(out, "usage: test_client [-s SOCKET] [-T TOKEN] [-u USER_ID] TEST...\ntests:");
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++)
        fprintf(out, " %s", tests[i].name);
    fputc('\n', out);
}

int main(int argc, char **argv)
{
    struct ctx x = {
        .socket = getenv("USAGED_SOCKET"),
        .token = getenv("USAGED_TOKEN"),
        .user = getenv("USAGED_TEST_USER"),
    };
    int opt;
    while ((opt = getopt(argc, argv, "s:T:u:h")) != -1) {
        switch (opt) {
        case 's':
            x.socket = optarg;
            break;
        case 'T':
            x.token = optarg;
            break;
        case 'u':
            x.user = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!x.socket || !x.user || optind == argc) {
        usage(stderr);
        return 2;
    }
    int failed = 0;
    for (int a = optind; a < argc; a++) {
        const struct test *t = NULL;
        for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++)
            if (strcmp(tests[i].name, argv[a]) == 0)
                t = &tests[i];
        if (!t) {
            fprintf(stderr, "test_client: no test named %s\n", argv[a]);
            usage(stderr);
            return 2;
        }
        x.why[0] = '\0';
        usaged_client *c = open_client(&x, t->auth);
        bool ok = c && t->fn(&x, c) && !x.why[0];
        usaged_close(c);
        if (ok) {
            printf("ok %s\n", t->name);
        } else {
            printf("FAIL %s: %s\n", t->name, x.why[0] ? x.why : "failed");
            failed++;
        }
        fflush(stdout);
    }
    return failed ? 1 : 0;
}
