"""bench/usage-bench against the real daemon, for a second or two: it runs, its events are valid,
and it reports its figures. A smoke run only: speed is measured by bench/compare and recorded in
bench/RESULTS.md, never asserted in a test."""

import json
import os
import subprocess

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


def start(daemon_factory, workdir, pg, db, redis_server):
    bench_users(pg, db)
    d = daemon_factory(base_config(workdir, pg=pg, dbname=db, redis=redis_server)
                       + "ingest:\n  batch_ms: 20\n")
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
