/* secret: see secret.h. */
#include "secret.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"
#include "xalloc.h"

int secret_read(const char *key, const char *path, char **out, size_t *len, char *err,
                size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        int e = errno;
        snprintf(err, errlen, "%s %s: %s", key, path, strerror(e));
        return -e;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & 0004))
        log_warn("%s %s is readable by everyone", key, path);
    char line[1024];
    if (!fgets(line, sizeof(line), f))
        line[0] = '\0';
    fclose(f);
    size_t n = strcspn(line, "\r\n");
    if (n == 0) {
        snprintf(err, errlen, "%s %s: the first line (the secret) is empty", key, path);
        return -EINVAL;
    }
    *out = xstrndup(line, n);
    *len = n;
    explicit_bzero(line, sizeof(line));
    return 0;
}

void secret_free(char *secret)
{
    if (!secret)
        return;
    explicit_bzero(secret, strlen(secret));
    free(secret);
}
