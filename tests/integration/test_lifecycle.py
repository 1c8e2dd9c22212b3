"""The daemon's life: config checking, start, SIGHUP reload, SIGTERM drain, the socket file."""

import os
import signal
import socket
import stat
import subprocess

import msgpack
import pytest

from conftest import base_config
from usaged_client import USAGED_BIN, Client, Closed, write_config
import servers


def run_usaged(*args):
    return subprocess.run([USAGED_BIN, *args], capture_output=True, text=True, timeout=30)


def test_check_config_accepts_the_reference_config():
    ref = os.path.join(os.path.dirname(__file__), "../../conf/usaged.yaml")
    r = run_usaged("--check-config", "-c", ref)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith(": ok")


def test_check_config_accepts_the_dev_config():
    dev = os.path.join(os.path.dirname(__file__), "../../conf/dev.yaml")
    r = run_usaged("--check-config", "-c", dev)
    assert r.returncode == 0, r.stderr


def test_check_config_names_file_line_and_column_of_an_error(workdir):
    path = os.path.join(workdir, "bad.yaml")
    with open(path, "w") as f:
        f.write("listen:\n  unix: /tmp/x.sock\ningest:\n  batch_rows: lots\n")
    r = run_usaged("--check-config", "-c", path)
    assert r.returncode == 78
    assert f"{path}:4:15: ingest.batch_rows must be a non-negative integer" in r.stderr


def test_a_missing_config_file_is_reported(workdir):
    r = run_usaged("--check-config", "-c", os.path.join(workdir, "nope.yaml"))
    assert r.returncode == 78
    assert "No such file" in r.stderr


def test_sigterm_exits_zero_and_removes_the_socket(daemon_factory, workdir):
    d = daemon_factory(base_config(workdir))
    assert os.path.exists(d.socket)
    assert d.stop() == 0
    assert not os.path.exists(d.socket)


def test_sigterm_answers_requests_already_received(daemon_factory, workdir):
    d = daemon_factory(base_config(workdir))
    with d.client() as c:
        c.send_raw(b"".join(msgpack.packb([0, i, "ping", []]) for i in range(2000)))
        # The first answer: the daemon is reading them (a SIGTERM taken before it had read
        # any would leave none to answer, which proves nothing).
        first = c.read_message()
        assert first[:2] == [1, 0], first
        d.signal(signal.SIGTERM)
        answered = {0}
        try:
            while True:
                msg = c.read_message()
                if msg[0] == 1:
                    answered.add(msg[1])
        except (Closed, ConnectionResetError):
            pass
    # Every request the daemon read before it stopped was answered; nothing was cut off midway.
    assert answered == set(range(len(answered)))
    assert d.wait_exit() == 0


def test_a_client_that_never_reads_its_answers_does_not_hold_up_the_stop(daemon_factory, workdir):
    """Its unread answers get ingest.drain_timeout_s, then the connection is closed and the
    daemon exits 0, well inside systemd's TimeoutStopSec."""
    d = daemon_factory(base_config(workdir, extra="ingest:\n  drain_timeout_s: 1\n").replace(
        "  unix_mode: 0600\n", "  unix_mode: 0600\n  max_output_bytes: 65536\n"))
    slow = d.client()
    assert slow.stop_reading() > 0
    # Its answers are stuck: the daemon has paused it for unread output.
    servers.wait_for(lambda: d.client().call("stats")["connections"]["paused_output"] >= 1, 30,
                     "the reader of nothing to be paused")
    d.signal(signal.SIGTERM)
    assert d.wait_exit(timeout=30) == 0
    assert "1 connection still open 1000 ms into the stop" in d.log_text()
    slow.close()


def test_signals_repeated_until_the_exit_still_give_exit_zero(daemon_factory, workdir):
    """systemd and an operator may both send SIGTERM, and a reload may come during a stop: a
    signal arriving at any moment of the exit, including after the daemon has closed its signal
    handles, must not turn the clean exit into death by that signal."""
    d = daemon_factory(base_config(workdir))
    pid = d.proc.pid
    # A shell sends HUP, INT and TERM in a tight loop from before the exit begins until the
    # process is gone (reaped below), so signals keep arriving through every moment of the exit.
    # It counts each signal delivered: a fast exit may be reaped before the first TERM goes out.
    storm = subprocess.Popen(["bash", "-c", f"n=0; while kill -HUP {pid} && n=$((n+1)) && "
                              f"kill -INT {pid} && n=$((n+1)) && kill -TERM {pid}; do "
                              f"n=$((n+1)); done 2>/dev/null; echo $n"],
                             stdout=subprocess.PIPE, text=True)
    rc = d.wait_exit()
    delivered = int(storm.communicate(timeout=30)[0])
    assert rc == 0
    # The storm is what stopped the daemon: a reload, then at least one exit signal.
    assert delivered >= 2


