"""The analytics refresher and the daily maintenance: the views follow what was ingested, daemons
sharing a database share the work, failures are reported and survived, maintenance creates
partitions and applies retention once a day, SIGHUP changes the schedule, and SIGTERM does not
wait for a long refresh."""

import datetime
import decimal
import signal
import time

from conftest import base_config, make_users, sql
from usaged_client import write_config
import servers

UTC = datetime.timezone.utc
VIEWS = ("analytics.api_usage_daily", "analytics.api_usage_hourly_provider",
         "analytics.prompt_generations_daily")


def refresh_yaml(views, every_s=1, timeout_s=None):
    lines = ["refresh:\n"]
    for v in views:
        extra = f", timeout_s: {timeout_s}" if timeout_s else ""
        lines.append(f"  - {{ view: {v}, every_s: {every_s}{extra} }}\n")
    return "".join(lines)


def config(workdir, pg, db, extra="", log_level="info"):
    return (base_config(workdir, pg=pg, dbname=db)
            + "ingest:\n  batch_rows: 1000\n  batch_ms: 20\n"
            + f"log:\n  level: {log_level}\n" + extra)


def stats(d):
    with d.client() as c:
        return c.call("stats")


def view_stats(d, view):
    return stats(d)["refresh"]["views"][view]


def wait_view(d, view, what, condition, timeout=10):
    servers.wait_for(lambda: condition(view_stats(d, view)), timeout, f"{view}: {what}")
    return view_stats(d, view)


def p95(values):
    """percentile_cont(0.95): linear interpolation between the closest ranks (rounded, so that
    float noise does not matter)."""
    v = sorted(values)
    pos = 0.95 * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return round(v[lo] + (v[hi] - v[lo]) * (pos - lo), 6)


def month_start(today, ahead):
    y, m = today.year, today.month + ahead
    y, m = y + (m - 1) // 12, (m - 1) % 12 + 1
    return datetime.datetime(y, m, 1, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------
# Refresh

def test_ingested_events_reach_every_view_with_the_right_aggregates_within_one_interval(
        daemon_factory, workdir, pg, db):
    alice, bob = make_users(pg, db, 2)
    d = daemon_factory(config(workdir, pg, db, refresh_yaml(VIEWS, every_s=1)))
    for v in VIEWS:
        wait_view(d, v, "a first refresh", lambda s: s["refreshes"] >= 1)

    now = datetime.datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0) - datetime.timedelta(hours=1)
    ms = lambda minute: int((hour + datetime.timedelta(minutes=minute)).timestamp() * 1000)
    # (user, provider, status, response_time_ms, request_size, response_size)
    calls = [(alice, "openai", 200, 120, 10, 1000), (alice, "openai", 200, 80, 20, 2000),
             (alice, "openai", 429, 3, 30, 0), (alice, "openai", 500, 1500, 40, 50),
             (alice, "openai", 404, 40, 50, 60), (alice, "anthropic", 200, 900, 5, 500),
             (bob, "openai", 429, 2, 1, 0), (bob, "openai", 200, 333, 7, 70)]
    usage = [{"user_id": u, "provider": p, "status_code": s, "response_time_ms": t,
              "request_size": rq, "response_size": rs, "created_at": ms(i)}
             for i, (u, p, s, t, rq, rs) in enumerate(calls)]
    # (user, framework, model, provider, status, tokens, cost)
    gens = [(alice, "RACE", "gpt-4o", "openai", "completed", 100, "0.0100"),
            (alice, "RACE", "gpt-4o", "openai", "failed", 5, "0.0005"),
            (alice, "RACE", "gpt-4o", "openai", "completed", 200, "0.0200"),
            (bob, None, None, None, "pending", None, None)]
    prompts = [{"user_id": u, "framework_id": f, "model": m, "provider": p, "status": s,
                "tokens_used": t, "cost_usd": c, "created_at": ms(30 + i)}
               for i, (u, f, m, p, s, t, c) in enumerate(gens)]
    with d.client() as c:
        c.call("log_usage", usage, {"ack": "durable"})
        c.call("log_prompt", prompts, {"ack": "durable"})

    day = hour.date()
    expected_daily = {}
    for u, p, s, t, rq, rs in calls:
        expected_daily.setdefault((u, p), []).append((s, t, rq, rs))
    expected_daily = {
        (day, u, p): (len(rows), sum(r[0] >= 400 for r in rows), sum(r[0] == 429 for r in rows),
                      round(decimal.Decimal(sum(r[1] for r in rows)) / len(rows), 2),
                      p95([r[1] for r in rows]), sum(r[2] for r in rows), sum(r[3] for r in rows))
        for (u, p), rows in expected_daily.items()}
    expected_hourly = {}
    for u, p, s, t, rq, rs in calls:
        expected_hourly.setdefault(p, []).append((s, t))
    expected_hourly = {
        (hour, p): (len(rows), sum(r[0] >= 400 for r in rows), sum(r[0] == 429 for r in rows),
                    round(decimal.Decimal(sum(r[1] for r in rows)) / len(rows), 2),
                    p95([r[1] for r in rows]))
        for p, rows in expected_hourly.items()}
    expected_gens = {
        (day, alice, "RACE", "gpt-4o", "openai"): (3, 2, 1, 305, decimal.Decimal("0.0305")),
        (day, bob, "", "", ""): (1, 0, 0, 0, decimal.Decimal("0")),
    }

    def daily():
        return {(r[0], r[1], r[2]): r[3:6] + (r[6], round(r[7], 6)) + r[8:] for r in sql(
            pg, db, "SELECT day, user_id::text, provider, requests, errors, rate_limited, "
            "avg_response_time_ms, p95_response_time_ms, request_bytes, response_bytes "
            "FROM analytics.api_usage_daily")}

    def hourly():
        return {(r[0], r[1]): r[2:5] + (r[5], round(r[6], 6)) for r in sql(
            pg, db, "SELECT hour, provider, requests, errors, rate_limited, "
            "avg_response_time_ms, p95_response_time_ms FROM analytics.api_usage_hourly_provider")}

    def generations():
        return {r[:5]: r[5:] for r in sql(
            pg, db, "SELECT day, user_id::text, framework_id, model, provider, generations, "
            "completed, failed, tokens_used, cost_usd FROM analytics.prompt_generations_daily")}

    # The rows are committed (durable acks): the next tick, at most 1 s away, must show them.
    servers.wait_for(lambda: daily() == expected_daily and hourly() == expected_hourly
                     and generations() == expected_gens, 2.5, "the views to show the events")


