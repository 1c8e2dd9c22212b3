"""check end to end: exact minute and day windows in Redis, shared by several daemons, limits from
api_providers (changed live by NOTIFY) and the config, and the fallback policies when Redis is
down or slow."""

import os
import signal
import socket
import threading
import time
import uuid

import msgpack
import pytest
import redis as redis_py

from conftest import base_config, make_users, sql
from usaged_client import Client, RpcError
import servers


def add_provider(pg, db, name, per_minute=None, per_day=None, enabled=True):
    sql(pg, db, "INSERT INTO public.api_providers (name, display_name, max_requests_per_minute, "
        "max_requests_per_day, is_enabled) VALUES (%s, %s, %s, %s, %s)",
        (name, name.title(), per_minute, per_day, enabled))


def start(daemon_factory, workdir, pg, db, redis_server, limits="", redis_extra="", name=None,
          listen_extra=""):
    cfg = base_config(workdir, pg=pg, dbname=db, redis=redis_server)
    cfg = cfg.replace("redis:\n", "redis:\n" + redis_extra, 1)
    cfg = cfg.replace("  unix_mode: 0600\n", "  unix_mode: 0600\n" + listen_extra, 1)
    cfg += "limits:\n  resync_s: 60\n" + limits
    cfg += "ingest:\n  batch_ms: 20\n"
    d = daemon_factory(cfg, name=name)
    # Checks need the providers' limits: wait until they are read.
    servers.wait_for(lambda: d.client().call("stats")["limits"]["limits_loads"] >= 1, 30,
                     "the limits to be loaded")
    return d


def check(c, user, provider, cost=None):
    p = {"user_id": user, "provider": provider}
    if cost is not None:
        p["cost"] = cost
    return c.call("check", p)


def pipelined_checks(c, keys):
    """Sends a check of each (user, provider) in one write, then reads every answer in order:
    [error, result] per check."""
    c.send_raw(b"".join(msgpack.packb([0, i, "check", [{"user_id": u, "provider": p}]])
                        for i, (u, p) in enumerate(keys, 1)))
    return [c.wait(i) for i in range(1, len(keys) + 1)]


def wait_for_fresh_minute(redis_server):
    """Waits until at least 15 s are left in the Redis server's current minute, so that a test's
    checks all fall in one window."""
    r = redis_py.Redis(unix_socket_path=redis_server.sock)
    servers.wait_for(lambda: int(r.time()[0]) % 60 < 45, 20, "a fresh minute")
    r.close()


def test_five_per_minute_allows_five_then_denies_with_retry_after(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "fivemin", per_minute=5, per_day=1000)
    user = str(uuid.uuid4())
    d = start(daemon_factory, workdir, pg, db, redis_server)
    wait_for_fresh_minute(redis_server)
    with d.client() as c:
        results = [check(c, user, "fivemin") for _ in range(8)]
    assert [r["allowed"] for r in results] == [True] * 5 + [False] * 3
    assert [r["remaining_minute"] for r in results[:5]] == [4, 3, 2, 1, 0]
    assert [r["remaining_day"] for r in results[:5]] == [999, 998, 997, 996, 995]
    for r in results[:5]:
        assert r["reason"] is None and r["retry_after_ms"] == 0 and r["degraded"] is False
        assert (r["limit_minute"], r["limit_day"]) == (5, 1000)
    for r in results[5:]:
        assert r["reason"] == "minute_limit"
        assert 0 < r["retry_after_ms"] <= 60000
        assert r["remaining_minute"] == 0 and r["degraded"] is False
        assert 0 < r["reset_minute_ms"] <= 60000 and 0 < r["reset_day_ms"] <= 86400000


def test_a_server_that_lost_its_scripts_runs_the_source_and_counts_on_exactly(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "flushed", per_minute=5, per_day=1000)
    user = str(uuid.uuid4())
    d = start(daemon_factory, workdir, pg, db, redis_server)
    wait_for_fresh_minute(redis_server)
    r = redis_py.Redis(unix_socket_path=redis_server.sock)
    with d.client() as c:
        first = check(c, user, "flushed")
        r.script_flush()  # as after a restart: EVALSHA now answers NOSCRIPT
        rest = [check(c, user, "flushed", 2) for _ in range(3)]
        stats = c.call("stats")["limits"]["redis"]
    r.close()
    assert first["allowed"] and first["remaining_minute"] == 4
    assert [x["allowed"] for x in rest] == [True, True, False]
    assert [x["remaining_minute"] for x in rest] == [2, 0, 0]
    assert not any(x["degraded"] for x in [first] + rest)
    assert stats["noscript_retries"] == 1


