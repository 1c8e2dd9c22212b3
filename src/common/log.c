/* log: see log.h. The level is the one piece of process-wide state in usaged: stderr itself is
 * process-wide, and threading a logger through every call would add noise to every module for no
 * gain in testability. */
#include "log.h"

#include "clock.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static enum log_level current_level = LOG_INFO;

static const char *const level_names[] = {"error", "warn", "info", "debug"};
static const int syslog_priority[] = {3, 4, 6, 7};

int log_level_parse(const char *name)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++)
        if (strcmp(name, level_names[i]) == 0)
            return (int)i;
    return -1;
}

const char *log_level_name(enum log_level level)
{
    return level_names[level];
}

void log_set_level(enum log_level level)
{
    current_level = level;
}

bool log_enabled(enum log_level level)
{
    return level <= current_level;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    char line[2048];
    size_t len = 0;
    if (getenv("JOURNAL_STREAM") != NULL) {
        len = (size_t)snprintf(line, sizeof(line), "<%d>", syslog_priority[level]);
    } else {
        int64_t now_ms = clock_wall_ms();
        time_t now_s = (time_t)(now_ms / 1000);
        struct tm tm;
        gmtime_r(&now_s, &tm);
        len = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
        len += (size_t)snprintf(line + len, sizeof(line) - len, ".%03dZ %-5s ",
                                (int)(now_ms % 1000), level_names[level]);
    }
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line + len, sizeof(line) - len - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    size_t end = len + (size_t)n;
    if (end > sizeof(line) - 2)
        end = sizeof(line) - 2;
    /* One event, one line, and nothing a terminal or a log viewer would act on: client text
     * (a provider name, a method) can reach here. C0 controls and DEL become spaces; C1
     * controls (U+0080..U+009F) and the line and paragraph separators (U+2028, U+2029) become
     * question marks, byte for byte. */
    unsigned char *u = (unsigned char *)line;
    for (size_t i = len; i < end; i++) {
        if (u[i] < 0x20 || u[i] == 0x7f) {
            u[i] = ' ';
        } else if (u[i] == 0xc2 && i + 1 < end && u[i + 1] >= 0x80 && u[i + 1] <= 0x9f) {
            u[i] = u[i + 1] = '?';
        } else if (u[i] == 0xe2 && i + 2 < end && u[i + 1] == 0x80 &&
                   (u[i + 2] == 0xa8 || u[i + 2] == 0xa9)) {
            u[i] = u[i + 1] = u[i + 2] = '?';
        }
    }
    line[end] = '\n';
    fwrite(line, 1, end + 1, stderr);
}

bool log_limiter_allow(struct log_limiter *limiter, uint64_t now_ms)
{
    if (now_ms - limiter->window_start >= limiter->period_ms) {
        if (limiter->suppressed > 0)
            log_warn("%llu similar messages suppressed in the last %llu ms",
                     (unsigned long long)limiter->suppressed,
                     (unsigned long long)limiter->period_ms);
        limiter->window_start = now_ms;
        limiter->used = 0;
        limiter->suppressed = 0;
    }
    if (limiter->used < limiter->burst) {
        limiter->used++;
        return true;
    }
    limiter->suppressed++;
    return false;
}
