/* libusaged-client: a C client for the usaged daemon (wire protocol: docs/protocol.md).
 *
 * Blocking calls with a timeout, over a Unix socket or TCP. Requests can be pipelined: begin
 * several, flush once, then wait for each answer by msgid in any order. One client is one
 * connection and is not thread-safe; use one per thread.
 *
 *     char err[256];
 *     usaged_client *c = usaged_connect("/run/usaged/usaged.sock", 1000, err, sizeof(err));
 *     struct usaged_check_result r;
 *     if (usaged_check(c, user_id, "openai", 1, &r) == USAGED_OK && r.allowed) ...
 *     usaged_close(c);
 */
#ifndef USAGED_CLIENT_H
#define USAGED_CLIENT_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "usaged/protocol.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct usaged_client usaged_client;

/* Results of every call. On USAGED_ERR_SERVER the daemon answered with an error map: see
 * usaged_error_code() and friends; the connection stays usable, except after the errors the
 * daemon sends as it closes the connection (too_large, and bad_request for a stream it cannot
 * read: docs/protocol.md, "How the daemon answers bad input"), where the next call gets
 * USAGED_ERR_IO: connect again. Any other error leaves the connection unusable. */
enum usaged_status {
    USAGED_OK = 0,
    USAGED_ERR_IO = -1,       /* connect, send or receive failed; the connection is closed */
    USAGED_ERR_TIMEOUT = -2,  /* no answer within the timeout */
    USAGED_ERR_PROTOCOL = -3, /* the daemon sent something that is not a valid answer */
    USAGED_ERR_SERVER = -4,   /* the daemon answered with an error */
    USAGED_ERR_ARGUMENT = -5, /* a bad argument (a required field left NULL); nothing was sent,
                                 the connection stays usable */
};

/* Connects to "unix:/path", "/path" (a Unix socket) or "host:port" (TCP). timeout_ms bounds the
 * connect (a Unix socket's full listen queue included) and each later call (< 0: no limit; 0:
 * none may wait, so a call times out unless its answer is already there).
 * Returns NULL and fills err on failure. After an "io", "timeout" or "protocol" error the
 * connection is closed and what was begun but not sent is dropped; connect again. */
usaged_client *usaged_connect(const char *address, int timeout_ms, char *err, size_t errlen);
void usaged_close(usaged_client *c);
void usaged_set_timeout(usaged_client *c, int timeout_ms);

/* The last error: code is a USAGED_ERR_* string of protocol.h for server errors, or one of
 * "io", "timeout", "protocol", "argument" for local ones. */
const char *usaged_error_code(const usaged_client *c);
const char *usaged_error_message(const usaged_client *c);
/* invalid_field: the field and event index (-1 when absent); overloaded/unavailable: retry. */
const char *usaged_error_field(const usaged_client *c);
int64_t usaged_error_index(const usaged_client *c);
uint32_t usaged_error_retry_after_ms(const usaged_client *c);

/* ---- raw plumbing: any method ---- */

/* Starts a request: packs [0, msgid, method, [ and returns the packer for nparams params.
 * The message is sent at the next usaged_flush() or usaged_wait(). */
msgpack_packer *usaged_begin_request(usaged_client *c, const char *method, uint32_t nparams,
                                     uint32_t *msgid);
/* Starts a notification: [2, method, [ ... */
msgpack_packer *usaged_begin_notification(usaged_client *c, const char *method, uint32_t nparams);
/* Sends everything begun so far, reading (and keeping) answers meanwhile, so a pipeline of any
 * length cannot stall on full socket buffers both ways. */
int usaged_flush(usaged_client *c);
/* Waits for the answer to msgid. On USAGED_OK *result points at the result, valid until the next
 * call on this client. Answers to other msgids that arrive meanwhile are kept for their wait. */
int usaged_wait(usaged_client *c, uint32_t msgid, const msgpack_object **result);
/* Sends a request with no params and waits for its result. */
int usaged_call0(usaged_client *c, const char *method, const msgpack_object **result);

/* ---- methods ---- */

struct usaged_ping_result {
    char version[32];
    uint32_t protocol;
    uint64_t uptime_ms;
};

int usaged_ping(usaged_client *c, struct usaged_ping_result *out);
int usaged_auth(usaged_client *c, const char *token);

/* A limit or remaining count; has_value false means unlimited. */
struct usaged_quota {
    bool has_value;
    int64_t value;
};

struct usaged_check_result {
    bool allowed;
    char reason[32]; /* "" when allowed, else a USAGED_REASON_* */
    struct usaged_quota limit_minute, limit_day, remaining_minute, remaining_day;
    uint64_t reset_minute_ms, reset_day_ms, retry_after_ms;
    bool degraded;
};

/* Spends `cost` of user_id's quota with provider (cost 0: a peek). */
int usaged_check(usaged_client *c, const char *user_id, const char *provider, uint32_t cost,
                 struct usaged_check_result *out);

/* Budgets (protocol 1 additions): a check that may send model, tokens and spend, and reads the
 * rules that applied. New structs and calls beside the ones above, which keep their layout. */
struct usaged_check_request {
    const char *user_id;  /* required */
    const char *provider; /* required */
    const char *model;    /* NULL: none */
    uint32_t cost;        /* requests; a peek when cost, tokens and spend are all 0 */
    uint64_t tokens;      /* estimate */
    const char *spend;    /* estimate in USD, a decimal string with at most 6 places; NULL: 0 */
};

