"""bench/usage-bench against the real daemon, for a second or two: it runs, its events are valid,
and it reports its figures. A smoke run only: speed is measured by bench/compare and recorded in
bench/RESULTS.md, never asserted in a test."""

import json
import os
import signal
import subprocess
import time

import msgpack
import pytest

import servers
from conftest import base_config, sql

BUILD_DIR = os.environ.get("USAGED_BUILD_DIR",
                           os.path.join(os.path.dirname(__file__), "../../build"))
BENCH = os.path.join(BUILD_DIR, "bench", "usage-bench")
USERS = 20


def bench_users(pg, db):
    """The users usage-bench names: b0000000-0000-4000-8000-<i as 12 hex digits>."""
    sql(pg, db, "INSERT INTO auth.users (id, email) "
        "SELECT ('b0000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, "
        "'bench' || i || '@example.test' FROM generate_series(0, %s) AS i", (USERS - 1,))


def start(daemon_factory, workdir, pg, db, redis_server, extra=""):
    bench_users(pg, db)
    d = daemon_factory(base_config(workdir, pg=pg, dbname=db, redis=redis_server)
                       + "ingest:\n  batch_ms: 20\n" + extra)
    servers.wait_for(lambda: d.client().call("stats")["limits"]["limits_loads"] >= 1, 30,
                     "the limits to be loaded")
    return d


