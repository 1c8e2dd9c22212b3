"""Alerts end to end (PROTOCOL.md, "Shadow rules and alerts"): a rule with alert_at_percent writes
one public.usage_alerts row and one NOTIFY usaged_alerts per user, rule and window when a charge
first takes the use to that share: exactly once when two daemons cross it together; kept while
PostgreSQL is away and written when it is back; users read their own alerts."""

import datetime
import json
import os
import select
import threading
import uuid

import psycopg2
import pytest
import redis as redis_py

from conftest import make_users, sql
from test_budgets import rule_of, start_with, today_with_time_left
from test_limits import add_provider
import servers

@pytest.fixture
def alerts_db(pg, db):
    """The migrated database (0018 made usage_alerts)."""
    assert sql(pg, db, "SELECT to_regclass('public.usage_alerts')")[0][0]
    return db


def add_alert_rule(pg, db, dimension, period, amount, percent, provider=None, user=None):
    sql(pg, db, "INSERT INTO public.usage_limits (user_id, provider, dimension, period, amount, "
        "alert_at_percent) VALUES (%s, %s, %s, %s, %s, %s)",
        (user, provider, dimension, period, amount, percent))


def rows(pg, db, user):
    return sql(pg, db, "SELECT provider, model, dimension, period, window_start, amount, used, "
               "alert_at_percent, shadow FROM public.usage_alerts WHERE user_id = %s", (user,))


def listener(pg, db):
    conn = psycopg2.connect(pg.dsn(db))
    conn.autocommit = True
    conn.cursor().execute("LISTEN usaged_alerts")
    return conn


def notifications(conn):
    """The notifications delivered so far (a row is committed with its NOTIFY: once the row is
    seen, its notification is in the listener's socket)."""
    if select.select([conn], [], [], 1)[0]:
        conn.poll()
    out = [json.loads(n.payload) for n in conn.notifies]
    conn.notifies.clear()
    return out


