"""usaged under systemd: the units pass `systemd-analyze verify`, and the daemon speaks systemd's
protocols: it serves the sockets passed by socket activation (LISTEN_FDS/LISTEN_PID, fds from 3)
and reports on NOTIFY_SOCKET (READY=1, STATUS=, STOPPING=1, WATCHDOG=1).

No systemd runs here: the tests pass sockets and read notifications exactly as systemd does, with
a datagram socket of their own as NOTIFY_SOCKET and a tiny exec wrapper that puts the listening
socket at fd 3 and sets LISTEN_PID to the daemon's own pid (which exec keeps)."""

import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from conftest import SANITIZER_MARKERS, SOURCE_ROOT, base_config
from usaged_client import USAGED_BIN, Client, Closed, RpcError, write_config
import servers

USAGED = os.path.abspath(USAGED_BIN)
# Built without libsystemd, the daemon takes no passed sockets and sends no notifications.
HAVE_SYSTEMD = os.environ.get("USAGED_HAVE_SYSTEMD", "1") == "1"
UNITS = os.path.join(SOURCE_ROOT, "systemd")
MAN = os.path.join(SOURCE_ROOT, "man")

# Runs in the child between fork and exec: the passed socket to fd 3, LISTEN_* for this pid.
EXEC_WRAPPER = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.set_inheritable(3, True)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = sys.argv[2] if sys.argv[2] != "self" else str(os.getpid())
os.execv(sys.argv[3], sys.argv[3:])
"""


# ---------------------------------------------------------------------------------------------
# The units

def verify(workdir, *units):
    """systemd-analyze verify on copies of the units whose ExecStart names the built binary (verify
    requires the binary to exist), with MANPATH holding the man pages that Documentation= names
    (verify runs `man` on each)."""
    d = os.path.join(workdir, "units")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for name in ("usaged.service", "usaged.socket"):
        with open(os.path.join(UNITS, name)) as f:
            text = f.read().replace("/usr/sbin/usaged", USAGED)
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    man = os.path.join(workdir, "man")
    for page, section in (("usaged.8", "man8"), ("usagectl.1", "man1")):
        os.makedirs(os.path.join(man, section), exist_ok=True)
        shutil.copy(os.path.join(MAN, page), os.path.join(man, section, page))
    env = dict(os.environ, MANPATH=man, SYSTEMD_LOG_LEVEL="notice")
    return subprocess.run(["systemd-analyze", "verify", *[os.path.join(d, u) for u in units]],
                          capture_output=True, text=True, env=env, timeout=60)


def complaints(result, unit):
    """Lines of verify's output about the unit. verify exits 0 on some of them (an unknown key is
    'ignoring'), so the tests require none at all."""
    out = result.stdout + result.stderr
    return [line for line in out.splitlines() if unit in line]


def test_the_service_unit_passes_systemd_analyze_verify(workdir):
    r = verify(workdir, "usaged.service")
    assert r.returncode == 0, r.stdout + r.stderr
    assert complaints(r, "usaged.service") == []


def test_the_socket_unit_passes_systemd_analyze_verify(workdir):
    r = verify(workdir, "usaged.socket")
    assert r.returncode == 0, r.stdout + r.stderr
    assert complaints(r, "usaged.socket") == []


def test_the_sysusers_file_creates_the_user_the_units_name(workdir):
    root = os.path.join(workdir, "sysroot")
    os.makedirs(os.path.join(root, "etc"), exist_ok=True)
    r = subprocess.run(["systemd-sysusers", f"--root={root}",
                        os.path.join(UNITS, "usaged.sysusers")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(root, "etc/passwd")) as f:
        users = {line.split(":")[0]: line.split(":") for line in f}
    with open(os.path.join(root, "etc/group")) as f:
        groups = {line.split(":")[0] for line in f}
    assert "usaged" in users and users["usaged"][5] == "/var/lib/usaged"
    assert "usaged" in groups
    with open(os.path.join(UNITS, "usaged.service")) as f:
        service = f.read()
    with open(os.path.join(UNITS, "usaged.socket")) as f:
        sock = f.read()
    assert "\nUser=usaged\n" in service and "\nGroup=usaged\n" in service
    assert "\nSocketGroup=usaged\n" in sock


def test_the_man_pages_render_without_warnings():
    for page in ("usaged.8", "usagectl.1"):
        r = subprocess.run(["groff", "-man", "-ww", "-z", os.path.join(MAN, page)],
                           capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, LC_ALL="C.UTF-8"))
        assert r.returncode == 0 and r.stderr == "", f"{page}: {r.stderr}"


# ---------------------------------------------------------------------------------------------
# meson install

BUILD_DIR = os.environ.get("USAGED_BUILD_DIR", os.path.dirname(USAGED))


def meson_install(dest):
    r = subprocess.run(["meson", "install", "-C", BUILD_DIR, "--destdir", dest, "--no-rebuild",
                        "--quiet"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    found = {}
    for root, _, files in os.walk(dest):
        for name in files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, dest)] = path
    return found


def installed(found, suffix):
    paths = [p for rel, p in found.items() if rel.endswith(suffix)]
    assert len(paths) == 1, f"{suffix}: {sorted(found)}"
    return paths[0]


def exec_start(found):
    """The daemon and config paths that the installed service names."""
    with open(installed(found, "lib/systemd/system/usaged.service")) as f:
        line = next(line for line in f if line.startswith("ExecStart="))
    binary, flag, config = line.split("=", 1)[1].split()
    assert flag == "-c", line
    return binary, config


def test_meson_install_puts_units_config_migrations_and_man_pages_in_place(workdir):
    dest = os.path.join(workdir, "stage1")
    found = meson_install(dest)
    installed(found, "lib/systemd/system/usaged.socket")
    installed(found, "lib/sysusers.d/usaged.conf")
    installed(found, "share/man/man8/usaged.8")
    installed(found, "share/man/man1/usagectl.1")
    installed(found, "bin/usagectl")
    installed(found, "include/usaged/client.h")
    installed(found, "pkgconfig/usaged-client.pc")
    installed(found, "share/usaged/usaged.yaml")
    sql_installed = sorted(os.path.basename(p) for rel, p in found.items()
                           if "/share/usaged/sql/" in "/" + rel)
    assert sql_installed == sorted(os.listdir(os.path.join(SOURCE_ROOT, "sql")))
    # The unit names the installed daemon and the installed config, wherever the prefix is.
    binary, config = exec_start(found)
    assert os.access(dest + binary, os.X_OK), binary
    with open(dest + config) as f, open(os.path.join(SOURCE_ROOT, "conf/usaged.yaml")) as ref:
        assert f.read() == ref.read()


def test_reinstalling_keeps_an_edited_config(workdir):
    dest = os.path.join(workdir, "stage2")
    config = dest + exec_start(meson_install(dest))[1]
    with open(config, "a") as f:
        f.write("# edited by the operator\n")
    meson_install(dest)
    with open(config) as f:
        assert f.read().endswith("# edited by the operator\n")


# ---------------------------------------------------------------------------------------------
# A daemon started the way systemd starts it

class Notifications:
    """The NOTIFY_SOCKET end: a datagram socket; each datagram is KEY=VALUE lines."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.messages = []  # dicts, in arrival order

    def _drain(self):
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(fields)

    def with_key(self, key, value=None):
        self._drain()
        return [m for m in self.messages if key in m and (value is None or m[key] == value)]

    def wait_for(self, key, value=None, count=1, timeout=20):
        servers.wait_for(lambda: len(self.with_key(key, value)) >= count, timeout,
                         f"{count} notification(s) with {key}" + (f"={value}" if value else ""))
        return self.with_key(key, value)

    def close(self):
        self.sock.close()


