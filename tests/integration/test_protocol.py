"""The wire protocol of PROTOCOL.md against the real daemon: framing, pipelining, every
bad-input rule, and the limits that keep one client from hurting the others."""

import os
import socket
import struct
import threading
import time
import uuid

import msgpack
import pytest

from conftest import base_config
from usaged_client import Client, Closed, RpcError
import servers


def make(daemon_factory, workdir, listen_extra="", extra=""):
    text = base_config(workdir).replace("  unix_mode: 0600\n", "  unix_mode: 0600\n" + listen_extra)
    return daemon_factory(text + extra)


def stats(d):
    with d.client() as c:
        return c.call("stats")


def test_ping_reports_version_protocol_and_uptime(daemon_factory, workdir):
    d = make(daemon_factory, workdir)
    with d.client() as c:
        r = c.call("ping")
    assert r["protocol"] == 1
    assert isinstance(r["version"], str) and r["version"]
    assert r["uptime_ms"] >= 0


def test_ten_thousand_pipelined_pings_get_ten_thousand_matching_answers(daemon_factory, workdir):
    d = make(daemon_factory, workdir)
    with d.client() as c:
        payload = b"".join(msgpack.packb([0, i, "ping", []]) for i in range(10000))
        c.send_raw(payload)
        seen = set()
        while len(seen) < 10000:
            msg = c.read_message()
            assert msg[0] == 1 and msg[2] is None, msg
            assert msg[1] not in seen
            seen.add(msg[1])
        assert seen == set(range(10000))


def test_answers_echo_any_uint32_msgid_even_repeated(daemon_factory, workdir):
    d = make(daemon_factory, workdir)
    with d.client() as c:
        for msgid in (0, 1, 2**31, 2**32 - 1, 2**32 - 1):
            c.send_request("ping", [], msgid=msgid)
            msg = c._read_message()
            assert msg[0] == 1 and msg[1] == msgid and msg[2] is None


def test_a_message_split_into_single_bytes_is_answered(daemon_factory, workdir):
    d = make(daemon_factory, workdir)
    with d.client() as c:
        data = msgpack.packb([0, 77, "ping", []])
        for b in data:
            c.send_raw(bytes([b]))
            time.sleep(0.001)  # pacing, so that the bytes arrive in separate reads
        assert c.wait(77)[0] is None


def test_garbage_bytes_get_the_error_notification_and_close_only_that_connection(
        daemon_factory, workdir):
    d = make(daemon_factory, workdir)
    with d.client() as good, d.client() as bad:
        good.send_request("ping", [], msgid=1)  # in flight while the other stream breaks
        bad.send_raw(b"\xc1garbage")
        got = bad.wait_closed()
        assert [m[:2] for m in got] == [[2, "error"]]
        assert got[0][2][0]["code"] == "bad_request"
        assert good.wait(1)[0] is None
        assert good.call("ping")["protocol"] == 1


def test_requests_read_before_the_stream_broke_are_answered_before_the_close(
        daemon_factory, workdir, pg, db, redis_server):
    # The checks go to Redis and are answered later; they were read, so they are spent: their
    # answers are owed, and the connection closes only once they are written.
    from test_limits import add_provider, check, start
    add_provider(pg, db, "broken", per_day=100000)
    d = start(daemon_factory, workdir, pg, db, redis_server, limits="  log_denied: false\n")
    user = str(uuid.uuid4())
    with d.client() as c:
        checks = [msgpack.packb([0, i, "check", [{"user_id": user, "provider": "broken"}]])
                  for i in range(100)]
        c.send_raw(b"".join(checks) + msgpack.packb([0, 500, "ping", []]) + b"\xc1")
        got = c.wait_closed()
    answered = sorted(m[1] for m in got if m[0] == 1)
    assert answered == list(range(100)) + [500]
    assert all(m[2] is None and m[3]["allowed"] for m in got if m[0] == 1 and m[1] < 100)
    assert [m[:2] for m in got if m[0] == 2] == [[2, "error"]]
    with d.client() as c:
        assert check(c, user, "broken", 0)["remaining_day"] == 100000 - 100


@pytest.mark.parametrize("end", ["bad bytes", "end of input"])
def test_a_connection_whose_last_work_is_check_notifications_closes_once_they_are_done(
        daemon_factory, workdir, pg, db, redis_server, end):
    # Checks sent as notifications owe no answer: when the last of them is done, a connection
    # whose stream broke (or whose input ended) closes, with nothing left to write.
    from test_limits import add_provider, check, start
    add_provider(pg, db, "notes", per_day=100000)
    d = start(daemon_factory, workdir, pg, db, redis_server, limits="  log_denied: false\n")
    user = str(uuid.uuid4())
    with d.client() as c:
        notes = b"".join(msgpack.packb([2, "check", [{"user_id": user, "provider": "notes"}]])
                         for _ in range(20))
        if end == "bad bytes":
            c.send_raw(notes + b"\xc1")
        else:
            c.send_raw(notes)
            c.sock.shutdown(socket.SHUT_WR)
        got = c.wait_closed(timeout=20)
    assert [m[:2] for m in got] == ([[2, "error"]] if end == "bad bytes" else [])
    with d.client() as c:
        assert check(c, user, "notes", 0)["remaining_day"] == 100000 - 20
        assert c.call("stats")["connections"]["open"] == 1