def test_an_alert_is_written_and_notified_once_when_two_daemons_cross_together(
        daemon_factory, workdir, pg, alerts_db, redis_server):
    db = alerts_db
    add_provider(pg, db, "alp")
    add_alert_rule(pg, db, "tokens", "day", 1000, 50, provider="alp")
    user = str(uuid.uuid4())
    listen = listener(pg, db)
    daemons = [start_with(daemon_factory, workdir, pg, db, redis_server, name=f"a{i}")
               for i in range(2)]
    barrier = threading.Barrier(8)

    def worker(d):
        with d.client() as c:
            barrier.wait()
            for _ in range(2):
                c.call("check", {"user_id": user, "provider": "alp", "tokens": 70})

    threads = [threading.Thread(target=worker, args=(daemons[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 16 checks of 70 tokens: the use passes 500 once; whichever check did it raised the alert.
    servers.wait_for(lambda: len(rows(pg, db, user)) == 1, 20, "the alert's row")
    (provider, model, dimension, period, start, amount, used, percent, shadow), = rows(pg, db, user)
    assert (provider, model, dimension, period, percent, shadow) == \
        ("alp", None, "tokens", "day", 50, False)
    assert amount == 1000 and 500 <= used < 570
    today = datetime.datetime.now(datetime.timezone.utc).replace(hour=0, minute=0, second=0,
                                                                 microsecond=0)
    assert abs((start - today).total_seconds()) <= 86400
    assert start.hour == start.minute == start.second == 0
    sent = notifications(listen)
    assert len(sent) == 1
    assert sent[0]["user_id"] == user and sent[0]["provider"] == "alp"
    assert sent[0]["period"] == "day" and float(sent[0]["used"]) == float(used)
    def stats():
        return [d.client().call("stats")["limits"] for d in daemons]

    # The row commits before the daemon reads PostgreSQL's answer: wait for it to count it.
    servers.wait_for(lambda: sum(s["alerts_written"] for s in stats()) == 1, 10,
                     "the write to be counted")
    assert sum(s["alerts_raised"] for s in stats()) == 1
    # More use in the same window raises nothing more.
    with daemons[0].client() as c:
        for _ in range(3):
            c.call("check", {"user_id": user, "provider": "alp", "tokens": 70})
    assert sum(d.client().call("stats")["limits"]["alerts_raised"] for d in daemons) == 1
    assert len(rows(pg, db, user)) == 1 and notifications(listen) == []
    listen.close()


def test_users_read_their_own_alerts_only(daemon_factory, workdir, pg, alerts_db, redis_server):
    db = alerts_db
    add_provider(pg, db, "alr")
    alice, bob = make_users(pg, db, 2)
    add_alert_rule(pg, db, "requests", "hour", 2, 100, provider="alr")
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    with d.client() as c:
        for user in (alice, bob):
            for _ in range(2):
                assert c.call("check", {"user_id": user, "provider": "alr"})["allowed"]
    servers.wait_for(lambda: len(rows(pg, db, alice)) == 1 and len(rows(pg, db, bob)) == 1, 20,
                     "both users' alerts")
    conn = psycopg2.connect(pg.dsn(db))
    try:
        with conn.cursor() as cur:
            cur.execute("SET ROLE authenticated")
            cur.execute("SELECT set_config('request.jwt.claims', %s, false)",
                        (json.dumps({"sub": alice, "role": "authenticated"}),))
            cur.execute("SELECT user_id::text FROM public.usage_alerts")
            assert cur.fetchall() == [(alice,)]
            cur.execute("RESET ROLE")
            cur.execute("SET ROLE anon")
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute("SELECT * FROM public.usage_alerts")
    finally:
        conn.close()


def test_an_alert_waits_while_postgres_is_away_and_is_written_when_it_is_back(
        daemon_factory, workdir, pg, alerts_db, redis_server):
    db = alerts_db
    add_provider(pg, db, "alw")
    add_alert_rule(pg, db, "requests", "day", 10, 30, provider="alw")
    user = str(uuid.uuid4())
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    pg.stop()
    try:
        with d.client() as c:
            for _ in range(4):
                assert c.call("check", {"user_id": user, "provider": "alw"})["allowed"]
            stats = c.call("stats")["limits"]
        assert stats["alerts_raised"] == 1
        # It cannot be written: it waits on disk (fsync'd), not in memory.
        servers.wait_for(lambda: d.client().call("stats")["limits"]["alerts_on_disk"] == 1, 10,
                         "the alert to be spooled")
        stats = d.client().call("stats")["limits"]
        assert (stats["alerts_spooled"], stats["alerts_waiting"]) == (1, 0)
    finally:
        pg.start()
    servers.wait_for(lambda: len(sql(pg, db, "SELECT 1 FROM public.usage_alerts WHERE user_id "
                                     "= %s", (user,))) == 1, 30, "the alert to be written")
    servers.wait_for(lambda: d.client().call("stats")["limits"]["alerts_on_disk"] == 0, 10,
                     "the file to empty")
    stats = d.client().call("stats")["limits"]
    assert (stats["alerts_written"], stats["alerts_waiting"], stats["alerts_dropped"]) == (1, 0, 0)
    (_, _, _, _, _, amount, used, percent, _), = rows(pg, db, user)
    assert (amount, used, percent) == (10, 3, 30)


def test_a_shadow_row_may_watch_exactly_an_enforced_rows_pattern_and_alerts_on_its_own(
        daemon_factory, workdir, pg, alerts_db, redis_server):
    db = alerts_db
    add_provider(pg, db, "als")
    sql(pg, db, "INSERT INTO public.usage_limits (provider, dimension, period, amount, shadow, "
        "alert_at_percent) VALUES ('als', 'requests', 'day', 10, false, NULL), "
        "('als', 'requests', 'day', 2, true, 100)")
    user = str(uuid.uuid4())
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    with d.client() as c:
        answers = [c.call("check", {"user_id": user, "provider": "als"}) for _ in range(3)]
    assert all(a["allowed"] for a in answers)
    assert answers[2]["shadow_denied_by"]["limit"] == 2
    servers.wait_for(lambda: len(rows(pg, db, user)) == 1, 20, "the shadow rule's alert")
    (_, _, _, _, _, amount, used, percent, shadow), = rows(pg, db, user)
    assert (amount, used, percent, shadow) == (2, 2, 100, True)


def test_alerts_are_raised_under_the_local_fallback_and_written_once_across_daemons(
        daemon_factory, workdir, pg, alerts_db, redis_server):
    db = alerts_db
    add_provider(pg, db, "alx")
    add_alert_rule(pg, db, "requests", "day", 10, 30, provider="alx")
    user = str(uuid.uuid4())
    listen = listener(pg, db)
    daemons = [start_with(daemon_factory, workdir, pg, db, redis_server, name=f"x{i}",
                          limits="  on_redis_error: local\n") for i in range(2)]
    redis_server.stop()
    try:
        # Each daemon counts on its own while Redis is away: each crosses 30% of 10 at its
        # third check, and raises the alert (once: the fourth raises nothing).
        for d in daemons:
            with d.client() as c:
                answers = [c.call("check", {"user_id": user, "provider": "alx"}) for _ in range(4)]
            assert all(a["allowed"] and a["degraded"] for a in answers)
        stats = [d.client().call("stats")["limits"] for d in daemons]
        assert [s["alerts_raised"] for s in stats] == [1, 1]
        # The row's id is the same from both: one row, one notification.
        servers.wait_for(lambda: sum(d.client().call("stats")["limits"]["alerts_written"] +
                                     d.client().call("stats")["limits"]["alerts_duplicate"]
                                     for d in daemons) == 2, 20, "both daemons' writes")
    finally:
        redis_server.start()
    (provider, _, dimension, period, _, amount, used, percent, shadow), = rows(pg, db, user)
    assert (provider, dimension, period, amount, used, percent, shadow) == \
        ("alx", "requests", "day", 10, 3, 30, False)
    stats = [d.client().call("stats")["limits"] for d in daemons]
    assert sorted((s["alerts_written"], s["alerts_duplicate"]) for s in stats) == [(0, 1), (1, 0)]
    assert len(notifications(listen)) == 1
    listen.close()


def spool_file(d):
    """The daemon's file of alerts waiting on disk (alerts_file.h)."""
    with open(d.config) as f:
        spool = [line.split(":", 1)[1].strip().strip('"') for line in f
                 if line.strip().startswith("dir:")][0]
    return os.path.join(spool, "alerts", "pending")


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_alerts_raised_while_postgres_is_away_survive_a_restart_and_are_written_once(
        daemon_factory, workdir, pg, alerts_db, redis_server, stop):
    """PostgreSQL stopped, alerts raised, the daemon stopped (SIGTERM; or SIGKILL once they are
    spooled) and started again, PostgreSQL back: each row exists exactly once and its NOTIFY was
    sent once."""
    db = alerts_db
    add_provider(pg, db, "alk" + stop[3:])
    add_alert_rule(pg, db, "requests", "day", 4, 50, provider="alk" + stop[3:])
    users = [str(uuid.uuid4()) for _ in range(5)]
    d = start_with(daemon_factory, workdir, pg, db, redis_server, name="k")
    pg.stop()
    try:
        with d.client() as c:
            for user in users:
                for _ in range(3):
                    assert c.call("check", {"user_id": user, "provider": "alk" + stop[3:]})[
                        "allowed"]
        assert d.client().call("stats")["limits"]["alerts_raised"] == len(users)
        if stop == "sigkill":
            servers.wait_for(lambda: d.client().call("stats")["limits"]["alerts_spooled"] ==
                             len(users), 10, "the alerts to be spooled")
            d.kill()
        else:
            assert d.stop() == 0
        assert os.path.getsize(spool_file(d)) > 0
        d.start(wait=True)  # the same config and spool; PostgreSQL still away
        assert d.client().call("stats")["limits"]["alerts_on_disk"] == len(users)
        assert d.stop() == 0  # again, so that the listener below is up before any write
    finally:
        pg.start()
    listen = listener(pg, db)
    d.start(wait=True)
    servers.wait_for(lambda: d.client().call("stats")["limits"]["alerts_on_disk"] == 0, 30,
                     "the alerts on disk to be written")
    got = sql(pg, db, "SELECT user_id::text FROM public.usage_alerts WHERE user_id = ANY(%s::uuid[])",
              (users,))
    assert sorted(u for u, in got) == sorted(users)
    sent = notifications(listen)
    assert sorted(n["user_id"] for n in sent) == sorted(users)
    # Emptied once written; a later start finds nothing to replay.
    servers.wait_for(lambda: os.path.getsize(spool_file(d)) == 0, 10, "the file to be emptied")
    stats = d.client().call("stats")["limits"]
    assert (stats["alerts_written"], stats["alerts_dropped"]) == (len(users), 0)
    listen.close()


def test_a_damaged_file_of_alerts_is_skipped_counted_and_emptied(
        daemon_factory, workdir, pg, alerts_db, redis_server):
    d = start_with(daemon_factory, workdir, pg, alerts_db, redis_server, name="damaged")
    assert d.stop() == 0
    path = spool_file(d)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"\xff" * 464 + b"\x01" * 100)  # one damaged record, and a torn one after it
    d.start(wait=True)
    servers.wait_for(lambda: d.client().call("stats")["limits"]["alerts_corrupt"] == 1, 20,
                     "the damaged record to be skipped")
    servers.wait_for(lambda: os.path.getsize(path) == 0, 20, "the file to be emptied")
    stats = d.client().call("stats")["limits"]
    assert (stats["alerts_on_disk"], stats["alerts_written"], stats["alerts_dropped"]) == (0, 0, 0)


def test_a_settle_whose_extra_charge_crosses_the_share_alerts_once(
        daemon_factory, workdir, pg, alerts_db, redis_server):
    # The checks estimate 100 tokens of 1,000 a day (alert at 80%): none crosses 800. The first
    # settle reports 850 used: its extra charge crosses the share and raises the alert; a second
    # settle's extra charge in the same day raises nothing more.
    db = alerts_db
    add_provider(pg, db, "alsettle")
    add_alert_rule(pg, db, "tokens", "day", 1000, 80, provider="alsettle")
    user = str(uuid.uuid4())
    listen = listener(pg, db)
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    with d.client() as c:
        first, second = (c.call("check", {"user_id": user, "provider": "alsettle",
                                            "tokens": 100}) for _ in range(2))
        assert first["allowed"] and second["allowed"]
        assert c.call("stats")["limits"]["alerts_raised"] == 0
        assert c.call("settle", {"reservation": first["reservation"], "tokens": 850})["settled"]
        servers.wait_for(lambda: len(rows(pg, db, user)) == 1, 20, "the settle's alert")
        (provider, model, dimension, period, _, amount, used, percent, shadow), = \
            rows(pg, db, user)
        assert (provider, model, dimension, period, amount, used, percent, shadow) == \
            ("alsettle", None, "tokens", "day", 1000, 950, 80, False)
        sent = notifications(listen)
        assert len(sent) == 1 and sent[0]["user_id"] == user
        assert c.call("settle", {"reservation": second["reservation"], "tokens": 120})["settled"]
        peek = c.call("check", {"user_id": user, "provider": "alsettle", "cost": 0})
        assert [r["used"] for r in peek["limits"] if r["dimension"] == "tokens"] == [970]
        assert c.call("stats")["limits"]["alerts_raised"] == 1
    assert len(rows(pg, db, user)) == 1 and notifications(listen) == []
    listen.close()


def test_an_alert_marker_of_the_wm_layout_does_not_stop_the_first_alert_after_the_upgrade(
        daemon_factory, workdir, pg, alerts_db, redis_server):
    # The wm layout (operations.md, the upgrade) kept a scope's window ids in 'wd', ... and an
    # alert marker holding the id of the window it alerted in ('atd'), never deleted; its hash
    # has no field 'd'. Yesterday's marker must not stop today's alert.
    db = alerts_db
    add_provider(pg, db, "upg")
    add_alert_rule(pg, db, "tokens", "day", 1000, 50, provider="upg")
    user = str(uuid.uuid4())
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    today = today_with_time_left(redis_server, 20)
    r = redis_py.Redis(unix_socket_path=redis_server.sock)
    key = f"usaged:{{{user}}}:p:upg"
    r.hset(key, mapping={"wd": today - 1, "td": 900, "atd": today - 1})
    r.expire(key, 3600)
    with d.client() as c:
        a = c.call("check", {"user_id": user, "provider": "upg", "tokens": 600})
        assert a["allowed"]
        assert rule_of(a, "tokens", "day")["used"] == 600
        assert c.call("stats")["limits"]["alerts_raised"] == 1
    fields = r.hgetall(key)
    r.close()
    assert b"wd" not in fields and b"td" not in fields, fields
    servers.wait_for(lambda: len(rows(pg, db, user)) == 1, 10, "today's alert row")
