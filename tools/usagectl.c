/* usagectl: the command-line client of usaged, for people and scripts, on top of the client
 * library. Exit codes: 0 success (check: allowed), 1 the daemon answered with an error (check:
 * denied), 2 bad usage, 3 cannot connect or the connection failed, 4 timeout or protocol error. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "buf.h"
#include "prom.h"
#include "usaged/client.h"

#define EXIT_DENIED 1
#define EXIT_USAGE 2
#define EXIT_CONNECT 3
#define EXIT_PROTOCOL 4

static const char *const usage_text =
    "usage: usagectl [-s SOCKET | -a HOST:PORT] [-T TOKEN_FILE] [-t TIMEOUT_MS] COMMAND ...\n"
    "\n"
    "commands:\n"
    "  ping                                 is the daemon up? prints version and uptime\n"
    "  stats [--json | --prometheus]        counters and gauges\n"
    "  check USER_ID PROVIDER [--cost N] [--model M] [--tokens N] [--spend USD]\n"
    "                                       spend of a quota; exit 1 if denied\n"
    "  settle RESERVATION [--tokens N] [--spend USD] [--cancel]\n"
    "                                       what the call used, after a check\n"
    "  usage USER_ID [PROVIDER [MODEL]]     the user's standing under every rule, as a table\n"
    "  log-usage KEY=VALUE...               record one API call (api_usage_logs)\n"
    "  log-prompt KEY=VALUE...              record one prompt generation (prompt_history)\n"
    "  call METHOD [VALUE...]               send any request; values are parsed like KEY=VALUE\n"
    "                                       values (int, float, true/false/null, else string)\n"
    "  migrate -c CONFIG                    apply pending migrations (runs usaged --migrate)\n"
    "\n"
    "options:\n"
    "  -s, --socket PATH      Unix socket (default $USAGED_SOCKET or /run/usaged/usaged.sock)\n"
    "  -a, --address ADDR     host:port of a TCP listener instead\n"
    "  -T, --token-file FILE  send auth with the token in FILE first\n"
    "  -t, --timeout MS       per-call timeout (default 5000)\n"
    "  log-*: --ack queued|durable, --notify (fire-and-forget)\n"
    "\n"
    "exit codes: 0 ok, 1 error answer or denied, 2 usage, 3 connection, 4 timeout/protocol\n";

/* `usagectl COMMAND --help`. */
static const struct command_help {
    const char *command;
    const char *text;
} command_help[] = {
    {"ping", "usage: usagectl [OPTIONS] ping\n"
             "Asks the daemon for its version, protocol and uptime. Exit 0 when it answers.\n"},
    {"stats", "usage: usagectl [OPTIONS] stats [--json | --prometheus]\n"
              "Prints the daemon's counters and gauges: one \"section.key value\" line each, or\n"
              "the whole map as JSON, or the Prometheus text exposition format (the same text\n"
              "as the metrics.listen endpoint serves).\n"},
    {"check", "usage: usagectl [OPTIONS] check USER_ID PROVIDER [--cost N] [--model M]\n"
              "                [--tokens N] [--spend USD]\n"
              "Spends N requests (default 1), and an estimate of tokens and spend (a decimal\n"
              "of USD, at most 6 places), of USER_ID's quotas with PROVIDER (and MODEL), and\n"
              "prints the answer as JSON; all 0 only looks. Exit 0 when allowed, 1 when denied\n"
              "or refused. An answer with a reservation wants a settle after the call.\n"},
    {"settle", "usage: usagectl [OPTIONS] settle RESERVATION [--tokens N] [--spend USD] "
               "[--cancel]\n"
               "Tells the daemon what the call of a check's RESERVATION really used (a value\n"
               "left out keeps the check's estimate), or --cancel that it was not made, and\n"
               "prints the answer as JSON. Exit 0 when settled (again: duplicate true), 1 on\n"
               "an error answer (unknown_reservation, ...).\n"},
    {"usage", "usage: usagectl [OPTIONS] usage USER_ID [PROVIDER [MODEL]]\n"
              "Prints USER_ID's standing under every rule that applies (narrowed to PROVIDER\n"
              "and MODEL), spending nothing: one line per rule with its provider and model (*:\n"
              "every provider, any model), dimension, window, limit, used, remaining and reset.\n"
              "Exit 0 when answered, 1 on an error answer.\n"},
    {"log-usage", "usage: usagectl [OPTIONS] log-usage KEY=VALUE... [--ack queued|durable] "
                  "[--notify]\n"
                  "Records one API call in api_usage_logs, e.g.\n"
                  "  usagectl log-usage user_id=UUID provider=openai status_code=200\n"
                  "Keys are the fields of log_usage (docs/protocol.md). --notify sends it as a\n"
                  "notification (no answer); else the answer, {\"accepted\": 1}, is printed.\n"},
    {"log-prompt", "usage: usagectl [OPTIONS] log-prompt KEY=VALUE... [--ack queued|durable] "
                   "[--notify]\n"
                   "Records one prompt generation in prompt_history, e.g.\n"
                   "  usagectl log-prompt user_id=UUID status=completed model=gpt-4o\n"
                   "Keys are the fields of log_prompt (docs/protocol.md).\n"},
    {"call", "usage: usagectl [OPTIONS] call METHOD [VALUE...]\n"
             "Sends any request with the VALUEs as params (int, float, true, false, null, else a\n"
             "string) and prints the result as JSON.\n"},
    {"migrate", "usage: usagectl migrate -c CONFIG\n"
                "Applies pending database migrations: runs usaged --migrate -c CONFIG (the usaged\n"
                "beside usagectl, else the one on PATH).\n"},
};

