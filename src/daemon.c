/* daemon: see daemon.h. */
#include "daemon.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"
#include "methods.h"
#include "xalloc.h"

static void conn_limits_from(const struct config *c, struct conn_limits *l)
{
    l->max_connections = c->listen.max_connections;
    l->max_message_bytes = c->listen.max_message_bytes;
    l->max_output_bytes = c->listen.max_output_bytes;
    l->max_pending_requests = c->listen.max_pending_requests;
    l->idle_timeout_ms = (uint64_t)c->listen.idle_timeout_s * 1000;
}

/* Reads the auth token: the file's first line, without its newline. */
static int read_token(const char *path, char **token, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "auth.token_file %s: %s", path, strerror(errno));
        return -errno;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & 0004))
        log_warn("auth.token_file %s is readable by everyone", path);
    char line[1024];
    if (!fgets(line, sizeof(line), f))
        line[0] = '\0';
    fclose(f);
    size_t n = strcspn(line, "\r\n");
    if (n == 0) {
        snprintf(err, errlen, "auth.token_file %s: the first line (the token) is empty", path);
        return -EINVAL;
    }
    *token = xstrndup(line, n);
    *len = n;
    return 0;
}

static void on_signal(uv_signal_t *sig, int signum)
{
    struct daemon *d = sig->data;
    if (signum == SIGHUP) {
        daemon_reload(d);
        return;
    }
    if (d->stopping) {
        log_info("received %s again; still draining", signum == SIGTERM ? "SIGTERM" : "SIGINT");
        return;
    }
    log_info("received %s: draining", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    daemon_stop(d);
}

static void start_signal(struct daemon *d, uv_signal_t *sig, int signum)
{
    uv_signal_init(d->loop, sig);
    sig->data = d;
    uv_signal_start(sig, on_signal, signum);
}

int daemon_start(struct daemon *d, uv_loop_t *loop, struct config *config, char *err, size_t errlen)
{
    memset(d, 0, sizeof(*d));
    d->loop = loop;
    d->config = config;
    d->started_ms = uv_now(loop);
    int rc;
    if (config->auth.token_file) {
        rc = read_token(config->auth.token_file, &d->token, &d->token_len, err, errlen);
        if (rc < 0)
            return rc;
    }
    struct conn_limits limits;
    conn_limits_from(config, &limits);
    conn_set_init(&d->conns, loop, &limits, methods_dispatch, d);
    rc = listener_open(&d->listener, loop, config, &d->conns, err, errlen);
    if (rc < 0) {
        conn_set_close(&d->conns);
        return rc;
    }
    batcher_init(&d->batcher, loop, config);
    batcher_start(&d->batcher);
    start_signal(d, &d->sig_term, SIGTERM);
    start_signal(d, &d->sig_int, SIGINT);
    start_signal(d, &d->sig_hup, SIGHUP);
    log_info("usaged %s started", USAGED_VERSION);
    return 0;
}

/* Keys that only a restart applies; a reload that changes them says so. */
static void warn_restart_only(const struct config *old, const struct config *new)
{
#define CHANGED_STR(a, b) (((a) == NULL) != ((b) == NULL) || ((a) && strcmp((a), (b)) != 0))
    if (CHANGED_STR(old->listen.unix_path, new->listen.unix_path) ||
        CHANGED_STR(old->listen.tcp, new->listen.tcp) ||
        old->listen.unix_mode != new->listen.unix_mode)
        log_warn("reload: listen addresses changed; they take effect at the next restart");
    if (CHANGED_STR(old->auth.token_file, new->auth.token_file))
        log_warn("reload: auth.token_file changed; it takes effect at the next restart");
    if (CHANGED_STR(old->postgres.conninfo, new->postgres.conninfo))
        log_warn("reload: postgres.conninfo changed; it takes effect at the next restart");
    if (CHANGED_STR(old->redis.address, new->redis.address) ||
        CHANGED_STR(old->redis.key_prefix, new->redis.key_prefix))
        log_warn("reload: redis settings changed; they take effect at the next restart");
    if (CHANGED_STR(old->spool.dir, new->spool.dir))
        log_warn("reload: spool.dir changed; it takes effect at the next restart");
#undef CHANGED_STR
}

void daemon_reload(struct daemon *d)
{
    char err[512];
    struct config *fresh = config_load(d->config->path, err, sizeof(err));
    if (!fresh) {
        log_error("reload refused, keeping the running config: %s", err);
        return;
    }
    warn_restart_only(d->config, fresh);
    /* The restart-only values stay as they are in force, so that stats and later reloads
     * compare against what is really running. */
    struct config *old = d->config;
    char *keep[] = {fresh->listen.unix_path,  fresh->listen.tcp,    fresh->auth.token_file,
                    fresh->postgres.conninfo, fresh->redis.address, fresh->redis.key_prefix,
                    fresh->spool.dir};
    fresh->listen.unix_path = old->listen.unix_path;
    fresh->listen.tcp = old->listen.tcp;
    fresh->listen.unix_mode = old->listen.unix_mode;
    fresh->auth.token_file = old->auth.token_file;
    fresh->postgres.conninfo = old->postgres.conninfo;
    fresh->redis.address = old->redis.address;
    fresh->redis.key_prefix = old->redis.key_prefix;
    fresh->spool.dir = old->spool.dir;
    old->listen.unix_path = keep[0];
    old->listen.tcp = keep[1];
    old->auth.token_file = keep[2];
    old->postgres.conninfo = keep[3];
    old->redis.address = keep[4];
    old->redis.key_prefix = keep[5];
    old->spool.dir = keep[6];

    d->config = fresh;
    log_set_level((enum log_level)fresh->log.level);
    struct conn_limits limits;
    conn_limits_from(fresh, &limits);
    conn_set_limits(&d->conns, &limits);
    batcher_configure(&d->batcher, fresh);
    config_free(old);
    log_info("reloaded %s", fresh->path);
}

static void close_signals(struct daemon *d)
{
    uv_close((uv_handle_t *)&d->sig_term, NULL);
    uv_close((uv_handle_t *)&d->sig_int, NULL);
    uv_close((uv_handle_t *)&d->sig_hup, NULL);
}

static void on_batcher_closed(struct batcher *b, void *arg)
{
    (void)b;
    (void)arg;
}

static void on_connections_finished(struct conn_set *set)
{
    struct daemon *d = (struct daemon *)((char *)set - offsetof(struct daemon, conns));
    log_info("every connection is closed; stopping");
    conn_set_close(&d->conns);
    batcher_close(&d->batcher, on_batcher_closed, d);
    close_signals(d);
}

static void on_drained(struct batcher *b, void *arg)
{
    (void)b;
    struct daemon *d = arg;
    log_info("every queued row is written");
    conn_set_finish(&d->conns, on_connections_finished);
}

void daemon_stop(struct daemon *d)
{
    if (d->stopping)
        return;
    d->stopping = true;
    listener_close(&d->listener);
    batcher_drain(&d->batcher, on_drained, d);
}

uint64_t daemon_uptime_ms(const struct daemon *d)
{
    return uv_now(d->loop) - d->started_ms;
}

static void close_leftover(uv_handle_t *handle, void *arg)
{
    (void)arg;
    if (!uv_is_closing(handle))
        uv_close(handle, NULL);
}

int daemon_run(struct daemon *d)
{
    uv_run(d->loop, UV_RUN_DEFAULT);
    /* Every part closes its own handles; anything left is a bug, but exit cleanly anyway. */
    if (uv_loop_close(d->loop) == UV_EBUSY) {
        log_warn("handles left open at exit; closing them");
        uv_walk(d->loop, close_leftover, NULL);
        uv_run(d->loop, UV_RUN_DEFAULT);
        uv_loop_close(d->loop);
    }
    free(d->token);
    config_free(d->config);
    d->config = NULL;
    log_info("stopped");
    return d->exit_code;
}