/* One rule that applied: spend amounts in micro-dollars (the answer's decimal strings). */
struct usaged_limit {
    char dimension[12];                         /* requests, tokens, spend, concurrent */
    char window[8];                             /* minute, hour, day, month; "": concurrent */
    char scope[12];                             /* user, provider, model */
    struct usaged_quota limit, used, remaining; /* has_value false: nil (unlimited, unknown) */
    uint64_t reset_ms;
    bool shadow; /* a shadow rule: counted and reported, never denies */
};

#define USAGED_MAX_LIMITS 48

struct usaged_budget_result {
    struct usaged_check_result check; /* the v1 keys */
    char reservation[64];             /* "" when none: settle it after the call */
    size_t nlimits;                   /* in limits[], at most USAGED_MAX_LIMITS */
    size_t nlimits_listed; /* how many the daemon listed: more than nlimits, the rest left out */
    struct usaged_limit limits[USAGED_MAX_LIMITS];
    bool has_denied_by;
    struct usaged_limit denied_by;
    bool has_shadow_denied_by; /* a shadow rule would have denied (shadow_denied_by) */
    struct usaged_limit shadow_denied_by;
};

int usaged_check_budget(usaged_client *c, const struct usaged_check_request *req,
                        struct usaged_budget_result *out);

struct usaged_settle_request {
    const char *reservation; /* required: as check returned it */
    bool has_tokens;
    uint64_t tokens;   /* what the call used */
    const char *spend; /* USD used, a decimal string; NULL: keep the estimate */
    bool cancel;       /* the call was not made: give back everything */
};

/* Settles a reservation; *duplicate (may be NULL) says it had been settled before. An unknown
 * one is USAGED_ERR_SERVER with usaged_error_code() USAGED_ERR_UNKNOWN_RESERVATION (protocol.h). */
int usaged_settle(usaged_client *c, const struct usaged_settle_request *req, bool *duplicate);

/* usage (protocol 1 additions): a user's standing under every rule that applies, spending
 * nothing. One rule of the answer: a concurrent rule has dimension "concurrent" and window "". */
struct usaged_usage_limit {
    struct usaged_limit limit;
    char provider[204]; /* "": every provider (UTF-8, up to 50 characters) */
    char model[204];    /* "": any model */
    bool shadow;        /* as limit.shadow */
};

/* What a usage answer says besides its rules. */
struct usaged_usage_answer {
    size_t n;       /* rules the daemon listed (more than cap: the rest are left out of out) */
    bool degraded;  /* some of it was read without Redis (limits.on_redis_error) */
    bool truncated; /* the daemon read at most 256 providers and models, and left some out */
};

/* Asks for user_id's rules (provider and model: NULL for all). Fills at most cap rules of out,
 * and ans. */
int usaged_usage(usaged_client *c, const char *user_id, const char *provider, const char *model,
                 struct usaged_usage_limit *out, size_t cap, struct usaged_usage_answer *ans);

/* Optional fields of an event: a field is sent when its has_ flag (or a non-NULL string) says. */
struct usaged_usage_event {
    const char *id;       /* uuid or NULL: the daemon assigns a UUIDv7 */
    const char *user_id;  /* required */
    const char *provider; /* required */
    const char *endpoint;
    bool has_request_size, has_response_size, has_response_time_ms, has_status_code;
    int32_t request_size, response_size, response_time_ms, status_code;
    const char *error_message;
    bool has_created_at;
    int64_t created_at_ms; /* ms since the Unix epoch */
};

struct usaged_prompt_event {
    const char *id;
    const char *user_id; /* required */
    const char *framework_id, *framework_name, *model, *provider;
    const char *user_input, *ai_response, *tone, *length;
    bool has_temperature;
    double temperature;
    bool has_max_tokens, has_processing_time_ms, has_tokens_used;
    int32_t max_tokens, processing_time_ms, tokens_used;
    bool has_vibe_coding, vibe_coding;
    const char *cost_usd; /* decimal string, or NULL */
    const char *status;   /* required: pending, completed, failed, cancelled */
    const char *error_message, *error_code;
    bool has_created_at;
    int64_t created_at_ms;
};

enum usaged_ack { USAGED_ACK_DEFAULT = 0, USAGED_ACK_QUEUED, USAGED_ACK_DURABLE };

/* Sends events as one request and waits for {"accepted": n}; or, with notify set, as a
 * notification (fire-and-forget: *accepted is not set). */
int usaged_log_usage(usaged_client *c, const struct usaged_usage_event *events, size_t count,
                     enum usaged_ack ack, bool notify, uint64_t *accepted);
int usaged_log_prompt(usaged_client *c, const struct usaged_prompt_event *events, size_t count,
                      enum usaged_ack ack, bool notify, uint64_t *accepted);

/* usaged_log_prompt with a reservation per event (reservations[i] NULL: none): once accepted,
 * the daemon settles each with the event's tokens_used and cost_usd (cancelled: cancels it). */
int usaged_log_prompt_reserved(usaged_client *c, const struct usaged_prompt_event *events,
                               const char *const *reservations, size_t count, enum usaged_ack ack,
                               bool notify, uint64_t *accepted);

/* The stats map; *result valid until the next call. */
int usaged_stats(usaged_client *c, const msgpack_object **result);

#ifdef __cplusplus
}
#endif

#endif