/* Prints COMMAND's help; false when there is no such command. */
static bool print_command_help(const char *command)
{
    for (size_t i = 0; i < sizeof(command_help) / sizeof(command_help[0]); i++) {
        if (strcmp(command_help[i].command, command) == 0) {
            fputs(command_help[i].text, stdout);
            return true;
        }
    }
    return false;
}

static int exit_for(int rc)
{
    switch (rc) {
    case USAGED_OK:
        return 0;
    case USAGED_ERR_SERVER:
        return EXIT_DENIED;
    case USAGED_ERR_IO:
        return EXIT_CONNECT;
    case USAGED_ERR_ARGUMENT:
        return EXIT_USAGE;
    default:
        return EXIT_PROTOCOL;
    }
}

static int fail(usaged_client *c, int rc)
{
    const char *field = usaged_error_field(c);
    if (field && usaged_error_index(c) >= 0) /* an event's field */
        fprintf(stderr, "usagectl: %s: %s (field %s, index %" PRId64 ")\n", usaged_error_code(c),
                usaged_error_message(c), field, usaged_error_index(c));
    else if (field) /* a field of check, settle or usage: no index */
        fprintf(stderr, "usagectl: %s: %s (field %s)\n", usaged_error_code(c),
                usaged_error_message(c), field);
    else
        fprintf(stderr, "usagectl: %s: %s\n", usaged_error_code(c), usaged_error_message(c));
    return exit_for(rc);
}

/* ---- printing msgpack objects ---- */

static void print_json_string(FILE *out, const char *s, size_t n)
{
    fputc('"', out);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\')
            fprintf(out, "\\%c", ch);
        else if (ch == '\n')
            fputs("\\n", out);
        else if (ch < 0x20)
            fprintf(out, "\\u%04x", ch);
        else
            fputc(ch, out);
    }
    fputc('"', out);
}