def test_a_peek_reports_without_spending(daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "peek", per_minute=5, per_day=100)
    user = str(uuid.uuid4())
    d = start(daemon_factory, workdir, pg, db, redis_server)
    wait_for_fresh_minute(redis_server)
    with d.client() as c:
        check(c, user, "peek", 2)
        peeks = [check(c, user, "peek", 0) for _ in range(3)]
        after = check(c, user, "peek", 1)
    assert all(p["allowed"] and p["remaining_minute"] == 3 for p in peeks)
    assert after["remaining_minute"] == 2


def test_the_day_limit_allows_then_denies_and_a_denial_spends_nothing(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "fiveday", per_day=5)
    user = str(uuid.uuid4())
    d = start(daemon_factory, workdir, pg, db, redis_server)
    with d.client() as c:
        results = [check(c, user, "fiveday") for _ in range(8)]
        too_big = check(c, user, "fiveday", 0)
    assert [r["allowed"] for r in results] == [True] * 5 + [False] * 3
    assert [r["remaining_day"] for r in results[:5]] == [4, 3, 2, 1, 0]
    assert all(r["limit_minute"] is None and r["remaining_minute"] is None for r in results)
    for r in results[5:]:
        assert r["reason"] == "day_limit"
        assert 0 < r["retry_after_ms"] <= 86400000
    assert too_big["allowed"] and too_big["remaining_day"] == 0


def test_a_cost_is_taken_from_both_windows_only_when_both_allow(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "both", per_minute=10, per_day=12)
    user = str(uuid.uuid4())
    d = start(daemon_factory, workdir, pg, db, redis_server)
    wait_for_fresh_minute(redis_server)
    with d.client() as c:
        a = check(c, user, "both", 8)
        b = check(c, user, "both", 3)   # minute would be 11 > 10: denied, nothing taken
        e = check(c, user, "both", 2)   # 10 <= 10 and 10 <= 12
        f = check(c, user, "both", 11)  # more than either limit: denied
    assert a["allowed"] and (a["remaining_minute"], a["remaining_day"]) == (2, 4)
    assert not b["allowed"] and b["reason"] == "minute_limit"
    assert (b["remaining_minute"], b["remaining_day"]) == (2, 4)
    assert e["allowed"] and (e["remaining_minute"], e["remaining_day"]) == (0, 2)
    assert not f["allowed"]


