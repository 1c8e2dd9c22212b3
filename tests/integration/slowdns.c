/* slowdns: an LD_PRELOAD shim for the integration tests, a resolver that takes its time.
 *
 * getaddrinfo of a name beginning "slow-" (not a numeric-only call) waits USAGED_SLOWDNS_MS
 * (default 1500) and then answers for the rest of the name ("slow-localhost" as "localhost");
 * other names go straight through. The daemon must look names up off its event loop, and a
 * lookup slower than its connect timeout must still lead to a connection. */
#include <dlfcn.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int (*getaddrinfo_fn)(const char *, const char *, const struct addrinfo *,
                              struct addrinfo **);

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    getaddrinfo_fn real;
    void *sym = dlsym(RTLD_NEXT, "getaddrinfo");
    memcpy(&real, &sym, sizeof(real));
    /* AI_NUMERICHOST asks no DNS server, so it costs nothing here either. */
    bool numeric = hints && (hints->ai_flags & AI_NUMERICHOST);
    if (node && strncmp(node, "slow-", 5) == 0 && !numeric) {
        const char *env = getenv("USAGED_SLOWDNS_MS");
        long ms = env ? atol(env) : 1500;
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0) {
        }
        node += 5;
    }
    return real(node, service, hints, res);
}
