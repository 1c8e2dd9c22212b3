/* resolve: see resolve.h. */
#include "resolve.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <libpq-fe.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "xalloc.h"

#define MAX_ADDRS 16 /* per name: more would only lengthen a list libpq tries in order */

struct resolve {
    uv_getaddrinfo_t req;
    resolve_fn cb; /* NULL once abandoned */
    void *arg;
    bool ipv4_first;
};

/* The address as text, with its interface for a link-local IPv6 one (fe80::1%eth0): without the
 * scope the connect would fail. */
static bool address_text(const struct addrinfo *ai, char *out, size_t outlen)
{
    if (ai->ai_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ai->ai_addr;
        return inet_ntop(AF_INET, &in->sin_addr, out, (socklen_t)outlen) != NULL;
    }
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ai->ai_addr;
    if (!inet_ntop(AF_INET6, &in6->sin6_addr, out, (socklen_t)outlen))
        return false;
    char ifname[IF_NAMESIZE];
    if (in6->sin6_scope_id != 0 && if_indextoname(in6->sin6_scope_id, ifname)) {
        size_t n = strlen(out);
        if ((size_t)snprintf(out + n, outlen - n, "%%%s", ifname) >= outlen - n)
            return false;
    }
    return true;
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct resolve *r = req->data;
    char text[MAX_ADDRS][INET6_ADDRSTRLEN + IF_NAMESIZE + 1];
    const char *addrs[MAX_ADDRS];
    size_t n = 0;
    /* In getaddrinfo's order (RFC 6724, as libpq tries them), or IPv4 first (as hiredis does). */
    for (int pass = 0; status == 0 && pass < 2; pass++) {
        for (const struct addrinfo *ai = res; ai && n < MAX_ADDRS; ai = ai->ai_next) {
            bool take = ai->ai_family == AF_INET || ai->ai_family == AF_INET6;
            if (r->ipv4_first)
                take = ai->ai_family == (pass == 0 ? AF_INET : AF_INET6);
            else if (pass == 1)
                take = false;
            if (!take || !address_text(ai, text[n], sizeof(text[n])))
                continue;
            bool seen = false;
            for (size_t i = 0; i < n && !seen; i++)
                seen = strcmp(text[i], text[n]) == 0;
            if (!seen) {
                addrs[n] = text[n];
                n++;
            }
        }
    }
    if (res)
        uv_freeaddrinfo(res);
    if (r->cb) {
        if (status == 0 && n == 0)
            status = UV_EAI_NODATA;
        r->cb(status, addrs, status == 0 ? n : 0, r->arg);
    }
    free(r);
}

struct resolve *resolve_start(uv_loop_t *loop, const char *host, bool ipv4_first, resolve_fn cb,
                              void *arg, int *err)
{
    struct resolve *r = xcalloc(1, sizeof(*r));
    r->cb = cb;
    r->arg = arg;
    r->ipv4_first = ipv4_first;
    r->req.data = r;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int rc = uv_getaddrinfo(loop, &r->req, on_resolved, host, NULL, &hints);
    if (rc != 0) {
        free(r);
        *err = rc;
        return NULL;
    }
    return r;
}

void resolve_abandon(struct resolve *r)
{
    r->cb = NULL;
    uv_cancel((uv_req_t *)&r->req); /* a lookup already running finishes; on_resolved frees */
}

bool resolve_is_numeric(const char *host)
{
    /* AI_NUMERICHOST never asks DNS; it takes a scoped IPv6 literal (fe80::1%eth0) too. */
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_flags = AI_NUMERICHOST};
    struct addrinfo *res = NULL;
    if (getaddrinfo(host, NULL, &hints, &res) != 0)
        return false;
    freeaddrinfo(res);
    return true;
}

/* ---- a PostgreSQL conninfo's hosts ---- */

static char **split_list(const char *s, size_t *n)
{
    size_t count = 1;
    for (const char *p = s; *p; p++)
        count += *p == ',';
    char **items = xcalloc(count, sizeof(*items));
    const char *start = s;
    for (size_t i = 0; i < count; i++) {
        const char *end = strchr(start, ',');
        size_t len = end ? (size_t)(end - start) : strlen(start);
        items[i] = xstrndup(start, len);
        start += len + 1;
    }
    *n = count;
    return items;
}

static void free_list(char **items, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(items[i]);
    free(items);
}

/* A host entry libpq would look up: not empty, not a socket directory, not numeric. */
static bool is_name(const char *host)
{
    return host[0] != '\0' && host[0] != '/' && host[0] != '@' && !resolve_is_numeric(host);
}