def test_two_daemons_sharing_redis_allow_exactly_the_day_limit_under_concurrency(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "shared", per_day=100)
    user = str(uuid.uuid4())
    # A generous timeout: a slow run (valgrind) must not turn answers into degraded ones, which
    # would be decided per daemon and so allow up to the limit per daemon.
    slow_ok = "  timeout_ms: 10000\n"
    d1 = start(daemon_factory, workdir, pg, db, redis_server, name="one", redis_extra=slow_ok)
    d2 = start(daemon_factory, workdir, pg, db, redis_server, name="two", redis_extra=slow_ok)
    socks = []
    for d in (d1, d2):
        for _ in range(50):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(d.socket)
            socks.append(s)
    req = {"user_id": user, "provider": "shared"}
    payload = b"".join(msgpack.packb([0, i, "check", [req]]) for i in range(20))
    barrier = threading.Barrier(len(socks))
    allowed = []
    lock = threading.Lock()

    def run(s):
        barrier.wait()
        s.sendall(payload)
        u = msgpack.Unpacker(raw=False)
        got = 0
        n = 0
        while got < 20:
            u.feed(s.recv(65536))
            for msg in u:
                assert msg[2] is None, msg
                assert msg[3]["degraded"] is False
                got += 1
                n += msg[3]["allowed"]
        with lock:
            allowed.append(n)

    threads = [threading.Thread(target=run, args=(s,)) for s in socks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in socks:
        s.close()
    assert len(allowed) == 100
    assert sum(allowed) == 100


def test_an_update_of_a_provider_limit_is_obeyed_within_a_second(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "live", per_minute=2, per_day=1000)
    user = str(uuid.uuid4())
    d = start(daemon_factory, workdir, pg, db, redis_server)
    wait_for_fresh_minute(redis_server)
    with d.client() as c:
        assert [check(c, user, "live")["allowed"] for _ in range(3)] == [True, True, False]
        sql(pg, db, "UPDATE public.api_providers SET max_requests_per_minute = 4 "
            "WHERE name = 'live'")
        t0 = time.monotonic()
        while not check(c, user, "live")["allowed"]:
            assert time.monotonic() - t0 < 1.0, "the new limit was not obeyed within 1 s"
        assert check(c, user, "live")["limit_minute"] == 4
        sql(pg, db, "UPDATE public.api_providers SET is_enabled = false WHERE name = 'live'")
        servers.wait_for(lambda: check(c, user, "live")["reason"] == "provider_disabled", 1,
                         "the provider to be disabled")


def test_unknown_and_disabled_providers_and_bad_params(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "off", per_minute=5, enabled=False)
    user = str(uuid.uuid4())
    d = start(daemon_factory, workdir, pg, db, redis_server)
    with d.client() as c:
        assert c.call_err("check", [{"user_id": user, "provider": "nope"}])["code"] == \
            "unknown_provider"
        # Names are up to 50 characters (api_providers.name is varchar(50)), not 50 bytes.
        assert c.call_err("check", [{"user_id": user, "provider": "é" * 49 + "😀"}])["code"] == \
            "unknown_provider"
        r = check(c, user, "off")
        assert (r["allowed"], r["reason"]) == (False, "provider_disabled")
        for params, field in [([{"provider": "off"}], "user_id"),
                              ([{"user_id": "x", "provider": "off"}], "user_id"),
                              ([{"user_id": user}], "provider"),
                              ([{"user_id": user, "provider": ""}], "provider"),
                              ([{"user_id": user, "provider": "é" * 51}], "provider"),
                              ([{"user_id": user, "provider": "off", "cost": -1}], "cost"),
                              ([{"user_id": user, "provider": "off", "cost": 1.5}], "cost"),
                              ([{"user_id": user, "provider": "off", "colour": 1}], "colour")]:
            err = c.call_err("check", params)
            assert (err["code"], err["field"]) == ("invalid_field", field), params
        assert c.call_err("check", [])["code"] == "bad_request"
        assert c.call_err("check", [user, "off"])["code"] == "bad_request"
        # A field given twice (a map msgpack allows, a dict cannot hold): refused, not last-wins.
        for key, value in (("provider", "off"), ("user_id", user), ("cost", 1)):
            pairs = [("user_id", user), ("provider", "off"), (key, value), (key, value)]
            c.send_raw(b"\x94\x00\xcd\x01\x00\xa5check\x91\x84"
                       + b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in pairs))
            err = c.wait(256)[0]
            assert (err["code"], err["field"]) == ("invalid_field", key), key


def test_config_overrides_apply_per_provider_then_per_user(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "cfg", per_minute=100, per_day=1000)
    vip, other = str(uuid.uuid4()), str(uuid.uuid4())
    limits = ("  providers: { cfg: { per_minute: 2 }, onlyconfig: { per_day: 3 } }\n"
              f"  users: [ {{ user_id: \"{vip}\", provider: cfg, per_minute: 4 }} ]\n")
    d = start(daemon_factory, workdir, pg, db, redis_server, limits=limits)
    wait_for_fresh_minute(redis_server)
    with d.client() as c:
        assert [check(c, other, "cfg")["allowed"] for _ in range(3)] == [True, True, False]
        assert [check(c, vip, "cfg")["allowed"] for _ in range(5)] == [True] * 4 + [False]
        r = check(c, other, "onlyconfig")
        assert (r["limit_minute"], r["limit_day"], r["remaining_day"]) == (None, 3, 2)


def test_unlimited_providers_are_allowed_without_redis(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "free")
    d = start(daemon_factory, workdir, pg, db, redis_server)
    with d.client() as c:
        r = check(c, str(uuid.uuid4()), "free", 1000000)
        s = c.call("stats")["limits"]
    assert r["allowed"] and r["limit_minute"] is None and r["remaining_day"] is None
    assert s["unlimited"] == 1 and s["redis_round_trips"] == 0


def test_denied_checks_are_logged_with_status_429(daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "logged", per_minute=1, per_day=100)
    user = make_users(pg, db, 1)[0]
    d = start(daemon_factory, workdir, pg, db, redis_server)
    wait_for_fresh_minute(redis_server)
    with d.client() as c:
        assert [check(c, user, "logged")["allowed"] for _ in range(3)] == [True, False, False]
    servers.wait_for(lambda: sql(pg, db, "SELECT count(*) FROM public.api_usage_logs")[0][0] == 2,
                     30, "two 429 rows")
    rows = sql(pg, db, "SELECT user_id::text, provider, status_code, error_message "
               "FROM public.api_usage_logs")
    assert all(r[:3] == (user, "logged", 429) and "minute_limit" in r[3] for r in rows)


