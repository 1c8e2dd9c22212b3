"""A small MessagePack-RPC client for tests, and a handle on a running daemon.

Client speaks to the daemon's socket exactly as PROTOCOL.md says: requests carry a msgid, answers
may come back in any order, notifications get no answer. Daemon starts `usaged` on a generated
config, waits for its socket, and stops it by PID.
"""

import os
import signal
import socket
import subprocess
import time

import msgpack

import servers

USAGED_BIN = os.environ.get("USAGED_BIN", os.path.join(os.path.dirname(__file__),
                                                       "../../build/usaged"))


class Closed(Exception):
    pass


class Client:
    def __init__(self, path=None, tcp=None, timeout=10):
        if tcp:
            self.sock = socket.create_connection(tcp, timeout=timeout)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(path)
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False,
                                         timestamp=0, max_buffer_size=64 << 20)
        self.next_id = 1
        self.answers = {}       # msgid -> (error, result) received out of turn
        self.notifications = []  # [method, params] received

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- sending ---
    def send_raw(self, data):
        self.sock.sendall(data)

    def send_request(self, method, params, msgid=None):
        if msgid is None:
            msgid = self.next_id
            self.next_id += 1
        self.sock.sendall(msgpack.packb([0, msgid, method, params], use_bin_type=True))
        return msgid

    def notify(self, method, params):
        self.sock.sendall(msgpack.packb([2, method, params], use_bin_type=True))

    def stop_reading(self, timeout=20):
        """Acts as a client that sends but never reads: a small receive buffer, then pings until
        the daemon stops reading this connection (every buffer on the way is full). Returns how
        many pings went out."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ping = msgpack.packb([0, 1, "ping", []])
        chunk = ping * 1000
        sent = 0
        self.sock.setblocking(False)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                try:
                    sent += self.sock.send(chunk)
                except BlockingIOError:
                    break
        finally:
            self.sock.setblocking(True)
        return sent // len(ping)

    # --- receiving ---
    def _read_message(self):
        while True:
            for msg in self.unpacker:
                return msg
            data = self.sock.recv(1 << 16)
            if not data:
                raise Closed("the daemon closed the connection")
            self.unpacker.feed(data)

    def read_message(self):
        """Returns the next message of any kind, recording it."""
        msg = self._read_message()
        if msg[0] == 1:
            self.answers[msg[1]] = (msg[2], msg[3])
        elif msg[0] == 2:
            self.notifications.append(msg[1:])
        return msg

    def wait(self, msgid):
        """Returns (error, result) of the request with this msgid."""
        while msgid not in self.answers:
            self.read_message()
        return self.answers.pop(msgid)

    def call(self, method, *params):
        """Sends a request and returns its result; raises RpcError on an error answer."""
        err, result = self.wait(self.send_request(method, list(params)))
        if err is not None:
            raise RpcError(err)
        return result

    def call_err(self, method, params):
        """Sends a request that must fail and returns its error map."""
        err, result = self.wait(self.send_request(method, params))
        assert err is not None, f"{method} succeeded with {result!r}"
        return err

    def wait_closed(self, timeout=10):
        """Reads until the daemon closes the connection; returns what arrived meanwhile."""
        deadline = time.monotonic() + timeout
        got = []
        while time.monotonic() < deadline:
            try:
                got.append(self.read_message())
            except (Closed, ConnectionResetError):
                return got
        raise TimeoutError("the connection stayed open")


class RpcError(Exception):
    def __init__(self, err):
        super().__init__(f"{err.get('code')}: {err.get('message')}")
        self.err = err
        self.code = err.get("code")


def write_config(path, text):
    with open(path, "w") as f:
        f.write(text)


class Daemon:
    """A usaged process on a config file; stderr goes to DIR/usaged.log."""

    def __init__(self, workdir, config_text, name="usaged", extra_env=None, wrapper=None):
        self.workdir = workdir
        self.config = os.path.join(workdir, f"{name}.yaml")
        self.socket = os.path.join(workdir, f"{name}.sock")
        self.log = os.path.join(workdir, f"{name}.log")
        write_config(self.config, config_text.replace("@SOCKET@", self.socket))
        self.proc = None
        self.extra_env = extra_env or {}
        self.wrapper = wrapper or []  # a command the daemon runs under (bench: callgrind)

    def start(self, wait=True, args=()):
        env = dict(os.environ)
        env.update(self.extra_env)
        cmd = [*self.wrapper, USAGED_BIN, "-c", self.config, *args]
        if os.environ.get("USAGED_VALGRIND") and not self.wrapper:
            cmd = ["valgrind", "--error-exitcode=99", "--leak-check=full",
                   "--errors-for-leak-kinds=definite", "-q"] + cmd
        self.logf = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=self.logf, env=env)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=30):
        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"usaged exited with {self.proc.returncode}:\n"
                                   + self.log_text())
            try:
                with Client(self.socket, timeout=2) as c:
                    c.call("ping")
                return True
            except RpcError as e:
                return e.code == "unauthorized"  # it answers: auth is configured
            except (OSError, Closed):
                return False
        servers.wait_for(ready, timeout, "usaged to answer ping")

    def client(self, **kw):
        return Client(self.socket, **kw)

    def log_text(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=60):
        """Waits for the process to exit on its own (after a signal sent earlier)."""
        rc = self.proc.wait(timeout=timeout)
        self.logf.close()
        self.proc = None
        return rc

    def stop(self, timeout=60):
        """SIGTERM, then waits for exit; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            raise AssertionError("usaged did not stop within %ss:\n%s" % (timeout,
                                                                         self.log_text()))
        self.logf.close()
        self.proc = None
        return rc

    def kill(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.logf.close()
            self.proc = None
