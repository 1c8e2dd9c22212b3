/* slowsync: an LD_PRELOAD shim for the integration tests, a disk whose flushes take their time.
 *
 * fdatasync and fsync wait USAGED_SLOWSYNC_MS (default 200) before doing their work. The
 * daemon's spool writes must then hold back clients rather than pile up in memory. */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int (*sync_fn)(int);

static void wait_a_while(void)
{
    const char *env = getenv("USAGED_SLOWSYNC_MS");
    long ms = env ? atol(env) : 200;
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static int call_real(const char *name, int fd)
{
    sync_fn real;
    void *sym = dlsym(RTLD_NEXT, name);
    memcpy(&real, &sym, sizeof(real));
    return real(fd);
}

int fdatasync(int fd)
{
    wait_a_while();
    return call_real("fdatasync", fd);
}

int fsync(int fd)
{
    wait_a_while();
    return call_real("fsync", fd);
}