def bench(*args):
    assert os.path.exists(BENCH), f"{BENCH} is not built (meson compile builds it)"
    r = subprocess.run([BENCH, *args, "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_mixed_run_reports_throughput_latency_and_the_daemons_figures(
        daemon_factory, workdir, pg, db, redis_server):
    d = start(daemon_factory, workdir, pg, db, redis_server)
    r = bench("-s", d.socket, "--mix", "check=50,log_usage=40,log_prompt=10", "-c", "2",
              "-p", "4", "-e", "5", "-u", str(USERS), "-d", "1", "-w", "0.2",
              "--pid", str(d.proc.pid), "--pg", pg.dsn(db))
    assert r["errors"] == {}, "usage-bench sent something the daemon refused"
    assert r["requests_ok"] > 0
    assert r["requests_per_s"] > 0 and r["events_per_s"] > 0 and r["checks_per_s"] > 0
    lat = r["latency_us"]
    for kind in ("all", "check", "log_usage", "log_prompt"):
        assert lat[kind]["count"] > 0, kind
        assert 0 < lat[kind]["p50"] <= lat[kind]["p90"] <= lat[kind]["p99"] <= lat[kind]["p999"]
    assert r["daemon"]["peak_rss_kib"] > 0 and r["daemon"]["cpu_s"] >= 0
    assert r["postgres"]["rows_after"] >= r["postgres"]["rows_before"]


def test_an_ingest_run_waits_until_postgresql_holds_every_event(
        daemon_factory, workdir, pg, db, redis_server):
    d = start(daemon_factory, workdir, pg, db, redis_server)
    r = bench("-s", d.socket, "--mix", "log_usage=100", "-e", "50", "-c", "2", "-p", "2",
              "-u", str(USERS), "--client-ids", "--total-events", "1000",
              "--wait-committed", "30", "--duration", "30", "--pg", pg.dsn(db))
    assert r["postgres"]["all_committed"] is True
    assert r["postgres"]["rows_committed"] == 1000
    assert r["postgres"]["committed_per_s"] > 0


def test_notifications_are_counted_once_the_daemon_has_taken_them(
        daemon_factory, workdir, pg, db, redis_server):
    d = start(daemon_factory, workdir, pg, db, redis_server)
    r = bench("-s", d.socket, "--mix", "log_usage=100", "--notify", "-e", "10", "-c", "2",
              "-u", str(USERS), "--total-events", "300", "--wait-committed", "30",
              "--duration", "30", "--pg", pg.dsn(db))
    assert r["notifications"] == 30
    assert r["postgres"]["rows_committed"] == 300


def test_the_csv_of_usage_rows_loads_with_psql_copy(workdir, pg, db):
    bench_users(pg, db)
    path = os.path.join(workdir, "usage.csv")
    r = subprocess.run([BENCH, "--emit-csv", path, "--rows", "200", "-u", str(USERS)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    cols = ("user_id, provider, endpoint, request_size, response_size, response_time_ms, "
            "status_code, error_message, created_at")
    subprocess.run([servers.PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1",
                    "-d", pg.dsn(db), "-c",
                    f"\\copy public.api_usage_logs ({cols}) FROM '{path}' "
                    "WITH (FORMAT csv, HEADER true)"], check=True, capture_output=True)
    assert sql(pg, db, "SELECT count(*) FROM public.api_usage_logs")[0][0] == 200


LIMITER_SCRIPT = os.path.join(BUILD_DIR, "bench", "limiter-script")


def assert_quantiles(lat):
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["p9999"] <= lat["max"]


def test_an_open_loop_run_counts_every_request_due_in_its_window(
        daemon_factory, workdir, pg, db, redis_server):
    d = start(daemon_factory, workdir, pg, db, redis_server)
    r = bench("-s", d.socket, "--mix", "check=100", "-c", "2", "-p", "8", "-u", str(USERS),
              "--rate", "2000", "-d", "1", "-w", "0.2", "--pid", str(d.proc.pid))
    assert r["target"] == "usaged" and r["rate"] == 2000
    assert r["errors"] == {}
    lat = r["latency_us"]["all"]
    # Every request due in the window is in the figures, however fast or slow the daemon was:
    # the window's length times the rate, answered or counted as unanswered.
    assert abs(lat["count"] - 2000 * r["window_s"]) <= 2000 / 1000 + 2  # window_s is in ms
    assert r["requests_ok"] + r["open_loop"]["unanswered"] == lat["count"]
    assert_quantiles(lat)
    lag = r["open_loop"]["send_lag_us"]
    assert abs(lag["count"] - lat["count"]) <= 2
    assert lag["p50"] <= lag["p99"] <= lag["max"]
    # What the shared cores cost: the time the daemon and the client waited for a CPU.
    assert r["daemon"]["wait_s"] >= 0 and r["client"]["wait_s"] >= 0


def has_timerfd(pid):
    """Whether the process has a timerfd open: usage-bench makes its open loop's when the run
    begins, once every connection is made."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        return any(os.readlink(os.path.join(fd_dir, fd)) == "anon_inode:[timerfd]"
                   for fd in os.listdir(fd_dir))
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_stall_of_the_daemon_counts_for_every_request_due_during_it(
        daemon_factory, workdir, pg, db, redis_server):
    """The daemon is stopped for the first second of a 2-second open-loop run. Half of the
    requests fall due while it is stopped, and each counts its wait, so the 90th percentile is
    most of a second. (A closed loop with 16 in flight would have counted the stall for 16
    requests, and shown it at most in the p99.9.)"""
    d = start(daemon_factory, workdir, pg, db, redis_server)
    os.kill(d.proc.pid, signal.SIGSTOP)
    try:
        # Connecting needs only the listening socket's backlog, not the stopped daemon.
        p = subprocess.Popen([BENCH, "-s", d.socket, "--mix", "check=100", "-c", "2", "-p", "8",
                              "-u", str(USERS), "--rate", "500", "-d", "2", "-w", "0", "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        servers.wait_for(lambda: has_timerfd(p.pid) or p.poll() is not None, 30,
                         "usage-bench to begin its run")
        time.sleep(1.0)  # the stall being measured, not a wait for a condition
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    r = json.loads(out)
    lat = r["latency_us"]["all"]
    assert r["errors"] == {} and r["open_loop"]["unanswered"] == 0
    assert abs(lat["count"] - 500 * r["window_s"]) <= 500 / 1000 + 2
    assert lat["max"] >= 900_000
    assert lat["p90"] >= 400_000


def load_script(redis_server):
    import redis
    script = subprocess.run([LIMITER_SCRIPT], capture_output=True, text=True,
                            check=True).stdout
    conn = redis.Redis(unix_socket_path=redis_server.sock)
    try:
        return conn, conn.script_load(script)
    except Exception:
        conn.close()
        raise


def user_id(i):
    return f"b0000000-0000-4000-8000-{i:012x}"


def counters_key(prefix, user, provider):
    """Where the daemon counts a user's checks under the provider's two v1 rules (requests per
    minute and per day): one hash per user and provider, under the user's hash tag."""
    return f"{prefix}{{{user_id(user)}}}:p:{provider}"


def v1_fields(conn, key):
    """The fields of that hash, as the window ids they name: each window's id ("m", "d") and
    its count of requests in that window ("rm:ID", "rd:ID")."""
    h = {f.decode(): v.decode() for f, v in conn.hgetall(key).items()}
    def named(f):
        return f"{f[:2]} in " + ("current" if h.get(f[1]) == f[3:] else f[3:])
    return {f if f in ("m", "d") else named(f) for f in h}


# What v1_fields gives under the provider's two v1 rules.
V1_FIELDS = {"m", "rm in current", "d", "rd in current"}


def day_count(conn, key):
    return int(conn.hget(key, "rd:" + conn.hget(key, "d").decode()))


def slowlog_evalsha(conn):
    """The EVALSHA commands in Redis's slow log, oldest first, each as its arguments joined."""
    return [e["command"] for e in reversed(conn.slowlog_get(1024))
            if e["command"].startswith(b"EVALSHA ")]


def slowlog_everything(conn):
    """Redis's slow log keeps every command from now on (the last 1024), and nothing before."""
    conn.config_set("slowlog-max-len", 1024)
    conn.config_set("slowlog-log-slower-than", 0)
    conn.slowlog_reset()


PER_MINUTE, PER_DAY = 1_000_000, 2_000_000


def start_with_limits(daemon_factory, workdir, pg, db, redis_server):
    """A daemon whose openai limits are PER_MINUTE and PER_DAY, as usage-bench --redis-limits
    passes them below."""
    return start(daemon_factory, workdir, pg, db, redis_server,
                 "limits:\n  providers: { openai: { per_minute: %d, per_day: %d } }\n"
                 % (PER_MINUTE, PER_DAY))


def bench_redis_user0(redis_server, sha, *args):
    return bench("--redis", f"unix:{redis_server.sock}", "--evalsha", sha, "-c", "1", "-u", "1",
                 "-P", "openai", "--redis-limits", f"{PER_MINUTE},{PER_DAY}", "-w", "0", *args)


def test_redis_itself_gets_the_very_call_the_daemon_sends_for_a_check(
        daemon_factory, workdir, pg, db, redis_server):
    """The daemon checks user 0 with openai under the provider's two rules, then usage-bench
    --redis checks the same user and provider with the same limits, a call per check. Redis's
    slow log, which keeps every command while its threshold is 0, holds the same EVALSHA with
    the same arguments for each; and the daemon's next check counts the bench's: they went to
    the very counters the daemon's checks count in, and made no other key. (Earlier tests of
    this module counted checks of the same users in the same Redis: the figures are read as
    differences.)"""
    conn, sha = load_script(redis_server)
    try:
        d = start_with_limits(daemon_factory, workdir, pg, db, redis_server)
        slowlog_everything(conn)
        check = {"user_id": user_id(0), "provider": "openai"}
        first = d.client().call("check", check)
        assert first["allowed"]
        keys = {k.decode() for k in conn.scan_iter("usaged:*", count=1000)}
        assert counters_key("usaged:", 0, "openai") in keys
        r = bench_redis_user0(redis_server, sha, "-p", "8", "--redis-batch", "1", "--rate", "200",
                              "-d", "0.2")
        conn.config_set("slowlog-log-slower-than", 10000)
        assert r["errors"] == {} and r["open_loop"]["unanswered"] == 0
        sent = r["checks"]["allowed"]
        assert sent == r["requests_ok"] > 0
        calls = slowlog_evalsha(conn)
        assert len(calls) == 1 + sent
        assert calls[0].startswith(f"EVALSHA {sha} 0 c 900 1 usaged:{{{user_id(0)}}} ".encode())
        assert calls[1:] == [calls[0]] * sent
        second = d.client().call("check", check)
        assert second["remaining_day"] == first["remaining_day"] - sent - 1
        assert {k.decode() for k in conn.scan_iter("usaged:*", count=1000)} == keys
        assert v1_fields(conn, counters_key("usaged:", 0, "openai")) == V1_FIELDS
    finally:
        conn.config_set("slowlog-log-slower-than", 10000)
        conn.close()


def test_redis_itself_gets_the_daemons_call_for_checks_of_a_key_that_came_together(
        daemon_factory, workdir, pg, db, redis_server):
    """Three checks of one key that the daemon reads together go in one script call, in one
    part of it (the user's base once, 3 checks after its head's number). usage-bench
    --redis-batch 3, closed loop with 3 in flight, sends every call with 3 checks, all of user 0
    here: each is the daemon's call, argument for argument."""
    conn, sha = load_script(redis_server)
    try:
        d = start_with_limits(daemon_factory, workdir, pg, db, redis_server)
        slowlog_everything(conn)
        r = bench_redis_user0(redis_server, sha, "-p", "3", "--redis-batch", "3", "-d", "0.2")
        assert r["errors"] == {} and r["requests_ok"] > 0
        check = {"user_id": user_id(0), "provider": "openai"}
        with d.client() as c:
            # One write, so that the daemon reads the three in one go.
            c.send_raw(b"".join(msgpack.packb([0, i, "check", [check]]) for i in (1, 2, 3)))
            assert all(c.wait(i)[1]["allowed"] for i in (1, 2, 3))
        conn.config_set("slowlog-log-slower-than", 10000)
        calls = slowlog_evalsha(conn)
        daemons = calls[-1]  # the newest
        assert daemons.startswith(f"EVALSHA {sha} 0 c 900 1 usaged:{{{user_id(0)}}} ".encode())
        # Its head (1), 3 checks: cost, tokens, spend, "" (SLOWLOG keeps 32 arguments: the
        # last four are cut).
        assert daemons.endswith(b" 0 0 1 3 1 0 0  1 0 0  ... (4 more arguments)")
        assert len(calls) > 1 and calls[:-1] == [daemons] * (len(calls) - 1)
    finally:
        conn.config_set("slowlog-log-slower-than", 10000)
        conn.close()


@pytest.mark.parametrize("batch,rate", [(1, 3000), (8, 60000)])
def test_redis_itself_runs_the_check_script_open_loop_with_the_daemons_keys(redis_server, batch,
                                                                            rate):
    """One call per check, or up to 8 checks in a call as the daemon batches them (a key's
    checks in one part of it): each check is answered and counted alone, in the daemon's
    counters of its user and provider. (3,000/s wakes the client when each request is due,
    60,000/s every 20 us.)"""
    conn, sha = load_script(redis_server)
    prefix = f"smoke{batch}:"
    try:
        r = bench("--redis", f"unix:{redis_server.sock}", "--evalsha", sha, "-c", "2", "-p", "8",
                  "-u", str(USERS), "-P", "openai", "--key-prefix", prefix,
                  "--redis-batch", str(batch), "--rate", str(rate), "-d", "0.2", "-w", "0")
        assert r["target"] == "redis" and r["errors"] == {}
        lat = r["latency_us"]["all"]
        assert abs(lat["count"] - rate * r["window_s"]) <= rate / 1000 + 2  # window_s is in ms
        assert r["checks"]["allowed"] == r["requests_ok"] == lat["count"]
        assert_quantiles(lat)
        # Hundreds of checks over 20 users: every user's counters, each check counted once (by
        # day: a minute may turn during the run). No warm-up, so every check sent is counted.
        keys = {k.decode() for k in conn.scan_iter(f"{prefix}*", count=1000)}
        assert keys == {counters_key(prefix, i, "openai") for i in range(USERS)}
        assert all(v1_fields(conn, k) == V1_FIELDS for k in keys)
        assert sum(day_count(conn, k) for k in keys) == r["checks"]["allowed"]
    finally:
        conn.close()


def test_a_script_redis_does_not_have_fails_the_run_and_says_so(redis_server):
    r = subprocess.run([BENCH, "--redis", f"unix:{redis_server.sock}", "--evalsha", "0" * 40,
                        "-c", "1", "-p", "1", "--rate", "100", "-d", "0.2", "-w", "0", "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "NOSCRIPT" in r.stderr
    assert json.loads(r.stdout)["requests_err"] > 0