def test_hammering_one_key_is_answered_from_the_cache_and_coalesced(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "hammer", per_minute=10, per_day=100000)
    user = str(uuid.uuid4())
    d = start(daemon_factory, workdir, pg, db, redis_server,
              limits="  log_denied: false\n")
    wait_for_fresh_minute(redis_server)
    with d.client() as c:
        answers = pipelined_checks(c, [(user, "hammer")] * 2000)
        s = c.call("stats")["limits"]
    assert sum(a[1]["allowed"] for a in answers) == 10
    # The first ten allowed in order: coalesced calls apply checks in arrival order.
    assert all(a[1]["allowed"] for a in answers[:10])
    assert s["cache_hits"] + s["coalesced"] > 1000
    assert s["redis_round_trips"] < 1000


def test_checks_of_many_keys_share_script_calls_and_each_key_stays_exact(
        daemon_factory, workdir, pg, db, redis_server):
    # 200 users x 2 providers x 4 checks each, interleaved, in one write: the daemon reads them
    # in a few loop iterations, so many keys, with different limits, go out in each script call;
    # each key still gets exactly its limit, the first of its checks in arrival order.
    add_provider(pg, db, "batch", per_minute=3, per_day=100000)
    add_provider(pg, db, "batchday", per_day=2)
    users = [str(uuid.uuid4()) for _ in range(200)]
    d = start(daemon_factory, workdir, pg, db, redis_server, limits="  log_denied: false\n")
    wait_for_fresh_minute(redis_server)
    order = [(u, p) for _ in range(4) for u in users for p in ("batch", "batchday")]
    with d.client() as c:
        answers = pipelined_checks(c, order)
        s = c.call("stats")["limits"]
    assert all(a[0] is None for a in answers), answers[0]
    allowed = {}
    for key, a in zip(order, answers):
        allowed.setdefault(key, []).append(a[1]["allowed"])
    assert len(allowed) == 400
    want = {"batch": [True, True, True, False], "batchday": [True, True, False, False]}
    assert all(v == want[p] for (u, p), v in allowed.items())
    assert s["batched"] > 0
    assert s["redis_round_trips"] < len(order) - s["cache_hits"] - s["coalesced"]


def test_a_key_redis_cannot_count_fails_alone_and_the_batch_around_it_stays_exact(
        daemon_factory, workdir, pg, db, redis_server):
    # Someone stored a list where one user's counters of the provider belong (the hash of the
    # scope {user}:p:provider, PROTOCOL.md's budgets layout). Its checks go out in the same
    # script calls as 20 other users' (one write), and only they get the policy's answer.
    add_provider(pg, db, "wrongtype", per_minute=3, per_day=1000)
    bad = str(uuid.uuid4())
    good = [str(uuid.uuid4()) for _ in range(20)]
    d = start(daemon_factory, workdir, pg, db, redis_server, limits="  log_denied: false\n")
    wait_for_fresh_minute(redis_server)
    r = redis_py.Redis(unix_socket_path=redis_server.sock)
    r.rpush(f"usaged:{{{bad}}}:p:wrongtype", "not a counter")
    order = [u for _ in range(4) for u in [bad] + good]
    with d.client() as c:
        answers = pipelined_checks(c, [(u, "wrongtype") for u in order])
        s = c.call("stats")["limits"]
    assert all(a[0] is None for a in answers), answers[0]
    by_user = {}
    for u, a in zip(order, answers):
        by_user.setdefault(u, []).append(a[1])
    assert all(a["degraded"] for a in by_user[bad])
    for u in good:
        assert [a["allowed"] for a in by_user[u]] == [True, True, True, False]
        assert [a["remaining_minute"] for a in by_user[u]] == [2, 1, 0, 0]
        assert not any(a["degraded"] for a in by_user[u])
    assert s["key_errors"] == 4 and s["batched"] > 0
    # Nothing of the user's was written around it.
    assert r.lrange(f"usaged:{{{bad}}}:p:wrongtype", 0, -1) == [b"not a counter"]
    assert r.keys(f"usaged:{{{bad}}}*") == [f"usaged:{{{bad}}}:p:wrongtype".encode()]
    r.close()
    assert "cannot be counted" in d.log_text()


