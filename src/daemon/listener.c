/* listener: see listener.h. */
#include "listener.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#ifdef USAGED_HAVE_SYSTEMD
#include <arpa/inet.h>
#include <netinet/in.h>
#include <systemd/sd-daemon.h>
#endif

#include "log.h"
#include "xalloc.h"

#define BACKLOG 1024

static void on_connection(uv_stream_t *server, int status)
{
    struct listener_socket *s = server->data;
    if (status < 0) {
        log_warn("accept: %s", uv_strerror(status));
        return;
    }
    conn_accept(s->conns, server, s->tcp);
}

/* Decides what to do with an existing file at the socket path: a socket nobody listens on is
 * stale and removed; a live socket or any other file is left alone and refused. */
static int clear_stale_socket(const char *path, char *err, size_t errlen)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen, "%s exists and is not a socket; refusing to replace it", path);
        return -EEXIST;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strncpy(sa.sun_path, path, sizeof(sa.sun_path) - 1);
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    int saved = errno;
    close(fd);
    if (rc == 0) {
        snprintf(err, errlen, "%s: another daemon is listening on it", path);
        return -EADDRINUSE;
    }
    if (saved != ECONNREFUSED) {
        snprintf(err, errlen, "%s: cannot tell whether it is in use: %s", path, strerror(saved));
        return -saved;
    }
    log_info("removing stale socket %s", path);
    if (unlink(path) < 0 && errno != ENOENT)
        return -errno;
    return 0;
}

static struct listener_socket *next_socket(struct listener *l, uv_loop_t *loop, bool tcp,
                                           struct conn_set *conns)
{
    struct listener_socket *s = &l->sockets[l->count++];
    memset(s, 0, sizeof(*s));
    s->tcp = tcp;
    s->conns = conns;
    if (tcp)
        uv_tcp_init(loop, &s->h.tcp);
    else
        uv_pipe_init(loop, &s->h.pipe, 0);
    s->h.handle.data = s;
    s->open = true;
    return s;
}

static int open_unix(struct listener *l, uv_loop_t *loop, const char *path, unsigned mode,
                     struct conn_set *conns, char *err, size_t errlen)
{
    if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        snprintf(err, errlen, "listen.unix: %s is too long for a socket path", path);
        return -ENAMETOOLONG;
    }
    int rc = clear_stale_socket(path, err, errlen);
    if (rc < 0) {
        if (!*err)
            snprintf(err, errlen, "%s: %s", path, strerror(-rc));
        return rc;
    }
    struct listener_socket *s = next_socket(l, loop, false, conns);
    /* Create the file with the final mode from the start: a umask, not a chmod after bind,
     * so that there is no moment when the socket is more open than configured. */
    mode_t old = umask(0777 & ~mode);
    rc = uv_pipe_bind(&s->h.pipe, path);
    umask(old);
    if (rc == 0 && chmod(path, mode) < 0)
        rc = -errno;
    if (rc == 0)
        rc = uv_listen(&s->h.stream, BACKLOG, on_connection);
    if (rc < 0) {
        /* libuv reports a bind into a missing directory as EACCES: say which it is. */
        char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
        snprintf(dir, sizeof(dir), "%s", path);
        char *slash = strrchr(dir, '/');
        struct stat st;
        if (slash && slash != dir)
            *slash = '\0';
        else
            snprintf(dir, sizeof(dir), "%s", slash ? "/" : ".");
        if (rc == UV_EACCES && stat(dir, &st) < 0 && errno == ENOENT) {
            snprintf(err, errlen, "listen.unix %s: its directory %s does not exist", path, dir);
            return -ENOENT;
        }
        snprintf(err, errlen, "listen.unix %s: %s", path, uv_strerror(rc));
        return rc;
    }
    l->unix_path = xstrdup(path);
    log_info("listening on %s (mode %04o)", path, mode);
    return 0;
}

