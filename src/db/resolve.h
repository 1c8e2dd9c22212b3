/* resolve: host name lookups that never block the event loop.
 *
 * getaddrinfo blocks for as long as DNS takes, and libpq and hiredis both call it inside their
 * connect functions. So the daemon looks names up itself, on libuv's thread pool, and hands the
 * libraries numeric addresses. A lookup can be abandoned at any time (a connect timeout, a close):
 * its callback then never runs, and it frees itself once the thread pool is done with it.
 *
 * The second half is pure: how a PostgreSQL conninfo's hosts are found, which of them need a
 * lookup, and how the results go back to libpq (hostaddr beside host, so that TLS and
 * authentication still see the name). */
#ifndef USAGED_RESOLVE_H
#define USAGED_RESOLVE_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

/* addrs holds the numeric addresses found (a link-local IPv6 one with its %interface), valid
 * during the call. status is 0, or a libuv error code and naddrs 0. */
typedef void (*resolve_fn)(int status, const char *const *addrs, size_t naddrs, void *arg);

struct resolve;

/* Starts looking host up; cb runs on the loop, with the addresses in getaddrinfo's order (RFC
 * 6724, the order libpq tries them in), or IPv4 ones first (hiredis's order). Returns NULL and
 * sets *err (a libuv error code) when the lookup cannot even start. A lookup has no deadline of
 * its own: the resolver's timeouts (resolv.conf) end it. */
struct resolve *resolve_start(uv_loop_t *loop, const char *host, bool ipv4_first, resolve_fn cb,
                              void *arg, int *err);
/* The callback will not run; the request goes away when the thread pool returns it. */
void resolve_abandon(struct resolve *r);

/* host is a numeric IPv4 or IPv6 address (a scoped one too): nothing to look up. */
bool resolve_is_numeric(const char *host);

/* ---- a PostgreSQL conninfo's hosts ---- */

struct pg_target {
    char **keys; /* the conninfo's own settings, but host, hostaddr and port */
    char **vals;
    size_t nkeys;
    char **hosts; /* host, split at commas (PGHOST when the conninfo has none) */
    size_t nhosts;
    char **ports; /* port, split at commas: none, one for all hosts, or one per host */
    size_t nports;
    bool *lookup;          /* per host: a name to look up */
    char ***addrs;         /* per host: what the lookup found */
    size_t *naddrs;        /* per host */
    int *status;           /* per host: the lookup's status (a libuv error code), 0 when found */
    bool verbatim;         /* nothing to look up: connect with the conninfo as it is */
    const char **out_keys; /* what pg_target_params built */
    const char **out_vals;
    char *out_host;
    char *out_hostaddr;
    char *out_port;
};

/* What libpq takes from the environment where the conninfo is silent (NULL when unset). */
struct pg_env {
    const char *host;     /* PGHOST */
    const char *hostaddr; /* PGHOSTADDR */
    const char *port;     /* PGPORT */
    const char *service;  /* PGSERVICE */
};

/* Parses conninfo. The conninfo goes to libpq untouched (verbatim) wherever a rewrite could
 * change its meaning: a hostaddr given, a service file in use, an empty value (which libpq keeps
 * in a string but treats as unset in keyword arrays), a port list that pairs with no host list.
 * Returns false with the reason in why. */
bool pg_target_parse(struct pg_target *t, const char *conninfo, const struct pg_env *env, char *why,
                     size_t whylen);
/* The index of the next host to look up at or after from, or nhosts when none is left. */
size_t pg_target_next_lookup(const struct pg_target *t, size_t from);
/* Records what the lookup of host i found. */
void pg_target_set_addrs(struct pg_target *t, size_t i, int status, const char *const *addrs,
                         size_t naddrs);
/* The keywords and values (NULL-terminated) for PQconnectStartParams: each looked-up host once
 * per address found, with that address as its hostaddr. The arrays and their strings live in t.
 * Returns false with the reason in why when no host is left to try. */
bool pg_target_params(struct pg_target *t, const char ***keys, const char ***vals, char *why,
                      size_t whylen);
void pg_target_free(struct pg_target *t);

#endif
