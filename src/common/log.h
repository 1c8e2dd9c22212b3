/* log: one line per event on stderr, fit for journald and for a terminal.
 *
 * Under systemd (JOURNAL_STREAM set) each line starts with a syslog priority prefix ("<6>") that
 * journald turns into the entry's priority; on a terminal each line carries a UTC timestamp and
 * the level instead. Lines never contain a newline: any in the message is replaced. */
#ifndef USAGED_LOG_H
#define USAGED_LOG_H

#include <stdbool.h>
#include <stdint.h>

enum log_level { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };

/* Parses "error", "warn", "info" or "debug"; returns -1 for anything else. */
int log_level_parse(const char *name);
const char *log_level_name(enum log_level level);

void log_set_level(enum log_level level);
bool log_enabled(enum log_level level);

void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_enabled(LOG_DEBUG))                                                                \
            log_msg(LOG_DEBUG, __VA_ARGS__);                                                       \
    } while (0)

/* A budget for a message that a client can trigger at will (a bad notification, say): at most
 * `burst` lines per `period_ms`, then one summary line saying how many were suppressed. */
struct log_limiter {
    uint64_t period_ms;    /* length of one budget window */
    uint32_t burst;        /* lines allowed per window */
    uint64_t window_start; /* ms, the caller's clock */
    uint32_t used;         /* lines logged in this window */
    uint64_t suppressed;   /* lines dropped in this window */
};

/* True when a line may be logged now (now_ms from the caller's clock, e.g. uv_now). */
bool log_limiter_allow(struct log_limiter *limiter, uint64_t now_ms);

#endif