def test_a_message_over_the_size_limit_gets_too_large_and_closes(daemon_factory, workdir):
    d = make(daemon_factory, workdir, "  max_message_bytes: 4096\n")
    with d.client() as c:
        c.send_raw(msgpack.packb([0, 1, "ping", ["x" * 5000]]))
        got = c.wait_closed()
        assert got[-1][0] == 2 and got[-1][2][0]["code"] == "too_large"
    with d.client() as c:
        assert c.call("ping")["protocol"] == 1


def test_a_declared_array_that_cannot_fit_is_refused_without_waiting_for_its_bytes(
        daemon_factory, workdir):
    d = make(daemon_factory, workdir)
    with d.client() as c:
        c.send_raw(b"\xdd\x40\x00\x00\x00")  # array32 of 2^30 elements, 5 bytes
        got = c.wait_closed(timeout=5)
        assert got[-1][2][0]["code"] == "too_large"
    assert d.proc.poll() is None


def test_declared_str_bin_and_map_sizes_that_cannot_fit_are_refused(daemon_factory, workdir):
    d = make(daemon_factory, workdir)
    for header in (b"\xdb\x7f\xff\xff\xff", b"\xc6\x7f\xff\xff\xff", b"\xdf\x10\x00\x00\x00",
                   b"\x94\x00\x01\xa4ping\xdd\x00\x10\x00\x00"):
        with d.client() as c:
            c.send_raw(header)
            got = c.wait_closed(timeout=5)
            assert got[-1][2][0]["code"] == "too_large", header


def test_nesting_deeper_than_the_decoder_allows_breaks_the_stream(daemon_factory, workdir):
    d = make(daemon_factory, workdir)
    with d.client() as c:
        c.send_raw(b"\x91" * 40 + b"\x00")
        got = c.wait_closed()
        assert got[-1][2][0]["code"] == "bad_request"


def test_a_well_formed_object_that_is_not_an_envelope_keeps_the_connection_open(
        daemon_factory, workdir):
    d = make(daemon_factory, workdir)
    with d.client() as c:
        for obj in (5, {"a": 1}, [1, 2, None, None], [7], [0, 1, "ping"], "hello"):
            c.send_raw(msgpack.packb(obj))
            msg = c._read_message()
            assert msg[0] == 2 and msg[1] == "error", (obj, msg)
            assert msg[2][0]["code"] == "bad_request"
        assert c.call("ping")["protocol"] == 1


def test_a_request_with_a_bad_method_or_params_is_answered_with_bad_request(
        daemon_factory, workdir):
    d = make(daemon_factory, workdir)
    with d.client() as c:
        c.send_raw(msgpack.packb([0, 5, 12, []]))
        assert c.wait(5)[0]["code"] == "bad_request"
        c.send_raw(msgpack.packb([0, 6, "ping", {"not": "an array"}]))
        assert c.wait(6)[0]["code"] == "bad_request"
        assert c.call_err("ping", [1])["code"] == "bad_request"
        assert c.call_err("stats", ["x"])["code"] == "bad_request"


def test_an_unknown_method_is_answered_with_unknown_method(daemon_factory, workdir):
    d = make(daemon_factory, workdir)
    with d.client() as c:
        err = c.call_err("pong", [])
        assert err["code"] == "unknown_method"
        assert "message" in err


def test_an_invalid_notification_is_dropped_and_counted(daemon_factory, workdir):
    d = make(daemon_factory, workdir)
    with d.client() as c:
        c.notify("no_such_method", [])
        c.send_raw(msgpack.packb([2, "ping", "not an array"]))
        c.notify("ping", [1, 2])
        s = c.call("stats")
        assert not c.notifications
    assert s["dropped_notifications"]["unknown_method"] == 1
    assert s["dropped_notifications"]["bad_request"] == 2
    assert "dropped an invalid" in d.log_text()


def test_a_client_that_never_reads_is_paused_not_buffered(daemon_factory, workdir):
    d = make(daemon_factory, workdir, "  max_output_bytes: 65536\n")
    slow = d.client()
    # Far more answers than the output bound and the socket buffers can hold.
    sent = slow.stop_reading()
    assert sent > 0
    servers.wait_for(lambda: stats(d)["connections"]["paused_output"] >= 1, 10,
                     "the slow reader to be paused")
    rss_kib = int(open(f"/proc/{d.proc.pid}/status").read().split("VmRSS:")[1].split()[0])
    assert rss_kib < 200 * 1024
    # Another client is served meanwhile.
    with d.client() as other:
        assert other.call("ping")["protocol"] == 1
    # And the slow one gets every answer once it reads.
    slow.sock.settimeout(30)
    answers = 0
    while answers < sent:
        msg = slow._read_message()
        assert msg[0] == 1 and msg[2] is None
        answers += 1
    slow.close()