class ActivatedDaemon:
    def __init__(self, workdir, name, config_text):
        self.config = os.path.join(workdir, f"{name}.yaml")
        # The config's own socket: a socket-activated daemon must not create it.
        self.own_socket = os.path.join(workdir, f"{name}-own.sock")
        write_config(self.config, config_text.replace("@SOCKET@", self.own_socket))
        self.log = os.path.join(workdir, f"{name}.log")
        self.notify = Notifications(os.path.join(workdir, f"{name}-notify.sock"))
        self.proc = None

    def start(self, listener, env=None, listen_pid="self"):
        """Starts usaged with `listener` (a listening socket object) at fd 3."""
        full_env = dict(os.environ, NOTIFY_SOCKET=self.notify.path)
        full_env.update(env or {})
        self.logf = open(self.log, "ab")
        fd = listener.fileno()
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", "-c", EXEC_WRAPPER, str(fd), listen_pid, USAGED,
             "-c", self.config],
            pass_fds=[fd], env=full_env, stdout=self.logf, stderr=self.logf)
        return self

    def start_with(self, argv, env=None):
        """Starts argv (a launcher that execs usaged) in place of the wrapper."""
        full_env = dict(os.environ, NOTIFY_SOCKET=self.notify.path)
        full_env.update(env or {})
        self.logf = open(self.log, "ab")
        self.proc = subprocess.Popen(argv, env=full_env, stdout=self.logf, stderr=self.logf)
        return self

    def log_text(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("usaged did not stop:\n" + self.log_text())
        self.logf.close()
        self.proc = None
        return rc


_activated_count = [0]


@pytest.fixture
def activated(workdir):
    """Makes socket-activated daemons; stops each at the end and checks it exited 0, cleanly."""
    if not HAVE_SYSTEMD:
        pytest.skip("usaged was built without libsystemd")
    made = []

    def make(config_text):
        _activated_count[0] += 1
        d = ActivatedDaemon(workdir, f"activated{_activated_count[0]}", config_text)
        made.append(d)
        return d

    yield make
    problems = []
    for d in made:
        running = d.proc is not None and d.proc.poll() is None
        rc = d.stop()
        if running and rc != 0:
            problems.append(f"{d.log}: exit code {rc} after SIGTERM")
        d.notify.close()
        text = d.log_text() if os.path.exists(d.log) else ""
        problems += [f"{d.log}: {m}" for m in SANITIZER_MARKERS if m in text]
    assert not problems, "\n".join(problems)


def unix_listener(path):
    if os.path.exists(path):
        os.unlink(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(16)
    return s


def ping(path=None, tcp=None):
    with Client(path, tcp=tcp, timeout=10) as c:
        return c.call("ping")


def stats_over(path):
    with Client(path, timeout=10) as c:
        return c.call("stats")


def no_redis(workdir):
    # These tests need no Redis; never the default address, where a real one may run.
    return f"redis:\n  address: \"unix:{os.path.join(workdir, 'no-redis-here.sock')}\"\n"


def pg_config(workdir, pg, db):
    return base_config(workdir, pg=pg, dbname=db) + no_redis(workdir)


def unreachable_pg_config(workdir):
    # A socket directory with no server: every connect attempt fails at once.
    return base_config(workdir) + no_redis(workdir) + (
        f"postgres:\n  conninfo: \"host={os.path.join(workdir, 'no-pg-here')} port=1 "
        f"dbname=x user=usaged\"\n")


def test_a_socket_activated_daemon_sends_ready_and_answers_on_the_passed_socket(
        activated, workdir, pg, db):
    d = activated(pg_config(workdir, pg, db))
    path = os.path.join(workdir, "passed1.sock")
    with unix_listener(path) as listener:
        d.start(listener)
    d.notify.wait_for("READY", "1")
    assert ping(path)["protocol"] == 1


def test_a_socket_activated_daemon_opens_no_socket_of_its_own(activated, workdir, pg, db):
    d = activated(pg_config(workdir, pg, db))
    path = os.path.join(workdir, "passed2.sock")
    with unix_listener(path) as listener:
        d.start(listener)
    d.notify.wait_for("READY", "1")
    assert not os.path.exists(d.own_socket)
    assert "passed by systemd" in d.log_text()


def test_the_passed_socket_file_is_left_in_place_at_exit(activated, workdir, pg, db):
    d = activated(pg_config(workdir, pg, db))
    path = os.path.join(workdir, "passed3.sock")
    with unix_listener(path) as listener:
        d.start(listener)
    d.notify.wait_for("READY", "1")
    assert d.stop() == 0
    assert os.path.exists(path)  # systemd's socket unit owns it, not the daemon


def test_a_passed_tcp_socket_is_served(activated, workdir, pg, db):
    d = activated(pg_config(workdir, pg, db))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        d.start(listener)
    d.notify.wait_for("READY", "1")
    assert ping(tcp=("127.0.0.1", port))["protocol"] == 1


def test_a_passed_non_loopback_tcp_socket_without_a_token_is_refused(activated, workdir):
    d = activated(unreachable_pg_config(workdir))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen(16)
        d.start(listener)
    assert d.proc.wait(timeout=30) == 1
    assert "auth.token_file is required" in d.log_text()
    assert d.notify.with_key("READY") == []


def test_listen_fds_meant_for_another_process_are_ignored(activated, workdir, pg, db):
    d = activated(pg_config(workdir, pg, db))
    path = os.path.join(workdir, "passed4.sock")
    with unix_listener(path) as listener:
        d.start(listener, listen_pid="1")
    d.notify.wait_for("READY", "1")
    assert ping(d.own_socket)["protocol"] == 1  # it opened the socket of its config


def test_ready_comes_once_the_ingest_connections_are_up(activated, workdir, pg, db):
    d = activated(pg_config(workdir, pg, db))
    path = os.path.join(workdir, "passed5.sock")
    with unix_listener(path) as listener:
        d.start(listener)
    d.notify.wait_for("READY", "1")
    tables = stats_over(path)["ingest"]["tables"]
    assert tables and all(t["postgres_connects"] >= 1 for t in tables.values()), tables


def test_ready_comes_in_degraded_mode_when_postgres_is_unreachable(activated, workdir):
    d = activated(unreachable_pg_config(workdir))
    path = os.path.join(workdir, "passed6.sock")
    with unix_listener(path) as listener:
        d.start(listener)
    d.notify.wait_for("READY", "1")
    tables = stats_over(path)["ingest"]["tables"]
    assert all(t["postgres"] == "down" and t["postgres_connects"] == 0
               for t in tables.values()), tables


def test_ready_comes_within_30_s_when_redis_takes_connections_and_never_answers(
        activated, workdir, pg, db):
    # The first connect attempt's deadline here is 4 x 20 s: READY=1 must not wait for it
    # (systemd's start timeout is 90 s by default).
    mute = os.path.join(workdir, "mute-redis.sock")
    cfg = base_config(workdir, pg=pg, dbname=db) + (
        f"redis:\n  address: \"unix:{mute}\"\n  timeout_ms: 20000\n")
    d = activated(cfg)
    path = os.path.join(workdir, "passed-mute.sock")
    with unix_listener(mute), unix_listener(path) as listener:
        d.start(listener)
        d.notify.wait_for("READY", "1", timeout=60)
        assert stats_over(path)["limits"]["redis"]["state"] != "up"
        assert "ready after 30 s without every first connect attempt ended" in d.log_text()


def test_status_lines_carry_live_figures(activated, workdir, pg, db):
    d = activated(pg_config(workdir, pg, db))
    path = os.path.join(workdir, "passed7.sock")
    with unix_listener(path) as listener:
        d.start(listener)
    status = d.notify.wait_for("READY", "1")[0]["STATUS"]
    assert "connections" in status and "rows queued" in status and "rows written" in status
    assert "postgres 4/4 up" in status  # two writer connections per table by default


def test_sigterm_sends_stopping_and_exits_zero(activated, workdir, pg, db):
    d = activated(pg_config(workdir, pg, db))
    path = os.path.join(workdir, "passed8.sock")
    with unix_listener(path) as listener:
        d.start(listener)
    d.notify.wait_for("READY", "1")
    d.proc.send_signal(signal.SIGTERM)
    stopping = d.notify.wait_for("STOPPING", "1")
    assert stopping[0]["STATUS"].startswith("draining")
    assert d.stop() == 0


def test_watchdog_pings_arrive_at_half_the_watchdog_interval(activated, workdir, pg, db):
    d = activated(pg_config(workdir, pg, db))
    path = os.path.join(workdir, "passed9.sock")
    with unix_listener(path) as listener:
        d.start(listener, env={"WATCHDOG_USEC": "2000000"})
    # One ping at start, then one a second: three within three seconds.
    d.notify.wait_for("WATCHDOG", "1", count=3, timeout=6)
    assert "pinging every 1000 ms" in d.log_text()


def test_systemd_socket_activate_launches_a_daemon_that_answers(activated, workdir, pg, db):
    """systemd's own tool for running a socket-activated service by hand: it listens, and on the
    first connect execs usaged with the socket passed."""
    d = activated(pg_config(workdir, pg, db))
    path = os.path.join(workdir, "passed10.sock")
    d.start_with(["systemd-socket-activate", "-l", path, "-E", f"NOTIFY_SOCKET={d.notify.path}",
                  USAGED, "-c", d.config])
    servers.wait_for(lambda: os.path.exists(path), 20, "systemd-socket-activate to listen")
    assert ping(path)["protocol"] == 1  # this connect is what launches usaged
    d.notify.wait_for("READY", "1")
