/* listener: the listening sockets. A Unix socket (its file created with the configured mode; a
 * stale file left by a dead daemon is replaced, a live one never) and optionally TCP, or the
 * sockets systemd passes (LISTEN_FDS) when started by socket activation. Accepted connections go
 * to the conn set. */
#ifndef USAGED_LISTENER_H
#define USAGED_LISTENER_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "config.h"
#include "conn.h"

struct listener_socket {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_pipe_t pipe;
        uv_tcp_t tcp;
    } h;
    bool tcp;
    bool open;
    struct conn_set *conns;
};

struct listener {
    struct listener_socket sockets[8];
    size_t count;
    char *unix_path; /* the socket file this daemon created, removed at close */
};

/* Opens the listeners of the config (or takes systemd's). Returns 0, or a negative errno with
 * err saying what failed. */
int listener_open(struct listener *l, uv_loop_t *loop, const struct config *config,
                  struct conn_set *conns, char *err, size_t errlen);
/* Stops accepting: closes every listening socket and removes the socket file. */
void listener_close(struct listener *l);

#endif
