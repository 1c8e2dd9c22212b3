/* migrate: the database migrations (sql/NNNN_name.sql), embedded in the binary at build time.
 * `usaged --migrate` applies the pending ones, each in its own transaction, and records them in
 * usaged_meta.schema_migrations (a schema the runner owns); running it again changes nothing. The
 * daemon checks at start that the database is not behind the binary. These run before the event
 * loop, so they may block. */
#ifndef USAGED_MIGRATE_H
#define USAGED_MIGRATE_H

#include <stdbool.h>
#include <stddef.h>

struct migration {
    int version;
    const char *name;
    const char *sql;
};

extern const struct migration migrations[];
extern const size_t migration_count;

/* Applies every pending migration; progress goes to stdout. Returns 0, or -1 with err filled. */
int migrate_apply(const char *conninfo, char *err, size_t errlen);

enum migrate_check { MIGRATE_CURRENT = 0, MIGRATE_BEHIND, MIGRATE_AHEAD, MIGRATE_UNREACHABLE };

/* Is the database at the binary's latest migration? Waits at most timeout_s to connect. On
 * MIGRATE_BEHIND, MIGRATE_AHEAD (a newer binary migrated it) or MIGRATE_UNREACHABLE, err says
 * what was found. */
enum migrate_check migrate_check(const char *conninfo, int timeout_s, char *err, size_t errlen);

#endif
