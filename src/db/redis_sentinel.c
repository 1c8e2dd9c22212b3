/* redis_sentinel: see redis_sentinel.h.
 *
 * The session's context is only ever freed from the timer, never inside one of its own
 * callbacks: a callback that wants a new session just starts the timer at zero. */
#include "redis_sentinel.h"

#include <hiredis/async.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "redis.h"
#include "xalloc.h"

#define BACKOFF_START_MS 50

struct redis_sentinel {
    struct redis_client *r;
    uv_loop_t *loop;
    char **addrs; /* the sentinels, "host:port" */
    size_t count;
    size_t next; /* the sentinel the next session asks */
    char *master;
    struct redis_conn *primary;
    redisAsyncContext *ac; /* the session */
    const char *ac_addr;   /* its sentinel */
    bool subscribed;       /* the session has answered and now listens */
    bool awaiting;         /* the timer is the deadline of an unanswered session */
    bool closing;
    char auth_refused[128]; /* this session's AUTH refused with WRONGPASS: the reply, or "" */
    uv_timer_t timer;       /* the next session's start, or this one's deadline */
    uint32_t backoff_ms;
    char last_error[256];
    uint64_t last_logged_ms;
};

static void session_start(struct redis_sentinel *s);

static void on_timer(uv_timer_t *t)
{
    session_start(t->data);
}

/* Ends the session (at the next turn of the loop) and starts another after delay_ms. */
static void session_restart(struct redis_sentinel *s, uint32_t delay_ms)
{
    s->awaiting = false;
    if (!s->closing)
        uv_timer_start(&s->timer, on_timer, delay_ms, 0);
}

static uint32_t backoff(struct redis_sentinel *s)
{
    uint32_t delay = s->backoff_ms;
    uint32_t max = s->r->setup.backoff_max_ms;
    s->backoff_ms = s->backoff_ms * 2 > max ? max : s->backoff_ms * 2;
    return delay;
}

/* A session that failed: logged (a repeated reason once a minute), the next sentinel tried. */
static void session_fail(struct redis_sentinel *s, const char *why)
{
    uint64_t now = uv_now(s->loop);
    if (strcmp(why, s->last_error) != 0 || now - s->last_logged_ms >= 60000) {
        log_warn("redis: sentinel %s: %s", s->ac_addr ? s->ac_addr : "?", why);
        s->last_logged_ms = now;
    }
    snprintf(s->last_error, sizeof(s->last_error), "%s", why);
    s->next++;
    session_restart(s, backoff(s));
    /* Counted as a failed connect, and told while no primary is known: with every sentinel
     * away, the daemon must still come up, with the fallback policy in force. */
    s->r->stats.connect_failures++;
    if (!s->primary->connected)
        redis_set_up(s->r, false);
}

static void on_switch(redisAsyncContext *ac, void *reply_ptr, void *privdata)
{
    struct redis_sentinel *s = privdata;
    redisReply *reply = reply_ptr;
    if (!reply || ac != s->ac)
        return;
    /* ["message", "+switch-master", "<name> <old ip> <old port> <new ip> <new port>"]; the
     * first reply is the subscription's own confirmation. */
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        strcmp(reply->element[0]->str, "message") != 0 ||
        reply->element[2]->type != REDIS_REPLY_STRING)
        return;
    char name[256], oldip[64], newip[64];
    unsigned oldport, newport;
    if (sscanf(reply->element[2]->str, "%255s %63s %u %63s %u", name, oldip, &oldport, newip,
               &newport) != 5 ||
        strcmp(name, s->master) != 0)
        return;
    char addr[96];
    snprintf(addr, sizeof(addr), strchr(newip, ':') ? "[%s]:%u" : "%s:%u", newip, newport);
    if (s->primary->address && strcmp(s->primary->address, addr) == 0 && s->primary->connected)
        return;
    s->r->stats.failovers++;
    log_warn("redis: sentinel %s: %s moved to %s (+switch-master)", s->ac_addr, s->master, addr);
    redis_conn_connect(s->primary, addr);
}

static void on_master_addr(redisAsyncContext *ac, void *reply_ptr, void *privdata)
{
    struct redis_sentinel *s = privdata;
    redisReply *reply = reply_ptr;
    if (!reply || ac != s->ac)
        return;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[1]->type != REDIS_REPLY_STRING) {
        char why[300];
        if (s->auth_refused[0]) {
            /* Refused, and the question with it: a wrong password, not a sentinel without one
             * (which answers the question all the same). */
            s->r->stats.auth_failures++;
            snprintf(why, sizeof(why), "AUTH refused (%s)", s->auth_refused);
        } else
            snprintf(why, sizeof(why), "no primary named %s (%s)", s->master,
                     reply->type == REDIS_REPLY_ERROR ? reply->str : "not monitored");
        session_fail(s, why);
        return;
    }
    uv_timer_stop(&s->timer); /* the session's deadline: it has answered */
    s->awaiting = false;
    s->last_error[0] = '\0';
    const char *ip = reply->element[0]->str;
    char addr[96];
    snprintf(addr, sizeof(addr), strchr(ip, ':') ? "[%s]:%s" : "%s:%s", ip, reply->element[1]->str);
    s->subscribed = true;
    redisAsyncCommand(ac, on_switch, s, "SUBSCRIBE +switch-master");
    if (s->primary->connected && s->primary->address && strcmp(s->primary->address, addr) == 0)
        return;
    if (s->primary->connecting && s->primary->address && strcmp(s->primary->address, addr) == 0)
        return;
    if (s->primary->address && strcmp(s->primary->address, addr) != 0) {
        s->r->stats.failovers++;
        log_warn("redis: sentinel %s: the primary of %s is %s", s->ac_addr, s->master, addr);
    }
    redis_conn_connect(s->primary, addr);
}