static void print_json(FILE *out, const msgpack_object *o, int indent)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        fputs("null", out);
        break;
    case MSGPACK_OBJECT_BOOLEAN:
        fputs(o->via.boolean ? "true" : "false", out);
        break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        fprintf(out, "%" PRIu64, o->via.u64);
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        fprintf(out, "%" PRId64, o->via.i64);
        break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        fprintf(out, "%.17g", o->via.f64);
        break;
    case MSGPACK_OBJECT_STR:
        print_json_string(out, o->via.str.ptr, o->via.str.size);
        break;
    case MSGPACK_OBJECT_BIN:
        fprintf(out, "\"<%u bytes>\"", o->via.bin.size);
        break;
    case MSGPACK_OBJECT_EXT:
        fprintf(out, "\"<ext %d>\"", o->via.ext.type);
        break;
    case MSGPACK_OBJECT_ARRAY:
        fputc('[', out);
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            if (i)
                fputs(", ", out);
            print_json(out, &o->via.array.ptr[i], indent);
        }
        fputc(']', out);
        break;
    case MSGPACK_OBJECT_MAP:
        fputs("{\n", out);
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            fprintf(out, "%*s", indent + 2, "");
            print_json(out, &o->via.map.ptr[i].key, indent + 2);
            fputs(": ", out);
            print_json(out, &o->via.map.ptr[i].val, indent + 2);
            fputs(i + 1 < o->via.map.size ? ",\n" : "\n", out);
        }
        fprintf(out, "%*s}", indent, "");
        break;
    }
}

/* Human form: one "section.key  value" line per leaf. */
static void print_table(const msgpack_object *o, char *prefix, size_t plen)
{
    if (o->type != MSGPACK_OBJECT_MAP) {
        printf("%-48s ", prefix);
        print_json(stdout, o, 0);
        putchar('\n');
        return;
    }
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key;
        if (k->type != MSGPACK_OBJECT_STR)
            continue;
        size_t n = (size_t)snprintf(prefix + plen, 256 - plen, "%s%.*s", plen ? "." : "",
                                    (int)k->via.str.size, k->via.str.ptr);
        print_table(&o->via.map.ptr[i].val, prefix, plen + n < 256 ? plen + n : 255);
        prefix[plen] = '\0';
    }
}

/* ---- values from the command line ---- */

static void pack_value(msgpack_packer *pk, const char *s)
{
    char *end;
    errno = 0;
    long long i = strtoll(s, &end, 10);
    if (*s && !*end && !errno) {
        msgpack_pack_int64(pk, i);
        return;
    }
    errno = 0;
    double d = strtod(s, &end);
    if (*s && !*end && !errno && strchr(s, '.')) {
        msgpack_pack_double(pk, d);
        return;
    }
    if (strcmp(s, "true") == 0) {
        msgpack_pack_true(pk);
    } else if (strcmp(s, "false") == 0) {
        msgpack_pack_false(pk);
    } else if (strcmp(s, "null") == 0) {
        msgpack_pack_nil(pk);
    } else {
        size_t n = strlen(s);
        msgpack_pack_str(pk, n);
        msgpack_pack_str_body(pk, s, n);
    }
}

/* Fields whose values stay strings even when they look like numbers. */
static bool is_text_field(const char *key, size_t n)
{
    static const char *const text[] = {
        "id",           "user_id",        "provider",      "endpoint",   "model",
        "framework_id", "framework_name", "tone",          "length",     "user_input",
        "ai_response",  "status",         "error_message", "error_code", "cost_usd",
        "reservation"};
    for (size_t i = 0; i < sizeof(text) / sizeof(text[0]); i++)
        if (strlen(text[i]) == n && strncmp(text[i], key, n) == 0)
            return true;
    return false;
}

static int cmd_log(usaged_client *c, const char *method, int argc, char **argv)
{
    const char *ack = NULL;
    bool notify = false;
    int nfields = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--notify") == 0) {
            notify = true;
        } else if (strcmp(argv[i], "--ack") == 0 && i + 1 < argc) {
            ack = argv[++i];
        } else if (strchr(argv[i], '=')) {
            nfields++;
        } else {
            fprintf(stderr, "usagectl: expected KEY=VALUE, not %s\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    uint32_t msgid = 0;
    msgpack_packer *pk = notify ? usaged_begin_notification(c, method, ack ? 2 : 1)
                                : usaged_begin_request(c, method, ack ? 2 : 1, &msgid);
    msgpack_pack_array(pk, 1);
    msgpack_pack_map(pk, (size_t)nfields);
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--notify") == 0)
            continue;
        if (strcmp(argv[i], "--ack") == 0) {
            i++;
            continue;
        }
        const char *eq = strchr(argv[i], '=');
        size_t klen = (size_t)(eq - argv[i]);
        msgpack_pack_str(pk, klen);
        msgpack_pack_str_body(pk, argv[i], klen);
        if (is_text_field(argv[i], klen)) {
            msgpack_pack_str(pk, strlen(eq + 1));
            msgpack_pack_str_body(pk, eq + 1, strlen(eq + 1));
        } else {
            pack_value(pk, eq + 1);
        }
    }
    if (ack) {
        msgpack_pack_map(pk, 1);
        msgpack_pack_str(pk, 3);
        msgpack_pack_str_body(pk, "ack", 3);
        msgpack_pack_str(pk, strlen(ack));
        msgpack_pack_str_body(pk, ack, strlen(ack));
    }
    if (notify) {
        int rc = usaged_flush(c);
        return rc == USAGED_OK ? 0 : fail(c, rc);
    }
    const msgpack_object *r;
    int rc = usaged_wait(c, msgid, &r);
    if (rc != USAGED_OK)
        return fail(c, rc);
    print_json(stdout, r, 0);
    putchar('\n');
    return 0;
}