@pytest.mark.parametrize("policy", ["local", "allow", "deny"])
def test_redis_stopped_answers_degraded_within_the_timeout_then_exact_again(
        daemon_factory, workdir, pg, db, redis_server, policy):
    add_provider(pg, db, "flaky", per_minute=3, per_day=1000)
    user = str(uuid.uuid4())
    d = start(daemon_factory, workdir, pg, db, redis_server,
              limits=f"  on_redis_error: {policy}\n  log_denied: false\n",
              redis_extra="  timeout_ms: 200\n  reconnect_max_ms: 200\n")
    with d.client() as c:
        assert check(c, user, "flaky", 0)["degraded"] is False
        redis_server.stop()
        try:
            answers = []
            for _ in range(5):
                t0 = time.monotonic()
                answers.append(check(c, user, "flaky"))
                assert time.monotonic() - t0 < 1.0
            assert all(a["degraded"] for a in answers)
            if policy == "local":
                assert [a["allowed"] for a in answers] == [True] * 3 + [False] * 2
                assert answers[3]["reason"] == "minute_limit"
            elif policy == "allow":
                assert all(a["allowed"] for a in answers)
            else:
                assert not any(a["allowed"] for a in answers)
                assert all(a["reason"] == "unavailable" for a in answers)
        finally:
            redis_server.start()
        servers.wait_for(lambda: check(c, user, "flaky", 0)["degraded"] is False, 10,
                         "exact answers once Redis is back")