def test_two_daemons_on_one_database_refresh_each_view_once_per_interval_between_them(
        daemon_factory, workdir, pg, db):
    # Each its own socket and spool, one database.
    a = daemon_factory(config(workdir, pg, db, refresh_yaml(VIEWS, every_s=2)), name="refresh_a")
    b = daemon_factory(config(workdir, pg, db, refresh_yaml(VIEWS, every_s=2)), name="refresh_b")

    def attempts(d):
        views = stats(d)["refresh"]["views"]
        return {v: views[v]["refreshes"] + views[v]["skipped"] for v in VIEWS}

    def refreshes():
        sa, sb = stats(a)["refresh"]["views"], stats(b)["refresh"]["views"]
        return {v: sa[v]["refreshes"] + sb[v]["refreshes"] for v in VIEWS}

    servers.wait_for(lambda: all(n >= 1 for d in (a, b) for n in attempts(d).values()), 10,
                     "both daemons to look at every view")
    before = refreshes()
    window_s, every_s = 6.0, 2
    time.sleep(window_s)  # the observation window itself, not a wait for something to happen
    after = refreshes()
    for v in VIEWS:
        done = after[v] - before[v]
        # One daemon alone would do 3 here, two that ignored each other 6.
        assert 2 <= done <= window_s / every_s + 1, (v, done)
    for d in (a, b):
        views = stats(d)["refresh"]["views"]
        assert all(views[v]["failed"] == 0 for v in VIEWS), views
    skipped = sum(stats(d)["refresh"]["views"][v]["skipped"] for d in (a, b) for v in VIEWS)
    assert skipped >= len(VIEWS)


def test_a_never_populated_view_is_filled_first_and_refreshed_concurrently_after(
        daemon_factory, workdir, pg, db):
    sql(pg, db, "CREATE MATERIALIZED VIEW analytics.by_provider AS SELECT provider, count(*) AS n "
        "FROM public.api_usage_logs GROUP BY provider WITH NO DATA")
    sql(pg, db, "CREATE UNIQUE INDEX ON analytics.by_provider (provider)")
    sql(pg, db, "ALTER MATERIALIZED VIEW analytics.by_provider OWNER TO usaged")
    d = daemon_factory(config(workdir, pg, db, refresh_yaml(["analytics.by_provider"], 1),
                              log_level="debug"), name="first_population")
    s = wait_view(d, "analytics.by_provider", "3 refreshes", lambda s: s["refreshes"] >= 3)
    assert s["failed"] == 0 and s["last_error"] == ""
    assert sql(pg, db, "SELECT ispopulated FROM pg_matviews "
               "WHERE matviewname = 'by_provider'") == [(True,)]
    log = d.log_text()
    assert log.count("refreshed analytics.by_provider (first population)") == 1
    assert log.count("refreshed analytics.by_provider concurrently") >= 2