static int cmd_call(usaged_client *c, int argc, char **argv)
{
    if (argc < 1) {
        fputs(usage_text, stderr);
        return EXIT_USAGE;
    }
    uint32_t msgid;
    msgpack_packer *pk = usaged_begin_request(c, argv[0], (uint32_t)(argc - 1), &msgid);
    for (int i = 1; i < argc; i++)
        pack_value(pk, argv[i]);
    const msgpack_object *r;
    int rc = usaged_wait(c, msgid, &r);
    if (rc != USAGED_OK)
        return fail(c, rc);
    print_json(stdout, r, 0);
    putchar('\n');
    return 0;
}

/* A non-negative integer option's value; false (after saying so) when it is not one. */
static bool option_uint(const char *name, const char *text, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (!*text || *end || text[0] == '-' || errno || v > max) {
        fprintf(stderr, "usagectl: %s needs a non-negative integer up to %" PRIu64 "\n", name, max);
        return false;
    }
    *out = v;
    return true;
}

/* Packs "key": value, with value as a string. */
static void pack_pair(msgpack_packer *pk, const char *key, const char *value)
{
    msgpack_pack_str(pk, strlen(key));
    msgpack_pack_str_body(pk, key, strlen(key));
    msgpack_pack_str(pk, strlen(value));
    msgpack_pack_str_body(pk, value, strlen(value));
}

/* Waits for the answer, prints it as JSON; with want_key, exits by that boolean's value. */
static int print_answer(usaged_client *c, uint32_t msgid, const char *want_key)
{
    const msgpack_object *r;
    int rc = usaged_wait(c, msgid, &r);
    if (rc != USAGED_OK)
        return fail(c, rc);
    print_json(stdout, r, 0);
    putchar('\n');
    if (!want_key)
        return 0;
    for (uint32_t i = 0; r->type == MSGPACK_OBJECT_MAP && i < r->via.map.size; i++) {
        const msgpack_object *k = &r->via.map.ptr[i].key, *v = &r->via.map.ptr[i].val;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(want_key) &&
            memcmp(k->via.str.ptr, want_key, k->via.str.size) == 0)
            return v->type == MSGPACK_OBJECT_BOOLEAN && v->via.boolean ? 0 : EXIT_DENIED;
    }
    return EXIT_PROTOCOL;
}

