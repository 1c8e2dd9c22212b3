/* insert-bench: what an app server does without usaged: one INSERT per event into
 * public.api_usage_logs, autocommit, from N clients at once (a thread and a connection each).
 *
 * Each client prepares the INSERT once and executes it with the same generated values as
 * usage-bench sends (gen.c); id and created_at take the table's defaults (gen_random_uuid(),
 * now()), as an app's INSERT would. Reports rows/s and the latency of one INSERT. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gen.h"
#include "hist.h"

struct options {
    const char *pg;
    uint32_t clients;
    double duration_s;
    uint32_t users;
    const char *providers;
    uint64_t seed;
    bool json;
};

struct client {
    const struct options *o;
    uint32_t index;
    uint64_t deadline_ns;
    uint64_t rows;
    uint64_t errors;
    struct hist lat;
    char error[256];
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static const char insert_sql[] =
    "INSERT INTO public.api_usage_logs (user_id, provider, endpoint, request_size, "
    "response_size, response_time_ms, status_code, error_message) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

static void *client_main(void *arg)
{
    struct client *cl = arg;
    const struct options *o = cl->o;
    PGconn *pg = PQconnectdb(o->pg);
    if (PQstatus(pg) != CONNECTION_OK) {
        snprintf(cl->error, sizeof(cl->error), "%s", PQerrorMessage(pg));
        PQfinish(pg);
        return NULL;
    }
    PGresult *r = PQprepare(pg, "ins", insert_sql, 8, NULL);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        snprintf(cl->error, sizeof(cl->error), "%s", PQerrorMessage(pg));
        PQclear(r);
        PQfinish(pg);
        return NULL;
    }
    PQclear(r);
    struct gen g;
    if (!gen_init(&g, o->seed * 7919 + cl->index + 1, o->users, o->providers)) {
        snprintf(cl->error, sizeof(cl->error), "bad --providers");
        PQfinish(pg);
        return NULL;
    }
    char user[GEN_UUID_LEN + 1], req[16], resp[16], ms[16], status[16];
    const char *values[8];
    while (now_ns() < cl->deadline_ns) {
        struct gen_usage u;
        gen_usage(&g, &u);
        gen_user_id(u.user, user);
        snprintf(req, sizeof(req), "%d", u.request_size);
        snprintf(resp, sizeof(resp), "%d", u.response_size);
        snprintf(ms, sizeof(ms), "%d", u.response_time_ms);
        snprintf(status, sizeof(status), "%d", u.status_code);
        values[0] = user;
        values[1] = g.providers[u.provider];
        values[2] = u.endpoint;
        values[3] = req;
        values[4] = resp;
        values[5] = ms;
        values[6] = status;
        values[7] = u.error_message;
        uint64_t t0 = now_ns();
        r = PQexecPrepared(pg, "ins", 8, values, NULL, NULL, 0);
        uint64_t t1 = now_ns();
        if (PQresultStatus(r) == PGRES_COMMAND_OK) {
            cl->rows++;
            hist_record(&cl->lat, t1 - t0);
        } else {
            if (cl->errors++ == 0)
                snprintf(cl->error, sizeof(cl->error), "%s", PQerrorMessage(pg));
        }
        PQclear(r);
    }
    gen_free(&g);
    PQfinish(pg);
    return NULL;
}

static void usage(FILE *f)
{
    fputs("usage: insert-bench --pg CONNINFO [--clients N] [--duration S] [--users N]\n"
          "                    [--providers LIST] [--seed N] [--json]\n",
          f);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"pg", required_argument, NULL, 'g'},
        {"clients", required_argument, NULL, 'c'},
        {"duration", required_argument, NULL, 'd'},
        {"users", required_argument, NULL, 'u'},
        {"providers", required_argument, NULL, 'P'},
        {"seed", required_argument, NULL, 's'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct options o = {
        .clients = 1,
        .duration_s = 10,
        .users = 1000,
        .providers = "openai,anthropic,google,mistral,groq",
        .seed = 1,
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "g:c:d:u:P:s:jh", longopts, NULL)) != -1) {
        switch (ch) {
        case 'g':
            o.pg = optarg;
            break;
        case 'c':
            o.clients = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'd':
            o.duration_s = strtod(optarg, NULL);
            break;
        case 'u':
            o.users = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'P':
            o.providers = optarg;
            break;
        case 's':
            o.seed = strtoull(optarg, NULL, 10);
            break;
        case 'j':
            o.json = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!o.pg || o.clients == 0 || o.clients > 256 || o.duration_s <= 0 || o.users == 0) {
        usage(stderr);
        return 2;
    }
    struct client *cls = calloc(o.clients, sizeof(*cls));
    pthread_t *threads = calloc(o.clients, sizeof(*threads));
    if (!cls || !threads) {
        fprintf(stderr, "insert-bench: out of memory\n");
        return 2;
    }
    uint64_t t0 = now_ns();
    uint64_t deadline = t0 + (uint64_t)(o.duration_s * 1e9);
    for (uint32_t i = 0; i < o.clients; i++) {
        cls[i].o = &o;
        cls[i].index = i;
        cls[i].deadline_ns = deadline;
        int rc = pthread_create(&threads[i], NULL, client_main, &cls[i]);
        if (rc != 0) {
            fprintf(stderr, "insert-bench: pthread_create: %s\n", strerror(rc));
            return 2;
        }
    }
    uint64_t rows = 0, errors = 0;
    struct hist *all = calloc(1, sizeof(*all));
    const char *error = NULL;
    for (uint32_t i = 0; i < o.clients; i++) {
        pthread_join(threads[i], NULL);
        rows += cls[i].rows;
        errors += cls[i].errors;
        hist_merge(all, &cls[i].lat);
        if (cls[i].error[0] && !error)
            error = cls[i].error;
    }
    double elapsed = (double)(now_ns() - t0) / 1e9;
    if (error)
        fprintf(stderr, "insert-bench: %s", error);
    if (o.json) {
        printf("{\"clients\": %u, \"window_s\": %.3f, \"rows\": %" PRIu64 ", \"errors\": %" PRIu64
               ", \"rows_per_s\": %.1f, \"latency_us\": {\"p50\": %.1f, \"p99\": %.1f, "
               "\"p999\": %.1f, \"max\": %.1f}}\n",
               o.clients, elapsed, rows, errors, (double)rows / elapsed,
               (double)hist_quantile(all, 0.5) / 1e3, (double)hist_quantile(all, 0.99) / 1e3,
               (double)hist_quantile(all, 0.999) / 1e3, (double)all->max / 1e3);
    } else {
        printf("insert-bench: %u clients, %.2f s: %" PRIu64 " rows (%" PRIu64
               " errors) = %.0f rows/s\n"
               "latency of one INSERT (us): p50 %.1f, p99 %.1f, p99.9 %.1f, max %.1f\n",
               o.clients, elapsed, rows, errors, (double)rows / elapsed,
               (double)hist_quantile(all, 0.5) / 1e3, (double)hist_quantile(all, 0.99) / 1e3,
               (double)hist_quantile(all, 0.999) / 1e3, (double)all->max / 1e3);
    }
    free(all);
    free(cls);
    free(threads);
    return rows > 0 ? 0 : 1;
}