bool pg_target_parse(struct pg_target *t, const char *conninfo, const struct pg_env *env, char *why,
                     size_t whylen)
{
    memset(t, 0, sizeof(*t));
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
    if (!opts) {
        snprintf(why, whylen, "%s", err ? err : "out of memory");
        size_t n = strlen(why);
        while (n > 0 && why[n - 1] == '\n')
            why[--n] = '\0';
        PQfreemem(err);
        return false;
    }
    const char *host = env->host, *hostaddr = env->hostaddr, *port = env->port;
    bool keep = env->service != NULL;
    size_t nset = 0;
    for (const PQconninfoOption *o = opts; o->keyword; o++)
        nset += o->val != NULL;
    t->keys = xcalloc(nset + 1, sizeof(*t->keys));
    t->vals = xcalloc(nset + 1, sizeof(*t->vals));
    for (const PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val)
            continue;
        keep |= o->val[0] == '\0' || strcmp(o->keyword, "service") == 0;
        if (strcmp(o->keyword, "host") == 0) {
            host = o->val;
        } else if (strcmp(o->keyword, "hostaddr") == 0) {
            hostaddr = o->val;
        } else if (strcmp(o->keyword, "port") == 0) {
            port = o->val;
        } else {
            t->keys[t->nkeys] = xstrdup(o->keyword);
            t->vals[t->nkeys] = xstrdup(o->val);
            t->nkeys++;
        }
    }
    t->hosts = split_list(host ? host : "", &t->nhosts);
    if (port)
        t->ports = split_list(port, &t->nports);
    t->lookup = xcalloc(t->nhosts, sizeof(*t->lookup));
    t->addrs = xcalloc(t->nhosts, sizeof(*t->addrs));
    t->naddrs = xcalloc(t->nhosts, sizeof(*t->naddrs));
    t->status = xcalloc(t->nhosts, sizeof(*t->status));
    /* With hostaddr given, libpq looks nothing up; nor does it when every host is a socket
     * directory or a number. */
    bool names = false;
    for (size_t i = 0; i < t->nhosts; i++) {
        t->lookup[i] = (!hostaddr || !*hostaddr) && is_name(t->hosts[i]);
        names |= t->lookup[i];
    }
    t->verbatim = keep || !names || (t->nports > 1 && t->nports != t->nhosts);
    PQconninfoFree(opts);
    return true;
}

size_t pg_target_next_lookup(const struct pg_target *t, size_t from)
{
    while (from < t->nhosts && (t->verbatim || !t->lookup[from]))
        from++;
    return from;
}

void pg_target_set_addrs(struct pg_target *t, size_t i, int status, const char *const *addrs,
                         size_t naddrs)
{
    t->status[i] = status;
    t->addrs[i] = xcalloc(naddrs ? naddrs : 1, sizeof(char *));
    for (size_t k = 0; k < naddrs; k++)
        t->addrs[i][k] = xstrdup(addrs[k]);
    t->naddrs[i] = naddrs;
}

static void join_add(char **list, size_t *len, const char *item, bool first)
{
    size_t add = strlen(item) + 1;
    *list = xrealloc(*list, *len + add + 1);
    if (!first)
        (*list)[(*len)++] = ',';
    memcpy(*list + *len, item, add);
    *len += add - 1;
}

bool pg_target_params(struct pg_target *t, const char ***keys, const char ***vals, char *why,
                      size_t whylen)
{
    size_t hlen = 0, alen = 0, plen = 0, entries = 0;
    bool per_host_port = t->nports > 1;
    free(t->out_host);
    free(t->out_hostaddr);
    free(t->out_port);
    t->out_host = t->out_hostaddr = t->out_port = NULL;
    why[0] = '\0';
    for (size_t i = 0; i < t->nhosts; i++) {
        size_t n = t->lookup[i] ? t->naddrs[i] : 1;
        if (t->lookup[i] && n == 0 && !why[0])
            snprintf(why, whylen, "cannot resolve %s: %s", t->hosts[i], uv_strerror(t->status[i]));
        for (size_t k = 0; k < n; k++, entries++) {
            join_add(&t->out_host, &hlen, t->hosts[i], entries == 0);
            join_add(&t->out_hostaddr, &alen, t->lookup[i] ? t->addrs[i][k] : "", entries == 0);
            if (per_host_port)
                join_add(&t->out_port, &plen, t->ports[i], entries == 0);
        }
    }
    if (entries == 0)
        return false;
    free(t->out_keys);
    free(t->out_vals);
    t->out_keys = xcalloc(t->nkeys + 4, sizeof(*t->out_keys));
    t->out_vals = xcalloc(t->nkeys + 4, sizeof(*t->out_vals));
    size_t n = 0;
    for (; n < t->nkeys; n++) {
        t->out_keys[n] = t->keys[n];
        t->out_vals[n] = t->vals[n];
    }
    t->out_keys[n] = "host";
    t->out_vals[n++] = t->out_host;
    t->out_keys[n] = "hostaddr";
    t->out_vals[n++] = t->out_hostaddr;
    if (per_host_port) {
        t->out_keys[n] = "port";
        t->out_vals[n++] = t->out_port;
    } else if (t->nports == 1) {
        t->out_keys[n] = "port";
        t->out_vals[n++] = t->ports[0];
    }
    *keys = t->out_keys;
    *vals = t->out_vals;
    return true;
}

void pg_target_free(struct pg_target *t)
{
    for (size_t i = 0; i < t->nkeys; i++) {
        free(t->keys[i]);
        free(t->vals[i]);
    }
    free(t->keys);
    free(t->vals);
    for (size_t i = 0; i < t->nhosts; i++) {
        for (size_t k = 0; t->addrs && t->addrs[i] && k < t->naddrs[i]; k++)
            free(t->addrs[i][k]);
        if (t->addrs)
            free(t->addrs[i]);
    }
    free(t->addrs);
    free(t->naddrs);
    free(t->status);
    free(t->lookup);
    free_list(t->hosts, t->nhosts);
    if (t->ports)
        free_list(t->ports, t->nports);
    free(t->out_keys);
    free(t->out_vals);
    free(t->out_host);
    free(t->out_hostaddr);
    free(t->out_port);
    memset(t, 0, sizeof(*t));
}
