/* xalloc: allocation that cannot return NULL. usaged bounds its memory by configuration (queue
 * rows, message size, output per connection, connections); if the heap is exhausted anyway, no
 * recovery would be honest, so the process logs and exits and systemd restarts it. Accepted
 * events survive that only with durable acks, as PROTOCOL.md promises. */
#ifndef USAGED_XALLOC_H
#define USAGED_XALLOC_H

#include <stddef.h>

void *xmalloc(size_t size);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *ptr, size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t len);

#endif