def test_a_failing_refresh_is_reported_and_logged_once_and_the_daemon_goes_on(
        daemon_factory, workdir, pg, db):
    daily, missing = "analytics.api_usage_daily", "analytics.no_such_view"
    user = make_users(pg, db, 1)[0]
    d = daemon_factory(config(workdir, pg, db, refresh_yaml([daily, missing], every_s=1)),
                       name="failing_refresh")
    wait_view(d, daily, "a first refresh", lambda s: s["refreshes"] >= 1)
    sql(pg, db, f"DROP MATERIALIZED VIEW {daily} CASCADE")

    for view in (daily, missing):
        s = wait_view(d, view, "3 failures", lambda s: s["failed"] >= 3)
        assert "does not exist" in s["last_error"], s
    errors = dict(sql(pg, db, "SELECT view_name, error FROM usaged.refresh_state"))
    assert "does not exist" in errors[daily] and "does not exist" in errors[missing]
    log = d.log_text()
    # Logged when the error is new, not at every attempt (a drop racing a refresh may give one
    # other error first).
    assert log.count(f"refresh {missing} failed") == 1, log
    assert 1 <= log.count(f"refresh {daily} failed") <= 2, log

    with d.client() as c:
        assert c.call("ping") is not None
        c.call("log_usage", [{"user_id": user, "provider": "openai"}], {"ack": "durable"})
    assert sql(pg, db, "SELECT count(*) FROM public.api_usage_logs") == [(1,)]


def test_sighup_adds_and_removes_views_and_changes_intervals(daemon_factory, workdir, pg, db):
    daily, hourly, gens = VIEWS
    base = config(workdir, pg, db)
    d = daemon_factory(base + refresh_yaml([daily, gens], every_s=3600))
    wait_view(d, daily, "a first refresh", lambda s: s["refreshes"] + s["skipped"] >= 1)
    write_config(d.config, (base + refresh_yaml([daily, hourly], every_s=1))
                 .replace("@SOCKET@", d.socket))
    d.signal(signal.SIGHUP)
    # Every hour before the reload; every second after it.
    s = wait_view(d, daily, "refreshes every second", lambda s: s["refreshes"] >= 3)
    assert s["every_s"] == 1
    wait_view(d, hourly, "a refresh of the added view", lambda s: s["refreshes"] >= 1)
    assert gens not in stats(d)["refresh"]["views"]


def test_sigterm_cancels_a_long_refresh_and_the_daemon_exits_at_once(
        daemon_factory, workdir, pg, db):
    sql(pg, db, "CREATE MATERIALIZED VIEW analytics.slow AS SELECT 1 AS id FROM pg_sleep(60) "
        "WITH NO DATA")
    sql(pg, db, "CREATE UNIQUE INDEX ON analytics.slow (id)")
    sql(pg, db, "ALTER MATERIALIZED VIEW analytics.slow OWNER TO usaged")
    d = daemon_factory(config(workdir, pg, db, refresh_yaml(["analytics.slow"], 60, 300)),
                       name="slow_refresh")

    def refreshing():
        return sql(pg, db, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                   "AND query LIKE 'REFRESH MATERIALIZED VIEW %slow%'")[0][0]

    servers.wait_for(lambda: refreshing() == 1, 10, "the slow refresh to run")
    started = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait_exit(timeout=10) == 0
    assert time.monotonic() - started < 3
    # The server stopped it too: it does not run on for the rest of its 60 s.
    servers.wait_for(lambda: refreshing() == 0, 5, "the refresh to be cancelled")
    assert "refresh analytics.slow: cancelled, the daemon is stopping" in d.log_text()


# ---------------------------------------------------------------------------------------------
# Maintenance

def maintenance_yaml(at="00:00", extra=""):
    return f"maintenance:\n  at: \"{at}\"\n" + extra


def wait_maintenance(d, what, condition, timeout=30):
    servers.wait_for(lambda: condition(stats(d)["maintenance"]), timeout, f"maintenance: {what}")
    return stats(d)["maintenance"]