static int cmd_check(usaged_client *c, int argc, char **argv)
{
    uint64_t cost = 1, tokens = 0;
    const char *model = NULL, *spend = NULL;
    bool has_tokens = false;
    if (argc < 2 || argv[0][0] == '-' || argv[1][0] == '-') {
        fputs(usage_text, stderr);
        return EXIT_USAGE;
    }
    for (int i = 2; i < argc; i += 2) { /* OPTION VALUE pairs */
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!value) {
            fputs(usage_text, stderr);
            return EXIT_USAGE;
        }
        if (strcmp(argv[i], "--cost") == 0) {
            if (!option_uint("--cost", value, UINT32_MAX, &cost))
                return EXIT_USAGE;
        } else if (strcmp(argv[i], "--tokens") == 0) {
            if (!option_uint("--tokens", value, UINT64_MAX, &tokens))
                return EXIT_USAGE;
            has_tokens = true;
        } else if (strcmp(argv[i], "--model") == 0) {
            model = value;
        } else if (strcmp(argv[i], "--spend") == 0) {
            spend = value;
        } else {
            fputs(usage_text, stderr);
            return EXIT_USAGE;
        }
    }
    uint32_t msgid;
    msgpack_packer *pk = usaged_begin_request(c, USAGED_METHOD_CHECK, 1, &msgid);
    msgpack_pack_map(pk, 3 + (model != NULL) + has_tokens + (spend != NULL));
    pack_pair(pk, "user_id", argv[0]);
    pack_pair(pk, "provider", argv[1]);
    if (model)
        pack_pair(pk, "model", model);
    if (spend)
        pack_pair(pk, "spend", spend);
    msgpack_pack_str(pk, 4);
    msgpack_pack_str_body(pk, "cost", 4);
    msgpack_pack_uint32(pk, (uint32_t)cost);
    if (has_tokens) {
        msgpack_pack_str(pk, 6);
        msgpack_pack_str_body(pk, "tokens", 6);
        msgpack_pack_uint64(pk, tokens);
    }
    return print_answer(c, msgid, "allowed");
}

static int cmd_settle(usaged_client *c, int argc, char **argv)
{
    uint64_t tokens = 0;
    bool has_tokens = false, cancel = false;
    const char *spend = NULL;
    if (argc < 1 || argv[0][0] == '-') {
        fputs(usage_text, stderr);
        return EXIT_USAGE;
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--cancel") == 0) {
            cancel = true;
        } else if (strcmp(argv[i], "--tokens") == 0 && i + 1 < argc) {
            if (!option_uint("--tokens", argv[++i], UINT64_MAX, &tokens))
                return EXIT_USAGE;
            has_tokens = true;
        } else if (strcmp(argv[i], "--spend") == 0 && i + 1 < argc) {
            spend = argv[++i];
        } else {
            fputs(usage_text, stderr);
            return EXIT_USAGE;
        }
    }
    uint32_t msgid;
    msgpack_packer *pk = usaged_begin_request(c, USAGED_METHOD_SETTLE, 1, &msgid);
    msgpack_pack_map(pk, 1 + has_tokens + (spend != NULL) + cancel);
    pack_pair(pk, "reservation", argv[0]);
    if (spend)
        pack_pair(pk, "spend", spend);
    if (has_tokens) {
        msgpack_pack_str(pk, 6);
        msgpack_pack_str_body(pk, "tokens", 6);
        msgpack_pack_uint64(pk, tokens);
    }
    if (cancel) {
        msgpack_pack_str(pk, 6);
        msgpack_pack_str_body(pk, "cancel", 6);
        msgpack_pack_true(pk);
    }
    return print_answer(c, msgid, "settled");
}

/* A quota as the table shows it: "-" for nil, spend in USD with 6 places. */
static void format_quota(const struct usaged_quota *q, bool spend, char *out, size_t cap)
{
    if (!q->has_value)
        snprintf(out, cap, "-");
    else if (spend)
        snprintf(out, cap, "%s%" PRId64 ".%06" PRId64, q->value < 0 ? "-" : "",
                 (q->value < 0 ? -q->value : q->value) / 1000000,
                 (q->value < 0 ? -q->value : q->value) % 1000000);
    else
        snprintf(out, cap, "%" PRId64, q->value);
}

#define USAGE_ROWS_MAX 1024

