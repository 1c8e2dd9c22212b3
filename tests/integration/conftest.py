"""Shared pytest fixtures: throwaway servers, a migrated database, and the daemon under test.

Every test module gets its own PostgreSQL and Redis in a temporary directory (module scope), so
modules can run in parallel and a test that kills a server hurts no other module.
"""

import glob
import itertools
import os
import shutil
import subprocess
import tempfile

import pytest

import servers

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_ROOT = os.path.dirname(os.path.dirname(HERE))
SQL_DIR = os.environ.get("USAGED_SQL_DIR", os.path.join(SOURCE_ROOT, "sql"))


def migration_files():
    return sorted(glob.glob(os.path.join(SQL_DIR, "[0-9][0-9][0-9][0-9]_*.sql")))


def apply_migrations_with_psql(pg, dbname):
    """Applies every migration in order, each in one transaction, the way `usaged --migrate`
    does, as the role that runs migrations (pg.migrator). Used by the schema tests, which test
    the SQL itself, independently of the daemon."""
    for path in migration_files():
        subprocess.run([servers.PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1",
                        "--single-transaction", "-d", pg.dsn(dbname, pg.migrator), "-f", path],
                       check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def workdir():
    d = tempfile.mkdtemp(prefix="usaged-test-")
    yield d
    # Servers are stopped by their own fixtures first (they are torn down before this one).
    if not os.environ.get("USAGED_KEEP_TEST_DIRS"):
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def pg(workdir):
    server = servers.Postgres(os.path.join(workdir, "pgroot")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_server(workdir):
    server = servers.Redis(os.path.join(workdir, "redisroot")).start()
    yield server
    server.stop()


_db_counter = [0]
_daemon_counter = itertools.count(1)


@pytest.fixture
def fresh_db(pg):
    """A new, empty database on the module's server; yields its name."""
    _db_counter[0] += 1
    name = f"t{os.getpid()}_{_db_counter[0]}"
    pg.createdb(name)
    yield name


_spool_counter = [0]


def base_config(workdir, extra="", pg=None, dbname=None, redis=None):
    """A config for a daemon under test: its socket and spool in workdir, the given servers."""
    lines = [f"listen:\n  unix: \"@SOCKET@\"\n  unix_mode: 0600\n"]
    if pg is not None:
        lines.append(f"postgres:\n  conninfo: \"{pg.dsn(dbname or 'postgres', user='usaged')}\"\n"
                     f"  admin_conninfo: \"{pg.dsn(dbname or 'postgres', user=pg.migrator)}\"\n")
    if redis is not None:
        lines.append(f"redis:\n  address: \"{redis.address()}\"\n")
    _spool_counter[0] += 1
    spool = os.path.join(workdir, f"spool{_spool_counter[0]}")
    lines.append(f"spool:\n  dir: \"{spool}\"\n")
    return "".join(lines) + extra


@pytest.fixture
def daemon_factory(workdir):
    """Starts daemons and stops every one of them at the end of the test."""
    from usaged_client import Daemon
    started = []

    def make(config_text, start=True, name=None, **kw):
        # Names are unique in the module's directory, so that each daemon has its own log
        # (a sanitizer report in one test's log must not fail the tests after it).
        n = next(_daemon_counter)
        d = Daemon(workdir, config_text, name=f"{name}{n}" if name else f"usaged{n}", **kw)
        started.append(d)
        if start:
            d.start()
        return d

    yield make
    problems = []
    for d in started:
        if d.proc is not None:
            still_running = d.proc.poll() is None
            rc = d.stop()
            if still_running and rc != 0:
                problems.append(f"{d.log}: exit code {rc} after SIGTERM")
        text = d.log_text() if os.path.exists(d.log) else ""
        for marker in SANITIZER_MARKERS:
            if marker in text:
                problems.append(f"{d.log}: {marker}")
    assert not problems, "daemon problems:\n" + "\n".join(problems)


# Lines that sanitizers and valgrind print when they find a bug in the daemon.
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "Invalid read", "Invalid write", "definitely lost", "uninitialised")


@pytest.fixture(scope="module")
def migrated_template(pg, workdir):
    """A database migrated by `usaged --migrate`, to copy test databases from."""
    from usaged_client import USAGED_BIN
    name = "usaged_template"
    pg.createdb(name)
    cfg = os.path.join(workdir, "migrate.yaml")
    with open(cfg, "w") as f:
        f.write(base_config(workdir, pg=pg, dbname=name).replace("@SOCKET@", "/tmp/unused"))
    r = subprocess.run([USAGED_BIN, "--migrate", "-c", cfg], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return name


@pytest.fixture
def db(pg, migrated_template):
    """A fresh database holding the whole schema; yields its name."""
    _db_counter[0] += 1
    name = f"m{os.getpid()}_{_db_counter[0]}"
    pg.createdb(name, template=migrated_template)
    yield name


def sql(pg, dbname, query, args=None):
    """Runs one statement as the superuser; returns all rows (or None)."""
    import psycopg2
    conn = psycopg2.connect(pg.dsn(dbname))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(query, args)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def preload_env(lib, **extra):
    """The environment of a daemon with `lib` (a shim of tests/integration) preloaded: under ASan
    the runtime must then be told that it does not come first."""
    return {"LD_PRELOAD": lib, **extra,
            "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"}


def write_token(workdir, token, name="token"):
    """Writes auth.token_file's file (mode 0600) in workdir; returns its path."""
    path = os.path.join(workdir, name)
    with open(path, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return path


def make_users(pg, dbname, n):
    """Creates n users in auth.users; returns their ids (str)."""
    import uuid
    ids = [str(uuid.uuid4()) for _ in range(n)]
    sql(pg, dbname, "INSERT INTO auth.users (id, email) SELECT u::uuid, u || '@example.test' "
        "FROM unnest(%s::text[]) AS u", (ids,))
    return ids