def test_a_stalled_redis_is_answered_by_the_timeout(daemon_factory, workdir, pg, db,
                                                     redis_server):
    add_provider(pg, db, "stall", per_minute=3, per_day=1000)
    user = str(uuid.uuid4())
    d = start(daemon_factory, workdir, pg, db, redis_server,
              limits="  on_redis_error: allow\n  log_denied: false\n",
              redis_extra="  timeout_ms: 150\n")
    with d.client() as c:
        assert check(c, user, "stall", 0)["degraded"] is False
        os.kill(redis_server.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            r = check(c, user, "stall")
            elapsed = time.monotonic() - t0
        finally:
            os.kill(redis_server.pid, signal.SIGCONT)
        assert r["degraded"] and r["allowed"]
        assert 0.1 <= elapsed < 1.0
        servers.wait_for(lambda: check(c, user, "stall", 0)["degraded"] is False, 10,
                         "exact answers once Redis answers again")
        assert c.call("stats")["limits"]["redis"]["timeouts"] >= 1


def test_a_redis_host_given_by_name_is_looked_up_and_counted_exactly(
        daemon_factory, workdir, pg, db):
    """The daemon looks a Redis host name up itself, off the event loop (hiredis would block it
    in connect), and connects to the address found."""
    add_provider(pg, db, "named", per_minute=2, per_day=1000)
    tcp_redis = servers.Redis(os.path.join(workdir, "redistcp"), tcp=True).start()
    try:
        cfg = base_config(workdir, pg=pg, dbname=db, redis=tcp_redis).replace(
            tcp_redis.address(), f"localhost:{tcp_redis.port}")
        d = daemon_factory(cfg + "limits:\n  log_denied: false\n")
        user = str(uuid.uuid4())
        with d.client() as c:
            servers.wait_for(lambda: c.call("stats")["limits"]["redis"]["connects"] >= 1, 30,
                             "a connection to Redis by name")
            servers.wait_for(lambda: c.call("stats")["limits"]["limits_loads"] >= 1, 30,
                             "the limits to be loaded")
            answers = [check(c, user, "named") for _ in range(3)]
        assert [a["allowed"] for a in answers] == [True, True, False]
        assert not any(a["degraded"] for a in answers)
    finally:
        tcp_redis.stop()


def test_a_redis_name_that_does_not_resolve_is_logged_and_checks_are_degraded(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "nowhere", per_minute=2, per_day=1000)
    cfg = base_config(workdir, pg=pg, dbname=db, redis=redis_server).replace(
        redis_server.address(), "no-such-host.invalid:6379")
    d = daemon_factory(cfg + "limits:\n  on_redis_error: local\n  log_denied: false\n")
    servers.wait_for(lambda: "cannot resolve" in d.log_text(), 30, "the lookup failure logged")
    assert "redis: cannot connect to no-such-host.invalid:6379: cannot resolve" in d.log_text()
    with d.client() as c:
        servers.wait_for(lambda: c.call("stats")["limits"]["limits_loads"] >= 1, 30,
                         "the limits to be loaded")
        a = check(c, str(uuid.uuid4()), "nowhere")
    assert a["allowed"] and a["degraded"]


def test_providers_unread_while_postgres_is_down_answer_unavailable(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "later", per_minute=3)
    pg.stop()
    try:
        cfg = base_config(workdir, pg=pg, dbname=db, redis=redis_server)
        d = daemon_factory(cfg)
        with d.client() as c:
            err = c.call_err("check", [{"user_id": str(uuid.uuid4()), "provider": "later"}])
            assert err["code"] == "unavailable" and err["retry_after_ms"] > 0
    finally:
        pg.start()
    servers.wait_for(lambda: d.client().call("stats")["limits"]["limits_loads"] >= 1, 30,
                     "the limits to be loaded once PostgreSQL is back")
    with d.client() as c:
        assert check(c, str(uuid.uuid4()), "later")["allowed"]


def test_answers_that_free_a_paused_pipeline_stay_whole(daemon_factory, workdir, pg, db,
                                                        redis_server):
    """An answer that brings a connection back under max_pending_requests must be sent whole
    before the requests it lets through are answered (never one inside another)."""
    add_provider(pg, db, "pipe", per_minute=1000, per_day=100000)
    d = start(daemon_factory, workdir, pg, db, redis_server, limits="  log_denied: false\n",
              listen_extra="  max_pending_requests: 4\n")
    with d.client() as c:
        req = {"user_id": str(uuid.uuid4()), "provider": "pipe"}
        msgs = [msgpack.packb([0, i, "check", [req]]) for i in range(1, 9)]
        msgs += [msgpack.packb([0, 100 + i, "ping", []]) for i in range(4)]
        c.send_raw(b"".join(msgs))
        seen = {}
        while len(seen) < 12:
            msg = c._read_message()
            assert isinstance(msg, list) and msg[0] == 1 and msg[2] is None, msg
            seen[msg[1]] = msg[3]
    assert set(seen) == set(range(1, 9)) | set(range(100, 104))
    assert all(seen[i]["allowed"] is True for i in range(1, 9))
    assert all(seen[100 + i]["protocol"] == 1 for i in range(4))


def test_checks_let_through_by_a_paused_pipeline_go_out_without_waiting(
        daemon_factory, workdir, pg, db, redis_server):
    """A connection paused at max_pending_requests is resumed after the loop has read the
    answers that free it; the checks it then submits must go to Redis in that turn of the loop,
    not wait for whatever wakes the loop next (a timer: before the fix, 200 checks took 10 s
    here; 100 pauses now take milliseconds)."""
    add_provider(pg, db, "resume", per_minute=1000, per_day=100000)
    d = start(daemon_factory, workdir, pg, db, redis_server, limits="  log_denied: false\n",
              listen_extra="  max_pending_requests: 4\n")
    users = [str(uuid.uuid4()) for _ in range(400)]
    with d.client() as c:
        start_s = time.monotonic()
        answers = pipelined_checks(c, [(u, "resume") for u in users])
        elapsed = time.monotonic() - start_s
    assert all(a[0] is None and a[1]["allowed"] for a in answers)
    assert elapsed < 5, f"400 checks through a 4-deep pipeline took {elapsed:.1f} s"


def test_a_stalled_redis_is_dropped_so_later_checks_do_not_wait(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "stall2", per_minute=3, per_day=1000)
    user = str(uuid.uuid4())
    d = start(daemon_factory, workdir, pg, db, redis_server,
              limits="  on_redis_error: allow\n  log_denied: false\n",
              redis_extra="  timeout_ms: 300\n  reconnect_max_ms: 200\n")
    with d.client() as c:
        assert check(c, user, "stall2", 0)["degraded"] is False
        os.kill(redis_server.pid, signal.SIGSTOP)
        try:
            assert check(c, user, "stall2")["degraded"]  # waits out the timeout once
            t0 = time.monotonic()
            later = [check(c, user, "stall2") for _ in range(20)]
            elapsed = time.monotonic() - t0
            assert all(r["degraded"] for r in later)
            assert elapsed < 300 * 20 / 1000 / 4, "later checks still waited for Redis"
            assert c.call("stats")["limits"]["redis"]["state"] == "down"
        finally:
            os.kill(redis_server.pid, signal.SIGCONT)
        servers.wait_for(lambda: check(c, user, "stall2", 0)["degraded"] is False, 15,
                         "exact answers once Redis answers again")