static int cmd_usage(usaged_client *c, int argc, char **argv)
{
    if (argc < 1 || argc > 3 || argv[0][0] == '-') {
        fputs(usage_text, stderr);
        return EXIT_USAGE;
    }
    struct usaged_usage_limit *rows = calloc(USAGE_ROWS_MAX, sizeof(*rows));
    if (!rows)
        return EXIT_PROTOCOL;
    struct usaged_usage_answer ans;
    int rc = usaged_usage(c, argv[0], argc > 1 ? argv[1] : NULL, argc > 2 ? argv[2] : NULL, rows,
                          USAGE_ROWS_MAX, &ans);
    size_t n = ans.n;
    if (rc != USAGED_OK) {
        free(rows);
        return fail(c, rc);
    }
    printf("%-16s %-16s %-10s %-7s %16s %16s %16s %10s\n", "PROVIDER", "MODEL", "DIMENSION",
           "WINDOW", "LIMIT", "USED", "REMAINING", "RESET_S");
    for (size_t i = 0; i < n && i < USAGE_ROWS_MAX; i++) {
        const struct usaged_usage_limit *u = &rows[i];
        bool spend = strcmp(u->limit.dimension, "spend") == 0;
        char limit[32], used[32], left[32], window[16];
        format_quota(&u->limit.limit, spend, limit, sizeof(limit));
        format_quota(&u->limit.used, spend, used, sizeof(used));
        format_quota(&u->limit.remaining, spend, left, sizeof(left));
        snprintf(window, sizeof(window), "%s%s", u->limit.window[0] ? u->limit.window : "-",
                 u->shadow ? "*" : "");
        printf("%-16s %-16s %-10s %-7s %16s %16s %16s %10" PRIu64 "\n",
               u->provider[0] ? u->provider : "*", u->model[0] ? u->model : "*", u->limit.dimension,
               window, limit, used, left, u->limit.reset_ms / 1000);
    }
    if (n > USAGE_ROWS_MAX)
        printf("(%zu more rules left out)\n", n - USAGE_ROWS_MAX);
    if (ans.truncated)
        printf("(truncated: the daemon read at most 256 providers and models)\n");
    if (ans.degraded)
        printf("(degraded: some of it was read without Redis)\n");
    free(rows);
    return 0;
}

static int cmd_stats(usaged_client *c, int argc, char **argv)
{
    enum { HUMAN, JSON, PROMETHEUS } format = HUMAN;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            format = JSON;
        else if (strcmp(argv[i], "--prometheus") == 0)
            format = PROMETHEUS;
        else {
            fputs(usage_text, stderr);
            return EXIT_USAGE;
        }
    }
    const msgpack_object *r;
    int rc = usaged_stats(c, &r);
    if (rc != USAGED_OK)
        return fail(c, rc);
    char name[256] = "";
    if (format == JSON) {
        print_json(stdout, r, 0);
        putchar('\n');
    } else if (format == PROMETHEUS) {
        struct buf text;
        buf_init(&text);
        prom_render(r, "usaged", &text);
        fwrite(text.data, 1, text.len, stdout);
        buf_free(&text);
    } else {
        print_table(r, name, 0);
    }
    return 0;
}

static int cmd_migrate(int argc, char **argv, const char *self)
{
    if (argc != 2 || strcmp(argv[0], "-c") != 0) {
        fputs(usage_text, stderr);
        return EXIT_USAGE;
    }
    /* The migrations live in usaged; run the usaged installed beside usagectl. */
    char path[4096];
    const char *slash = strrchr(self, '/');
    if (slash)
        snprintf(path, sizeof(path), "%.*s/usaged", (int)(slash - self), self);
    else
        snprintf(path, sizeof(path), "usaged");
    char *args[] = {path, (char *)"--migrate", (char *)"-c", argv[1], NULL};
    execvp(path, args);
    if (slash) {
        args[0] = (char *)"usaged";
        execvp("usaged", args);
    }
    fprintf(stderr, "usagectl: cannot run usaged: %s\n", strerror(errno));
    return EXIT_CONNECT;
}