def test_max_connections_refuses_the_extra_connection_with_overloaded(daemon_factory, workdir):
    d = make(daemon_factory, workdir, "  max_connections: 3\n")
    first = d.client()
    # Wait until the readiness probe's connection is gone, so that exactly ours are counted.
    servers.wait_for(lambda: first.call("stats")["connections"]["open"] == 1, 10,
                     "only this connection to be open")
    others = [d.client() for _ in range(2)]
    for c in others:
        assert c.call("ping")["protocol"] == 1
    extra = d.client()
    got = extra.wait_closed()
    assert got[-1][0] == 2 and got[-1][2][0]["code"] == "overloaded"
    assert got[-1][2][0]["retry_after_ms"] > 0
    assert first.call("stats")["connections"]["refused"] == 1
    others[0].close()
    servers.wait_for(lambda: first.call("stats")["connections"]["open"] == 2, 10,
                     "the closed connection to be gone")
    with d.client() as c:
        assert c.call("ping")["protocol"] == 1
    first.close()
    others[1].close()


def test_an_idle_connection_is_closed_after_idle_timeout(daemon_factory, workdir):
    d = make(daemon_factory, workdir, "  idle_timeout_s: 1\n")
    with d.client() as c:
        c.call("ping")
        t0 = time.monotonic()
        c.wait_closed(timeout=10)
        assert time.monotonic() - t0 >= 0.9
    assert stats(d)["connections"]["closed_idle"] >= 1


def test_a_connection_stalled_halfway_through_a_message_is_closed_after_idle_timeout(
        daemon_factory, workdir):
    """Its bytes would otherwise stay buffered for as long as the client likes."""
    d = make(daemon_factory, workdir, "  idle_timeout_s: 1\n")
    with d.client() as c:
        c.send_raw(b"\x94\x00\x01")
        t0 = time.monotonic()
        c.wait_closed(timeout=10)
        assert time.monotonic() - t0 >= 0.9
    assert stats(d)["connections"]["closed_idle"] >= 1


def test_a_client_that_stops_reading_is_closed_after_idle_timeout(daemon_factory, workdir):
    d = make(daemon_factory, workdir, "  idle_timeout_s: 1\n  max_output_bytes: 65536\n")
    slow = d.client()
    assert slow.stop_reading() > 0
    servers.wait_for(lambda: stats(d)["connections"]["paused_output"] >= 1, 30,
                     "the reader of nothing to be paused")
    servers.wait_for(lambda: stats(d)["connections"]["closed_idle"] >= 1, 10,
                     "the connection that reads nothing to be closed")
    slow.close()


def test_auth_is_required_first_and_a_wrong_token_closes(daemon_factory, workdir):
    token = os.path.join(workdir, "token")
    with open(token, "w") as f:
        f.write("s3cret-token\n")
    os.chmod(token, 0o600)
    d = make(daemon_factory, workdir, extra=f"auth:\n  token_file: \"{token}\"\n")
    with d.client() as c:
        assert c.call_err("stats", [])["code"] == "unauthorized"
        assert c.call("auth", "s3cret-token") is True
        assert c.call("ping")["protocol"] == 1
    with d.client() as c:
        c.send_request("auth", ["wrong"], msgid=3)
        got = c.wait_closed()
        assert got[0][1] == 3 and got[0][2]["code"] == "unauthorized"
    assert "auth with a wrong token; closing" in d.log_text()


def test_the_tcp_listener_speaks_the_same_protocol(daemon_factory, workdir):
    port = servers.free_port()
    d = make(daemon_factory, workdir, f"  tcp: 127.0.0.1:{port}\n")
    with Client(tcp=("127.0.0.1", port)) as c:
        assert c.call("ping")["protocol"] == 1


def test_partial_messages_of_many_clients_are_bounded_together_and_all_finish(
        daemon_factory, workdir):
    """Twenty clients each send most of a 900 KB message and wait: their partial messages would
    hold 20 MB. Past listen.max_input_bytes (2 MiB) the daemon stops reading those that hold
    input, but one at a time finishes its message, so every one is answered once the rest comes."""
    d = make(daemon_factory, workdir, "  max_message_bytes: 1MiB\n  max_input_bytes: 2MiB\n")
    message = msgpack.packb([0, 1, "ping", ["x" * 900000]])
    go_on = threading.Event()
    answers, failures = [], []

    def client():
        try:
            with Client(d.socket, timeout=60) as c:
                c.send_raw(message[:-100])
                go_on.wait()
                c.send_raw(message[-100:])
                answers.append(c.wait(1)[0]["code"])  # ping takes no params: read whole
        except Exception as e:  # reported below
            failures.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(20)]
    for t in threads:
        t.start()
    try:
        servers.wait_for(lambda: stats(d)["connections"]["paused_input"] >= 1, 30,
                         "reads to be paused for the input bound")
        held = stats(d)["connections"]["input_bytes"]
    finally:
        go_on.set()
        for t in threads:
            t.join()
    assert held < 8 * 1024 * 1024, f"{held} bytes of partial messages held"
    assert not failures, failures
    assert answers == ["bad_request"] * 20
    servers.wait_for(lambda: stats(d)["connections"]["input_bytes"] == 0, 10,
                     "the input memory to be given back")
