"""The Prometheus endpoint (metrics.listen): GET /metrics serves the stats map in the text
exposition format; everything else gets a plain HTTP error; a slow or odd client hurts no one."""

import http.client
import os
import re
import socket
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import base_config
from usaged_client import USAGED_BIN, write_config
import servers

USAGECTL_BIN = os.environ.get("USAGECTL_BIN", os.path.join(os.path.dirname(__file__),
                                                           "../../build/usagectl"))


@pytest.fixture
def metrics(daemon_factory, workdir):
    """A daemon with metrics.listen on a free loopback port; yields (daemon, port)."""
    port = servers.free_port()
    cfg = base_config(workdir) + (
        f"redis:\n  address: \"unix:{os.path.join(workdir, 'no-redis-here.sock')}\"\n"
        f"postgres:\n  conninfo: \"host={os.path.join(workdir, 'no-pg-here')} dbname=x\"\n"
        f"metrics:\n  listen: 127.0.0.1:{port}\n")
    return daemon_factory(cfg), port


def get(port, path="/metrics", method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read().decode()
    finally:
        conn.close()


def raw(port, data):
    """Sends bytes and returns everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return got.decode(errors="replace")
            got += chunk


def test_get_metrics_answers_200_in_the_text_exposition_format(metrics):
    _, port = metrics
    status, headers, body = get(port)
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert int(headers["Content-Length"]) == len(body.encode())
    families = {f.name: f for f in text_string_to_metric_families(body)}
    assert families["usaged_connections_open"].type == "gauge"
    assert {s.labels["code"] for s in families["usaged_errors"].samples} >= {"bad_request",
                                                                             "internal"}


def test_the_endpoint_shows_the_same_families_as_usagectl(metrics):
    d, port = metrics
    ctl = subprocess.run([USAGECTL_BIN, "-s", d.socket, "stats", "--prometheus"],
                         capture_output=True, text=True, timeout=30)
    assert ctl.returncode == 0, ctl.stderr
    from_ctl = {f.name for f in text_string_to_metric_families(ctl.stdout)}
    from_http = {f.name for f in text_string_to_metric_families(get(port)[2])}
    assert from_ctl == from_http and "usaged_ingest_queue_rows" in from_http


def test_scrapes_see_live_figures(metrics):
    d, port = metrics
    def accepted():
        body = get(port)[2]
        fam = {f.name: f for f in text_string_to_metric_families(body)}
        return fam["usaged_connections_accepted"].samples[0].value
    before = accepted()
    with d.client() as c:
        c.call("ping")
    assert accepted() == before + 1


def test_a_client_that_closes_its_side_after_the_request_still_gets_the_whole_answer(metrics):
    # As `nc -N` or a shell's exec 3<> do: request, EOF, then read. A small receive buffer keeps
    # part of the answer in the daemon's buffers when it reads the EOF.
    _, port = metrics
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
    assert len(body) == length


def test_head_gets_the_headers_without_the_body(metrics):
    _, port = metrics
    status, headers, body = get(port, method="HEAD")
    assert status == 200 and body == ""
    assert int(headers["Content-Length"]) > 0


def test_another_path_gets_404(metrics):
    _, port = metrics
    assert get(port, "/")[0] == 404
    assert get(port, "/metrics/extra")[0] == 404


def test_a_query_string_is_ignored(metrics):
    _, port = metrics
    assert get(port, "/metrics?format=text")[0] == 200


def test_another_method_gets_405(metrics):
    _, port = metrics
    status, headers, _ = get(port, method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"


def test_a_malformed_request_gets_400_and_the_connection_closes(metrics):
    _, port = metrics
    assert raw(port, b"hello\r\n\r\n").startswith("HTTP/1.1 400 ")


def test_an_oversized_request_head_gets_431(metrics):
    _, port = metrics
    head = b"GET /metrics HTTP/1.1\r\nX-Filler: " + b"a" * 20000 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the answer came and the server closed before taking all of it
        got = s.recv(4096).decode(errors="replace")
    assert got.startswith("HTTP/1.1 431 ")


def test_each_answer_closes_its_connection(metrics):
    _, port = metrics
    got = raw(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # returns at the server's close
    assert got.startswith("HTTP/1.1 200 OK\r\n") and "Connection: close\r\n" in got


def test_a_client_that_sends_nothing_does_not_hold_up_scrapes(metrics):
    _, port = metrics
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        assert get(port)[0] == 200


def test_a_busy_metrics_address_stops_the_start(workdir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cfg = os.path.join(workdir, "busy-metrics.yaml")
        write_config(cfg, base_config(workdir).replace(
            "@SOCKET@", os.path.join(workdir, "busy-metrics.sock")) + (
            f"postgres:\n  conninfo: \"host={os.path.join(workdir, 'no-pg-here')} dbname=x\"\n"
            f"metrics:\n  listen: 127.0.0.1:{port}\n"))
        r = subprocess.run([USAGED_BIN, "-c", cfg], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert f"metrics.listen 127.0.0.1:{port}" in r.stderr
    assert not os.path.exists(os.path.join(workdir, "busy-metrics.sock"))
