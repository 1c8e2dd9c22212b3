/* daemon: see daemon.h. */
#include "daemon.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"
#include "secret.h"
#include "xalloc.h"

static void conn_limits_from(const struct config *c, struct conn_limits *l)
{
    l->max_connections = c->listen.max_connections;
    l->max_message_bytes = c->listen.max_message_bytes;
    l->max_output_bytes = c->listen.max_output_bytes;
    l->max_pending_requests = c->listen.max_pending_requests;
    l->max_input_bytes = c->listen.max_input_bytes;
    l->idle_timeout_ms = (uint64_t)c->listen.idle_timeout_s * 1000;
    /* Clients get as long to read their last answers as the queues got to be written. */
    l->finish_timeout_ms =
        (uint64_t)(c->ingest.drain_timeout_s ? c->ingest.drain_timeout_s : 1) * 1000;
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

/* The spool finished its recovery, or has room again: let the batcher spill or replay. */
static void on_spool_changed(void *arg)
{
    struct daemon *d = arg;
    batcher_spool_changed(&d->batcher);
}

/* limits.log_denied: a denied check becomes an api_usage_logs row with status 429. */
static void log_denied_check(void *arg, const uint8_t user_id[16], const char *provider, size_t len,
                             const char *reason, int64_t now_ms)
{
    struct daemon *d = arg;
    batcher_log_denied(&d->batcher, user_id, provider, len, reason, now_ms);
}

/* The longest READY=1 waits for the first connect attempts (a PostgreSQL or Redis that takes
 * connections and never answers holds one up for its whole connect deadline, up to 4 x
 * redis.timeout_ms): well within systemd's default start timeout (90 s). */
#define READY_WAIT_MS 30000

void daemon_check_ready(struct daemon *d)
{
    if (!d->started || d->ready || d->stopping)
        return;
    /* Every part that must settle before the daemon tells systemd it is up, one condition
     * each; a part joins with its own condition and a call to daemon_check_ready from its state
     * change callback (the Redis limiter: connected, or its first attempt failed and
     * limits.on_redis_error is in force). After READY_WAIT_MS the daemon is up all the same:
     * it serves degraded until those attempts end. */
    if (d->listener.count == 0)
        return;
    if (!d->ready_wait_over && !batcher_settled(&d->batcher))
        return;
    if (!d->ready_wait_over && !limiter_settled(&d->limiter))
        return;
    d->ready = true;
    uv_timer_stop(&d->ready_timer);
    log_info("ready");
    notify_ready(&d->notify);
}

static void on_part_state(void *arg)
{
    daemon_check_ready(arg);
}

static void on_ready_wait(uv_timer_t *t)
{
    struct daemon *d = t->data;
    d->ready_wait_over = true;
    if (!d->ready && !d->stopping)
        log_warn("ready after %d s without every first connect attempt ended (PostgreSQL or "
                 "Redis slow to answer): serving degraded meanwhile",
                 READY_WAIT_MS / 1000);
    daemon_check_ready(d);
}

static void status_line(void *arg, char *out, size_t len)
{
    struct daemon *d = arg;
    stats_summary(&d->stats, out, len);
}

static void collect_stats(void *arg, msgpack_packer *pk)
{
    struct daemon *d = arg;
    stats_pack(&d->stats, pk);
}

/* The views of the daemon's parts that the protocol layer and the stats answer get. */
static void wire_views(struct daemon *d)
{
    d->stats = (struct stats_sources){.loop = d->loop,
                                      .started_ms = uv_now(d->loop),
                                      .stopping = &d->stopping,
                                      .conns = &d->conns,
                                      .batcher = &d->batcher,
                                      .spool = &d->spool,
                                      .limiter = &d->limiter,
                                      .refresh = &d->refresh,
                                      .maintenance = &d->maintenance};
    d->methods = (struct methods){.token = d->token,
                                  .token_len = d->token_len,
                                  .stopping = &d->stopping,
                                  .log = &d->log_methods,
                                  .limiter = &d->limiter,
                                  .stats = &d->stats};
}

static sigset_t exit_signals(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    return set;
}

static void no_work(uv_work_t *w)
{
    (void)w;
}

static void no_work_done(uv_work_t *w, int status)
{
    (void)w;
    (void)status;
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
    /* The thread pool's workers are started now, with the exit signals blocked, which they
     * keep: only this thread ever takes those signals (close_signals relies on it). */
    sigset_t set = exit_signals(), old;
    pthread_sigmask(SIG_BLOCK, &set, &old);
    uv_queue_work(loop, &d->threads_work, no_work, no_work_done);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    int rc;
    if (config->auth.token_file) {
        rc = secret_read("auth.token_file", config->auth.token_file, &d->token, &d->token_len, err,
                         errlen);
        if (rc < 0)
            return rc;
    }
    wire_views(d);
    struct conn_limits limits;
    conn_limits_from(config, &limits);
    conn_set_init(&d->conns, loop, &limits, methods_dispatch, &d->methods);
    rc = listener_open(&d->listener, loop, config, &d->conns, err, errlen);
    if (rc < 0) {
        conn_set_close(&d->conns);
        goto fail;
    }
    if (config->metrics.listen) {
        rc = metrics_open(&d->metrics, loop, config->metrics.listen, collect_stats, d, err, errlen);
        if (rc < 0) {
            listener_close(&d->listener);
            conn_set_close(&d->conns);
            goto fail;
        }
    }
    /* The spool directory is locked: another daemon holding it is a reason not to start. */
    rc = spool_open(&d->spool, loop, config, on_spool_changed, on_spool_changed, d, err, errlen);
    if (rc < 0) {
        metrics_close(&d->metrics);
        listener_close(&d->listener);
        conn_set_close(&d->conns);
        goto fail;
    }
    /* Before anything that can connect: the state callbacks may run from the start calls. */
    notify_start(&d->notify, loop, status_line, d);
    batcher_init(&d->batcher, loop, config);
    d->batcher.spool = &d->spool;
    d->batcher.on_state = on_part_state;
    d->batcher.state_arg = d;
    methods_log_init(&d->log_methods, &d->batcher);
    batcher_start(&d->batcher);
    limiter_init(&d->limiter, loop, config);
    d->limiter.on_denied = log_denied_check;
    d->limiter.denied_arg = d;
    d->limiter.on_state = on_part_state;
    d->limiter.state_arg = d;
    limiter_start(&d->limiter);
    refresh_init(&d->refresh, loop, config);
    refresh_start(&d->refresh);
    maintenance_init(&d->maintenance, loop, config);
    maintenance_start(&d->maintenance);
    start_signal(d, &d->sig_term, SIGTERM);
    start_signal(d, &d->sig_int, SIGINT);
    start_signal(d, &d->sig_hup, SIGHUP);
    log_info("usaged %s started", USAGED_VERSION);
    uv_timer_init(loop, &d->ready_timer);
    d->ready_timer.data = d;
    uv_timer_start(&d->ready_timer, on_ready_wait, READY_WAIT_MS, 0);
    uv_unref((uv_handle_t *)&d->ready_timer);
    d->started = true;
    daemon_check_ready(d);
    return 0;
fail:
    free(d->token);
    d->token = NULL;
    return rc;
}

void daemon_reload(struct daemon *d)
{
    char err[512];
    struct config *fresh = config_load(d->config->path, err, sizeof(err));
    if (!fresh) {
        log_error("reload refused, keeping the running config: %s", err);
        return;
    }
    /* An empty file starts a daemon with every default, but a reload to it would silently reset
     * every live setting: more likely a file cut short by an editor or a deploy than a wish. */
    if (fresh->empty) {
        log_error("reload refused, keeping the running config: %s holds no settings (an empty "
                  "file is taken only at start)",
                  fresh->path);
        config_free(fresh);
        return;
    }
    /* The restart-only values stay as they are in force, so that stats and later reloads
     * compare against what is really running. */
    struct config *old = d->config;
    char changed[512];
    if (config_keep_restart_only(fresh, old, changed, sizeof(changed)) > 0)
        log_warn("reload: these take effect at the next restart: %s", changed);
    d->config = fresh;
    log_set_level((enum log_level)fresh->log.level);
    struct conn_limits limits;
    conn_limits_from(fresh, &limits);
    conn_set_limits(&d->conns, &limits);
    batcher_configure(&d->batcher, fresh);
    spool_configure(&d->spool, fresh);
    limiter_configure(&d->limiter, fresh);
    refresh_configure(&d->refresh, fresh);
    maintenance_configure(&d->maintenance, fresh);
    config_free(old);
    log_info("reloaded %s", fresh->path);
}

static void on_spool_closed(struct spool *s, void *arg)
{
    (void)s;
    (void)arg;
}

static void close_signals(struct daemon *d)
{
    /* Closing the last handle of a signal gives it back its default action, which for these
     * is to die: a second SIGTERM (systemd's and an operator's) in the last moments of the exit
     * would turn a clean exit 0 into death by signal. The exit is under way: these signals are
     * ignored from here on. No thread takes one in between: the workers never do (see
     * daemon_start) and this thread blocks them meanwhile; one that came is dropped when the
     * action becomes SIG_IGN. */
    sigset_t set = exit_signals();
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    uv_close((uv_handle_t *)&d->sig_term, NULL);
    uv_close((uv_handle_t *)&d->sig_int, NULL);
    uv_close((uv_handle_t *)&d->sig_hup, NULL);
    struct sigaction ign = {.sa_handler = SIG_IGN};
    sigemptyset(&ign.sa_mask);
    sigaction(SIGTERM, &ign, NULL);
    sigaction(SIGINT, &ign, NULL);
    sigaction(SIGHUP, &ign, NULL);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

static void on_batcher_closed(struct batcher *b, void *arg)
{
    (void)b;
    (void)arg;
}

static void on_limiter_closed(struct limiter *l, void *arg)
{
    (void)l;
    (void)arg;
}

static void on_refresh_closed(struct refresh *r, void *arg)
{
    (void)r;
    (void)arg;
}

static void on_maintenance_closed(struct maintenance *m, void *arg)
{
    (void)m;
    (void)arg;
}

static void on_connections_finished(struct conn_set *set)
{
    struct daemon *d = (struct daemon *)((char *)set - offsetof(struct daemon, conns));
    log_info("every connection is closed; stopping");
    /* Closing the limiter answers its calls in flight, to connections already closed: their
     * replies go to the set's scratch buffer, so the set closes after it. */
    limiter_close(&d->limiter, on_limiter_closed, d);
    methods_log_close(&d->log_methods);
    batcher_close(&d->batcher, on_batcher_closed, d);
    spool_close(&d->spool, on_spool_closed, d);
    refresh_close(&d->refresh, on_refresh_closed, d);
    maintenance_close(&d->maintenance, on_maintenance_closed, d);
    metrics_close(&d->metrics);
    notify_close(&d->notify);
    conn_set_close(&d->conns);
    close_signals(d);
    uv_close((uv_handle_t *)&d->ready_timer, NULL);
}

static void on_drained(struct batcher *b, void *arg)
{
    struct daemon *d = arg;
    if (batcher_rows_lost(b))
        d->exit_code = 1; /* the batcher said how many in its log line */
    else
        log_info("every queued row is written");
    conn_set_finish(&d->conns, on_connections_finished);
}

void daemon_stop(struct daemon *d)
{
    if (d->stopping)
        return;
    d->stopping = true;
    notify_stopping(&d->notify);
    listener_close(&d->listener);
    /* A refresh or maintenance statement may run for minutes: cancel it, do not wait. */
    refresh_stop(&d->refresh);
    maintenance_stop(&d->maintenance);
    batcher_drain(&d->batcher, on_drained, d);
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
