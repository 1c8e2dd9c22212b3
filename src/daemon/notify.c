/* notify: see notify.h. */
#include "notify.h"

#include <string.h>

#ifdef USAGED_HAVE_SYSTEMD

#include <stdio.h>
#include <stdlib.h>
#include <systemd/sd-daemon.h>

#include "log.h"

#define NOTIFY_STATUS_MS 5000 /* how often STATUS= is refreshed */

/* Sends `state` followed by the current status. A failed send is logged once: systemd would
 * then miss READY=1 and time the start out, which the log line explains. */
static void notify_send(struct notify *n, const char *state)
{
    char status[400];
    status[0] = '\0';
    if (n->status_fn)
        n->status_fn(n->status_arg, status, sizeof(status));
    char msg[512];
    snprintf(msg, sizeof(msg), "%s%sSTATUS=%s", state, *state ? "\n" : "", status);
    int rc = sd_notify(0, msg);
    if (rc < 0) {
        log_warn("sd_notify: %s", strerror(-rc));
        n->enabled = false; /* the socket is gone or refuses: stop trying */
    }
}

static void on_watchdog(uv_timer_t *t)
{
    /* Sent without a status: the pings are frequent and the status has its own timer. */
    sd_notify(0, "WATCHDOG=1");
    (void)t;
}

static void on_status(uv_timer_t *t)
{
    struct notify *n = t->data;
    if (n->enabled)
        notify_send(n, "");
}

void notify_start(struct notify *n, uv_loop_t *loop, notify_status_fn status_fn, void *arg)
{
    memset(n, 0, sizeof(*n));
    n->status_fn = status_fn;
    n->status_arg = arg;
    const char *socket = getenv("NOTIFY_SOCKET");
    n->enabled = socket && *socket;
    uint64_t usec = 0;
    /* sd_watchdog_enabled checks WATCHDOG_PID against this process, so a watchdog meant for
     * another process (a wrapper that did not clear it) is ignored. */
    if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0)
        n->watchdog_ms = usec / 2000 ? usec / 2000 : 1;
    if (!n->enabled && !n->watchdog_ms)
        return;
    n->timers = true;
    uv_timer_init(loop, &n->watchdog);
    n->watchdog.data = n;
    uv_timer_init(loop, &n->status);
    n->status.data = n;
    if (n->watchdog_ms) {
        log_info("systemd watchdog: pinging every %llu ms", (unsigned long long)n->watchdog_ms);
        sd_notify(0, "WATCHDOG=1");
        uv_timer_start(&n->watchdog, on_watchdog, n->watchdog_ms, n->watchdog_ms);
    }
    if (n->enabled)
        uv_timer_start(&n->status, on_status, NOTIFY_STATUS_MS, NOTIFY_STATUS_MS);
}

void notify_ready(struct notify *n)
{
    if (n->enabled)
        notify_send(n, "READY=1");
}

void notify_stopping(struct notify *n)
{
    if (n->enabled)
        notify_send(n, "STOPPING=1");
}

void notify_close(struct notify *n)
{
    if (!n->timers)
        return;
    n->timers = false;
    uv_close((uv_handle_t *)&n->watchdog, NULL);
    uv_close((uv_handle_t *)&n->status, NULL);
}

#else /* !USAGED_HAVE_SYSTEMD */

void notify_start(struct notify *n, uv_loop_t *loop, notify_status_fn status_fn, void *arg)
{
    memset(n, 0, sizeof(*n));
    (void)loop;
    (void)status_fn;
    (void)arg;
}

void notify_ready(struct notify *n)
{
    (void)n;
}

void notify_stopping(struct notify *n)
{
    (void)n;
}

void notify_close(struct notify *n)
{
    (void)n;
}

#endif