def test_the_socket_file_gets_the_configured_mode(daemon_factory, workdir):
    d = daemon_factory(base_config(workdir))
    assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o600


def test_a_stale_socket_file_is_replaced(daemon_factory, workdir):
    d = daemon_factory(base_config(workdir), start=False)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(d.socket)
    s.close()  # bound, never listened: what a crashed daemon leaves behind
    d.start()
    with d.client() as c:
        assert c.call("ping")["protocol"] == 1


def test_a_live_socket_is_never_taken_over(daemon_factory, workdir):
    first = daemon_factory(base_config(workdir), name="first")
    second = daemon_factory(base_config(workdir).replace("@SOCKET@", first.socket),
                            start=False, name="second")
    second.start(wait=False)
    assert second.proc.wait(timeout=30) != 0
    assert "another daemon is listening" in second.log_text()
    with first.client() as c:
        assert c.call("ping")["protocol"] == 1


def test_a_missing_token_file_is_a_config_error_exit_78_without_touching_postgres(
        daemon_factory, workdir):
    # 78 (EX_CONFIG) is what systemd does not restart: the file must be fixed first. The
    # database named here does not exist: the daemon refuses before it would look.
    missing = os.path.join(workdir, "no-such-token")
    cfg = base_config(workdir) + f"auth:\n  token_file: \"{missing}\"\n"
    d = daemon_factory(cfg, start=False)
    d.start(wait=False)
    assert d.proc.wait(timeout=30) == 78
    log = d.log_text()
    assert f"cannot start: auth.token_file {missing}" in log
    assert "PostgreSQL is not reachable" not in log
    d.proc = None


def test_a_socket_path_in_a_missing_directory_says_so(daemon_factory, workdir):
    d = daemon_factory(base_config(workdir), start=False)
    missing = os.path.join(workdir, "no-such-dir")
    d.socket = os.path.join(missing, "usaged.sock")
    write_config(d.config, base_config(workdir).replace("@SOCKET@", d.socket))
    d.start(wait=False)
    assert d.proc.wait(timeout=30) != 0
    assert f"listen.unix {d.socket}: its directory {missing} does not exist" in d.log_text()
    d.proc = None


def test_a_regular_file_at_the_socket_path_is_left_alone(daemon_factory, workdir):
    d = daemon_factory(base_config(workdir), start=False)
    with open(d.socket, "w") as f:
        f.write("precious")
    d.start(wait=False)
    assert d.proc.wait(timeout=30) != 0
    assert open(d.socket).read() == "precious"
    os.unlink(d.socket)
    d.proc = None


def test_sighup_refuses_an_empty_file_and_keeps_the_live_settings(daemon_factory, workdir):
    text = base_config(workdir).replace("  unix_mode: 0600\n",
                                        "  unix_mode: 0600\n  max_message_bytes: 2048\n")
    d = daemon_factory(text)
    for empty in ("", "# nothing here yet\n", "~\n"):
        with open(d.config, "w") as f:
            f.write(empty)
        before = d.log_text().count("reload refused")
        d.signal(signal.SIGHUP)
        servers.wait_for(lambda: d.log_text().count("reload refused") > before, 10,
                         "the reload to be refused")
        assert "holds no settings" in d.log_text()
        with d.client() as c:  # max_message_bytes is still 2048, not the default
            c.send_raw(msgpack.packb([0, 1, "ping", ["x" * 3000]]))
            assert c.wait_closed()[-1][2][0]["code"] == "too_large"


def test_sighup_applies_a_new_config(daemon_factory, workdir):
    d = daemon_factory(base_config(workdir))
    with d.client() as c:
        c.call("ping", )
    big = msgpack.packb([0, 1, "ping", ["x" * 3000]])
    with open(d.config, "a") as f:
        f.write("listen_extra_placeholder: 1\n")
    # First a bad file: refused, old config kept.
    d.signal(signal.SIGHUP)
    servers.wait_for(lambda: "reload refused" in d.log_text(), 10, "the reload to be refused")
    assert "unknown key listen_extra_placeholder" in d.log_text()
    with d.client() as c:
        assert c.call("ping")["protocol"] == 1
    # Then a good one that lowers max_message_bytes.
    text = open(d.config).read().replace("listen_extra_placeholder: 1\n", "")
    text = text.replace("  unix_mode: 0600\n", "  unix_mode: 0600\n  max_message_bytes: 2048\n")
    with open(d.config, "w") as f:
        f.write(text)
    d.signal(signal.SIGHUP)
    servers.wait_for(lambda: "reloaded" in d.log_text(), 10, "the reload")
    with d.client() as c:
        c.send_raw(big)
        got = c.wait_closed()
        assert got[-1][2][0]["code"] == "too_large"