def test_maintenance_creates_the_coming_partitions_and_applies_retention(
        daemon_factory, workdir, pg, db):
    user = make_users(pg, db, 1)[0]
    today = datetime.datetime.now(UTC).date()
    next_month = month_start(today, 1).strftime("%Y_%m")
    for table in ("api_usage_logs", "prompt_history"):
        sql(pg, db, f"DROP TABLE usaged.{table}_{next_month}")
    old = sql(pg, db, "INSERT INTO public.api_usage_logs (user_id, provider, status_code, "
              "created_at) VALUES (%s, 'openai', 200, now() - interval '400 days') "
              "RETURNING id::text", (user,))[0][0]
    recent = sql(pg, db, "INSERT INTO public.api_usage_logs (user_id, provider, status_code, "
                 "created_at) VALUES (%s, 'openai', 200, now() - interval '1 day') "
                 "RETURNING id::text", (user,))[0][0]

    # The time of day has passed (00:00 always has): a daemon that starts catches up at once.
    d = daemon_factory(config(workdir, pg, db, maintenance_yaml(
        "00:00", "  partitions_ahead: 5\n  vacuum: true\n")))
    m = wait_maintenance(d, "a finished run", lambda m: m["last_finished_ms"] > 0)
    assert (m["runs"], m["failed"], m["last_error"]) == (1, 0, ""), m
    assert m["last_run_date"] == today.isoformat()

    wanted = {month_start(today, i) for i in range(6)}
    for table in ("api_usage_logs", "prompt_history"):
        starts = {r[0] for r in sql(pg, db, "SELECT range_start FROM usaged.partitions_of(%s) "
                                    "WHERE NOT is_default", (f"public.{table}",))}
        assert wanted <= starts, (table, sorted(wanted - starts))
    ids = [r[0] for r in sql(pg, db, "SELECT id::text FROM public.api_usage_logs")]
    assert ids == [recent] and old not in ids

    (finished, result), = sql(pg, db, "SELECT finished_at, result FROM usaged.maintenance_runs "
                              "WHERE run_date = %s", (today,))
    assert finished is not None and result["ok"] is True
    created = {p["partition_name"] for p in result["create_partitions"]}
    assert f"usaged.api_usage_logs_{next_month}" in created
    assert result["retention"]["api_usage_logs"]["rows_deleted"] == 1
    assert result["analyze"]["tables"] > 0
    assert "ms" in result["vacuum_api_usage_logs"] and "ms" in result["vacuum_prompt_history"]


def test_maintenance_runs_once_a_day_between_daemons(daemon_factory, workdir, pg, db):
    cfg = lambda: config(workdir, pg, db, maintenance_yaml("00:00", "  vacuum: false\n"))
    a = daemon_factory(cfg(), name="maint_a")
    wait_maintenance(a, "a finished run", lambda m: m["last_finished_ms"] > 0)
    b = daemon_factory(cfg(), name="maint_b")
    m = wait_maintenance(b, "the day found claimed", lambda m: m["claimed_elsewhere"] == 1)
    assert m["runs"] == 0 and not m["running"]
    assert sql(pg, db, "SELECT count(*) FROM usaged.maintenance_runs") == [(1,)]


def test_a_maintenance_run_cut_short_is_run_again_the_same_day(daemon_factory, workdir, pg, db):
    # What a daemon killed mid-run leaves: the day claimed, one step recorded, no finished_at,
    # and no session holding the run's lock any more.
    today = datetime.datetime.now(UTC).date()
    sql(pg, db, "INSERT INTO usaged.maintenance_runs (run_date, started_at, result) VALUES "
        "(%s, now() - interval '1 hour', '{\"create_partitions\": []}')", (today,))
    d = daemon_factory(config(workdir, pg, db, maintenance_yaml("00:00", "  vacuum: false\n")))
    m = wait_maintenance(d, "a finished run", lambda m: m["last_finished_ms"] > 0)
    assert (m["runs"], m["claimed_elsewhere"], m["failed"]) == (1, 0, 0), m
    (finished, result), = sql(pg, db, "SELECT finished_at, result FROM usaged.maintenance_runs "
                              "WHERE run_date = %s", (today,))
    assert finished is not None and result["ok"] is True
    assert result["resumed_after"] == {"create_partitions": []}
    assert "daily_maintenance" in result and "analyze" in result


def test_a_maintenance_run_under_way_elsewhere_is_left_to_its_daemon(
        daemon_factory, workdir, pg, db):
    import psycopg2
    today = datetime.datetime.now(UTC).date()
    sql(pg, db, "INSERT INTO usaged.maintenance_runs (run_date, started_at) VALUES (%s, now())",
        (today,))
    # Another daemon's run: its session holds the lock.
    other = psycopg2.connect(pg.dsn(db))
    other.autocommit = True
    try:
        with other.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(hashtext('usaged maintenance'))")
        d = daemon_factory(config(workdir, pg, db, maintenance_yaml("00:00", "  vacuum: false\n")))
        m = wait_maintenance(d, "the day found claimed", lambda m: m["claimed_elsewhere"] == 1)
        assert m["runs"] == 0 and not m["running"]
        assert sql(pg, db, "SELECT finished_at, result FROM usaged.maintenance_runs "
                   "WHERE run_date = %s", (today,)) == [(None, None)]
    finally:
        other.close()
