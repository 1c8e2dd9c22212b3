/* secret: a secret kept in a file of its own (auth.token_file, redis.password_file).
 *
 * The secret is the file's first line, without its line ending. Read at start, before the loop
 * runs. A file anyone may read is warned about; the secret itself is never logged. */
#ifndef USAGED_SECRET_H
#define USAGED_SECRET_H

#include <stddef.h>

/* Reads path's first line into a new string (*out, *len). key names the config key in the
 * error put in err ("KEY PATH: why"). Returns 0 or a negative errno. */
int secret_read(const char *key, const char *path, char **out, size_t *len, char *err,
                size_t errlen);

/* Wipes and frees a secret read by secret_read. */
void secret_free(char *secret);

#endif
