/* main: the command line. Parses arguments, loads the config, and hands over to the daemon (or
 * checks the config, or migrates the database). No logic of its own. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "config.h"
#include "daemon.h"
#include "log.h"
#include "migrate.h"
#include "secret.h"

#define EXIT_CONFIG 78 /* EX_CONFIG: systemd's RestartPreventExitStatus can name it */

static void usage(FILE *out)
{
    fprintf(out, "usage: usaged -c FILE              run in the foreground\n"
                 "       usaged --check-config -c FILE   validate the config and exit\n"
                 "       usaged --migrate -c FILE        apply pending database migrations\n"
                 "       usaged --version\n");
}

int main(int argc, char **argv)
{
    static const struct option options[] = {
        {"config", required_argument, NULL, 'c'}, {"check-config", no_argument, NULL, 'k'},
        {"migrate", no_argument, NULL, 'm'},      {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    const char *path = NULL;
    bool check_only = false, migrate = false;
    int opt;
    while ((opt = getopt_long(argc, argv, "c:h", options, NULL)) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 'k':
            check_only = true;
            break;
        case 'm':
            migrate = true;
            break;
        case 'V':
            printf("usaged %s (protocol 1)\n", USAGED_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!path || optind != argc) {
        usage(stderr);
        return 2;
    }

    char err[1024];
    struct config *config = config_load(path, err, sizeof(err));
    if (!config) {
        fprintf(stderr, "%s\n", err);
        return EXIT_CONFIG;
    }
    if (check_only) {
        printf("%s: ok\n", path);
        config_free(config);
        return 0;
    }
    log_set_level((enum log_level)config->log.level);
    if (migrate) {
        const char *conninfo = config->postgres.admin_conninfo ? config->postgres.admin_conninfo
                                                               : config->postgres.conninfo;
        int rc = migrate_apply(conninfo, err, sizeof(err));
        if (rc < 0)
            fprintf(stderr, "usaged: --migrate: %s\n", err);
        config_free(config);
        return rc < 0 ? 1 : 0;
    }
    /* Without its token the daemon could let no client in: a config to fix, not a start to
     * retry (daemon_start reads it for good). */
    if (config->auth.token_file) {
        char *token;
        size_t len;
        if (secret_read("auth.token_file", config->auth.token_file, &token, &len, err,
                        sizeof(err)) < 0) {
            log_error("cannot start: %s", err);
            config_free(config);
            return EXIT_CONFIG;
        }
        secret_free(token);
    }
    /* A database behind this binary would refuse its rows: say so now, before accepting any.
     * An unreachable one is not a reason to refuse to start (rows wait in the spool). */
    switch (migrate_check(config->postgres.conninfo, 3, err, sizeof(err))) {
    case MIGRATE_BEHIND:
        log_error("cannot start: %s", err);
        config_free(config);
        return 1;
    case MIGRATE_UNREACHABLE:
        log_warn("PostgreSQL is not reachable at start (%s); starting anyway", err);
        break;
    case MIGRATE_AHEAD:
        /* The migrations only add (docs/schema.md): an older binary still works, through a
         * rolling upgrade. */
        log_warn("%s; starting anyway", err);
        break;
    case MIGRATE_CURRENT:
        break;
    }

    signal(SIGPIPE, SIG_IGN);
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct daemon d;
    if (daemon_start(&d, &loop, config, err, sizeof(err)) < 0) {
        log_error("cannot start: %s", err);
        config_free(config);
        uv_run(&loop, UV_RUN_DEFAULT); /* let what was opened finish closing */
        uv_loop_close(&loop);
        return 1;
    }
    return daemon_run(&d);
}