/* A sentinel without a password refuses AUTH with an ERR, which is no reason to stop (see
 * on_connect), and so does one without redis.username's ACL user, with WRONGPASS; a WRONGPASS
 * is noted, and when the question is refused too (NOAUTH), the session's failure is counted
 * and logged as the refused AUTH. The reply names no password. */
static void on_auth(redisAsyncContext *ac, void *reply_ptr, void *privdata)
{
    struct redis_sentinel *s = privdata;
    redisReply *reply = reply_ptr;
    if (!reply || ac != s->ac || reply->type != REDIS_REPLY_ERROR ||
        strncmp(reply->str, "WRONGPASS", 9) != 0)
        return;
    snprintf(s->auth_refused, sizeof(s->auth_refused), "%s", reply->str);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct redis_sentinel *s = ac->data;
    if (status != REDIS_OK) {
        /* hiredis frees it after this callback */
        char why[256];
        snprintf(why, sizeof(why), "%s", ac->errstr[0] ? ac->errstr : "connect failed");
        if (s->ac == ac)
            s->ac = NULL;
        session_fail(s, why);
        return;
    }
    const struct redis_conn_setup *setup = &s->r->setup;
    if (setup->password) {
        /* "AUTH on every connection": a sentinel with requirepass (Redis 6.2+) takes the same
         * credentials. One without a password refuses AUTH, which is no reason to stop: the
         * question follows regardless, and a NOAUTH answer to it is what says the sentinel
         * needs another password. */
        const char *argv[3];
        size_t lens[3];
        int argc = 0;
        argv[argc++] = "AUTH";
        if (setup->username)
            argv[argc++] = setup->username;
        argv[argc++] = setup->password;
        for (int i = 0; i < argc; i++)
            lens[i] = strlen(argv[i]);
        redisAsyncCommandArgv(s->ac, on_auth, s, argc, argv, lens);
    }
    redisAsyncCommand(s->ac, on_master_addr, s, "SENTINEL get-master-addr-by-name %s", s->master);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct redis_sentinel *s = ac->data;
    if (s->ac != ac)
        return; /* freed by session_start or close */
    s->ac = NULL;
    session_fail(s, status == REDIS_OK ? "closed" : (ac->errstr[0] ? ac->errstr : "error"));
}

static void session_end(struct redis_sentinel *s)
{
    if (s->ac) {
        redisAsyncContext *ac = s->ac;
        s->ac = NULL;
        redisAsyncFree(ac);
    }
    s->subscribed = false;
}

static void session_start(struct redis_sentinel *s)
{
    if (s->ac && s->awaiting) {
        /* The deadline of an unanswered session. */
        session_end(s);
        session_fail(s, "no answer within the connect timeout");
        return;
    }
    session_end(s);
    if (s->closing)
        return;
    s->ac_addr = s->addrs[s->next % s->count];
    char host[256];
    uint16_t port;
    if (!config_split_host_port(s->ac_addr, host, sizeof(host), &port)) {
        session_fail(s, "bad address");
        return;
    }
    /* Sentinels are named by numeric address (config refuses names): hiredis would look a name
     * up on the loop, blocking it. */
    redisAsyncContext *ac = redisAsyncConnect(host, port);
    if (!ac || ac->err) {
        char why[256];
        snprintf(why, sizeof(why), "%s", ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        session_fail(s, why);
        return;
    }
    ac->data = s;
    if (redis_events_attach(ac, s->loop) < 0) {
        redisAsyncFree(ac);
        session_fail(s, "cannot watch the socket");
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    s->ac = ac;
    s->awaiting = true;
    s->auth_refused[0] = '\0';
    uv_timer_start(&s->timer, on_timer, s->r->setup.connect_timeout_ms, 0);
}

struct redis_sentinel *redis_sentinel_new(struct redis_client *r, uv_loop_t *loop,
                                          const char *const *sentinels, size_t count,
                                          const char *master, struct redis_conn *primary)
{
    struct redis_sentinel *s = xcalloc(1, sizeof(*s));
    s->r = r;
    s->loop = loop;
    s->addrs = xcalloc(count, sizeof(*s->addrs));
    for (size_t i = 0; i < count; i++)
        s->addrs[i] = xstrdup(sentinels[i]);
    s->count = count;
    s->master = xstrdup(master);
    s->primary = primary;
    s->backoff_ms = BACKOFF_START_MS;
    uv_timer_init(loop, &s->timer);
    s->timer.data = s;
    return s;
}

void redis_sentinel_start(struct redis_sentinel *s)
{
    session_start(s);
}

void redis_sentinel_primary_state(struct redis_sentinel *s, bool up)
{
    if (up) {
        s->backoff_ms = BACKOFF_START_MS;
        return;
    }
    if (s->closing)
        return;
    /* The primary is gone (or the address named is not one): ask again, in a new session (the
     * subscribed one cannot ask), after the backoff: during a failover the sentinels name the
     * old primary until they have agreed on a new one. (The session itself ends in the timer:
     * this may run inside one of its callbacks.) */
    session_restart(s, backoff(s));
}

static void on_timer_closed(uv_handle_t *h)
{
    struct redis_sentinel *s = h->data;
    struct redis_client *r = s->r;
    for (size_t i = 0; i < s->count; i++)
        free(s->addrs[i]);
    free(s->addrs);
    free(s->master);
    free(s);
    redis_part_closed(r);
}

void redis_sentinel_close(struct redis_sentinel *s)
{
    s->closing = true;
    session_end(s);
    uv_close((uv_handle_t *)&s->timer, on_timer_closed);
}