static int open_tcp(struct listener *l, uv_loop_t *loop, const char *spec, struct conn_set *conns,
                    char *err, size_t errlen)
{
    char host[256];
    uint16_t port;
    if (!config_split_host_port(spec, host, sizeof(host), &port)) {
        snprintf(err, errlen, "listen.tcp: bad address %s", spec);
        return -EINVAL;
    }
    if (strcmp(host, "localhost") == 0)
        strcpy(host, "127.0.0.1");
    struct sockaddr_storage ss;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0) {
        snprintf(err, errlen, "listen.tcp: %s is not a numeric IP address", host);
        return -EINVAL;
    }
    struct listener_socket *s = next_socket(l, loop, true, conns);
    int rc = uv_tcp_bind(&s->h.tcp, (struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen(&s->h.stream, BACKLOG, on_connection);
    if (rc < 0) {
        snprintf(err, errlen, "listen.tcp %s: %s", spec, uv_strerror(rc));
        return rc;
    }
    log_info("listening on tcp %s", spec);
    return 0;
}

#ifdef USAGED_HAVE_SYSTEMD
/* Whether a passed TCP socket is bound to a loopback address, where the config rule "a
 * non-loopback listener needs auth.token_file" does not apply. */
static bool is_loopback_socket(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return false;
    if (ss.ss_family == AF_INET)
        return (ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) == 127;
    if (ss.ss_family == AF_INET6) {
        const struct in6_addr *a = &((struct sockaddr_in6 *)&ss)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return false;
}

/* Takes the n listening sockets systemd passed (fds 3..3+n-1). The files behind passed Unix
 * sockets belong to systemd's socket unit: unix_path stays NULL so that close never unlinks
 * them. */
static int open_passed(struct listener *l, uv_loop_t *loop, int n, const struct config *config,
                       struct conn_set *conns, char *err, size_t errlen)
{
    if ((size_t)n > sizeof(l->sockets) / sizeof(l->sockets[0])) {
        snprintf(err, errlen, "systemd passed %d sockets; at most %zu are supported", n,
                 sizeof(l->sockets) / sizeof(l->sockets[0]));
        return -EINVAL;
    }
    for (int i = 0; i < n; i++) {
        int fd = SD_LISTEN_FDS_START + i;
        bool is_unix = sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) > 0;
        bool is_inet = !is_unix && sd_is_socket_inet(fd, AF_UNSPEC, SOCK_STREAM, 1, 0) > 0;
        if (!is_unix && !is_inet) {
            snprintf(err, errlen,
                     "fd %d passed by systemd is not a listening stream socket (Unix or TCP)", fd);
            return -EINVAL;
        }
        if (is_inet && !config->auth.token_file && !is_loopback_socket(fd)) {
            snprintf(err, errlen,
                     "fd %d passed by systemd is a non-loopback TCP socket: auth.token_file is "
                     "required",
                     fd);
            return -EINVAL;
        }
        struct listener_socket *s = next_socket(l, loop, is_inet, conns);
        int rc = is_inet ? uv_tcp_open(&s->h.tcp, fd) : uv_pipe_open(&s->h.pipe, fd);
        if (rc == 0)
            rc = uv_listen(&s->h.stream, BACKLOG, on_connection);
        if (rc < 0) {
            snprintf(err, errlen, "fd %d passed by systemd: %s", fd, uv_strerror(rc));
            return rc;
        }
    }
    log_info("listening on %d socket%s passed by systemd; listen.unix and listen.tcp are not "
             "opened",
             n, n == 1 ? "" : "s");
    /* Under socket activation the config's addresses do nothing; say so, rather than let an
     * operator believe a TCP listener is up. */
    if (config->listen.tcp)
        log_warn("listen.tcp %s is ignored under socket activation: add a ListenStream= line to "
                 "usaged.socket instead",
                 config->listen.tcp);
    return 0;
}
#endif

int listener_open(struct listener *l, uv_loop_t *loop, const struct config *config,
                  struct conn_set *conns, char *err, size_t errlen)
{
    memset(l, 0, sizeof(*l));
    err[0] = '\0';
    int rc = 0;
#ifdef USAGED_HAVE_SYSTEMD
    /* Socket activation: LISTEN_FDS/LISTEN_PID name sockets systemd opened for this process.
     * sd_listen_fds(1) also clears those variables, so that no child takes them for its own. */
    int passed = sd_listen_fds(1);
    if (passed < 0) {
        snprintf(err, errlen, "sockets passed by systemd: %s", strerror(-passed));
        return passed;
    }
    if (passed > 0) {
        rc = open_passed(l, loop, passed, config, conns, err, errlen);
        if (rc < 0)
            listener_close(l);
        return rc;
    }
#endif
    if (config->listen.unix_path)
        rc = open_unix(l, loop, config->listen.unix_path, config->listen.unix_mode, conns, err,
                       errlen);
    if (rc == 0 && config->listen.tcp)
        rc = open_tcp(l, loop, config->listen.tcp, conns, err, errlen);
    if (rc < 0)
        listener_close(l);
    return rc;
}

void listener_close(struct listener *l)
{
    for (size_t i = 0; i < l->count; i++) {
        if (l->sockets[i].open) {
            l->sockets[i].open = false;
            uv_close(&l->sockets[i].h.handle, NULL);
        }
    }
    if (l->unix_path) {
        unlink(l->unix_path);
        free(l->unix_path);
        l->unix_path = NULL;
    }
}