int main(int argc, char **argv)
{
    static const struct option options[] = {
        {"socket", required_argument, NULL, 's'},
        {"address", required_argument, NULL, 'a'},
        {"token-file", required_argument, NULL, 'T'},
        {"timeout", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    /* A socket path is always a path, even one that looks like host:port ("usaged.sock"). */
    const char *socket_path = getenv("USAGED_SOCKET");
    const char *address = NULL;
    const char *token_file = NULL;
    int timeout_ms = 5000;
    int opt;
    if (!socket_path)
        socket_path = "/run/usaged/usaged.sock";
    while ((opt = getopt_long(argc, argv, "+s:a:T:t:h", options, NULL)) != -1) {
        switch (opt) {
        case 's':
            socket_path = optarg;
            address = NULL;
            break;
        case 'a':
            address = optarg;
            socket_path = NULL;
            break;
        case 'T':
            token_file = optarg;
            break;
        case 't': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end || v < 1 || v > 3600000) {
                fprintf(stderr, "usagectl: --timeout needs milliseconds, 1 to 3600000\n");
                return EXIT_USAGE;
            }
            timeout_ms = (int)v;
            break;
        }
        case 'h':
            fputs(usage_text, stdout);
            return 0;
        default:
            fputs(usage_text, stderr);
            return EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        fputs(usage_text, stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[optind];
    int cargc = argc - optind - 1;
    char **cargv = argv + optind + 1;
    if (cargc == 1 && (strcmp(cargv[0], "--help") == 0 || strcmp(cargv[0], "-h") == 0)) {
        if (print_command_help(cmd))
            return 0;
        fprintf(stderr, "usagectl: unknown command %s\n%s", cmd, usage_text);
        return EXIT_USAGE;
    }
    if (strcmp(cmd, "migrate") == 0)
        return cmd_migrate(cargc, cargv, argv[0]);
    bool known = strcmp(cmd, "ping") == 0 || strcmp(cmd, "stats") == 0 ||
                 strcmp(cmd, "check") == 0 || strcmp(cmd, "settle") == 0 ||
                 strcmp(cmd, "usage") == 0 || strcmp(cmd, "log-usage") == 0 ||
                 strcmp(cmd, "log-prompt") == 0 || strcmp(cmd, "call") == 0;
    if (!known) {
        fprintf(stderr, "usagectl: unknown command %s\n%s", cmd, usage_text);
        return EXIT_USAGE;
    }

    char err[512], unix_address[4096];
    if (socket_path) {
        snprintf(unix_address, sizeof(unix_address), "unix:%s", socket_path);
        address = unix_address;
    }
    usaged_client *c = usaged_connect(address, timeout_ms, err, sizeof(err));
    if (!c) {
        fprintf(stderr, "usagectl: cannot connect: %s\n", err);
        return EXIT_CONNECT;
    }
    int rc = 0;
    if (token_file) {
        FILE *f = fopen(token_file, "r");
        char token[1024] = "";
        if (!f || !fgets(token, sizeof(token), f)) {
            fprintf(stderr, "usagectl: cannot read %s\n", token_file);
            rc = EXIT_USAGE;
        } else {
            token[strcspn(token, "\r\n")] = '\0';
            int a = usaged_auth(c, token);
            if (a != USAGED_OK)
                rc = fail(c, a);
        }
        if (f)
            fclose(f);
    }
    if (rc == 0) {
        if (strcmp(cmd, "ping") == 0) {
            if (cargc != 0) {
                fputs(usage_text, stderr);
                rc = EXIT_USAGE;
            } else {
                struct usaged_ping_result p;
                int r = usaged_ping(c, &p);
                if (r == USAGED_OK)
                    printf("usaged %s, protocol %u, up %" PRIu64 " ms\n", p.version, p.protocol,
                           p.uptime_ms);
                else
                    rc = fail(c, r);
            }
        } else if (strcmp(cmd, "stats") == 0) {
            rc = cmd_stats(c, cargc, cargv);
        } else if (strcmp(cmd, "check") == 0) {
            rc = cmd_check(c, cargc, cargv);
        } else if (strcmp(cmd, "settle") == 0) {
            rc = cmd_settle(c, cargc, cargv);
        } else if (strcmp(cmd, "usage") == 0) {
            rc = cmd_usage(c, cargc, cargv);
        } else if (strcmp(cmd, "log-usage") == 0) {
            rc = cmd_log(c, USAGED_METHOD_LOG_USAGE, cargc, cargv);
        } else if (strcmp(cmd, "log-prompt") == 0) {
            rc = cmd_log(c, USAGED_METHOD_LOG_PROMPT, cargc, cargv);
        } else {
            rc = cmd_call(c, cargc, cargv);
        }
    }
    usaged_close(c);
    return rc;
}
