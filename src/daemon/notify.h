/* notify: telling systemd how the daemon is doing (sd_notify), for Type=notify units.
 *
 * READY=1 once, when the daemon says it is up; STATUS= lines with live figures every few seconds;
 * STOPPING=1 when the drain begins; WATCHDOG=1 from a timer on the loop at half of WATCHDOG_USEC,
 * so that a loop that hangs stops the pings and systemd restarts the service.
 *
 * Built against libsystemd when meson finds it (USAGED_HAVE_SYSTEMD); without it every function
 * is a no-op. Without NOTIFY_SOCKET (not run by systemd) nothing is sent and no timer runs. */
#ifndef USAGED_NOTIFY_H
#define USAGED_NOTIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Writes the current one-line status (no newline) into out. */
typedef void (*notify_status_fn)(void *arg, char *out, size_t len);

struct notify {
    uv_timer_t watchdog;        /* sends WATCHDOG=1 */
    uv_timer_t status;          /* sends STATUS= */
    uint64_t watchdog_ms;       /* interval of the pings: half of WATCHDOG_USEC; 0: none */
    bool enabled;               /* NOTIFY_SOCKET is set: systemd listens */
    bool timers;                /* the timers were initialised (and must be closed) */
    notify_status_fn status_fn; /* supplies STATUS= text */
    void *status_arg;
};

/* Starts the watchdog pings and the status timer when systemd asks for them. */
void notify_start(struct notify *n, uv_loop_t *loop, notify_status_fn status_fn, void *arg);
/* READY=1 with the current status. */
void notify_ready(struct notify *n);
/* STOPPING=1 with the current status. */
void notify_stopping(struct notify *n);
/* Closes the timers (the watchdog pings until then, through the whole drain). */
void notify_close(struct notify *n);

#endif
