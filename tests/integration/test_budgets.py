"""Budgets end to end (PROTOCOL.md, "Protocol 1, additions: budgets"): tokens and spend rules from
public.usage_limits and the config, exact across two daemons sharing one Redis; reservations and
settle in all its cases; log_prompt settling; hour and month windows; precedence; live changes;
the local fallback; bad input.

Windows that end in an hour or a month cannot be waited for. The tests that need a window's end
seed the scope's hash (the layout PROTOCOL.md fixes: one hash per user and scope, holding each
window's id and counts) with the counts of the window just before the current one, as a window
that has ended leaves them, and with the current window's id when they need a full one; the ids
are computed from the Redis server's own TIME, as the script computes them."""

import calendar
import datetime
import signal
import threading
import uuid

import msgpack
import psycopg2.errors
import pytest
import redis as redis_py

from conftest import make_users, sql
from test_limits import add_provider, check, pipelined_checks, start, wait_for_fresh_minute
from usaged_client import RpcError
import servers


def add_rule(pg, db, dimension, period, amount, provider=None, model=None, user=None):
    add_rules(pg, db, [(dimension, period, amount, provider, model, user)])


def add_rules(pg, db, rules):
    """Inserts (dimension, period, amount, provider, model, user) rows in one statement: one
    NOTIFY, one reload."""
    values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(rules))
    args = [x for d, p, a, prov, m, u in rules for x in (u, prov, m, d, p, a)]
    sql(pg, db, "INSERT INTO public.usage_limits (user_id, provider, model, dimension, period, "
        "amount) VALUES " + values, args)


def loads(d):
    with d.client() as c:
        return c.call("stats")["limits"]["limits_loads"]


def start_with(daemon_factory, workdir, pg, db, redis_server, limits="", name=None):
    return start(daemon_factory, workdir, pg, db, redis_server,
                 limits="  log_denied: false\n" + limits, name=name)


def rule_of(answer, dimension, window):
    found = [r for r in answer["limits"] if r["dimension"] == dimension and
             r["window"] == window]
    assert len(found) == 1, answer["limits"]
    return found[0]


def with_float32(c, method, params):
    """(error, result) of a request whose floats go as MessagePack float32."""
    c.send_raw(msgpack.packb([0, 9000, method, params], use_single_float=True))
    return c.wait(9000)


def redis_now(redis_server):
    r = redis_py.Redis(unix_socket_path=redis_server.sock)
    sec, usec = r.time()
    r.close()
    return sec, usec


def window_with_time_left(redis_server, span, seconds):
    """Waits until Redis's current window of span seconds (3600: an hour, 86400: a day) has more
    than `seconds` left (a test must not straddle its end: in its last `seconds`, that is the
    next window); returns the window's id. The longer windows it lies in have as long left."""
    servers.wait_for(lambda: span - redis_now(redis_server)[0] % span > seconds, seconds + 30,
                     f"a window of {span} s with {seconds} s left")
    return redis_now(redis_server)[0] // span


def today_with_time_left(redis_server, seconds):
    return window_with_time_left(redis_server, 86400, seconds)


def assert_expires_a_minute_after(r, key, left):
    """The hash key outlives a window with `left` seconds left now by a minute (a second's give
    either way)."""
    assert left + 58 <= r.ttl(key) <= left + 61


def assert_expires_a_minute_after_the_day(r, key, redis_server):
    assert_expires_a_minute_after(r, key, 86400 - redis_now(redis_server)[0] % 86400)


def seconds_to_month_end(sec):
    """From Unix time sec to the start of the next month, UTC."""
    t = datetime.datetime.fromtimestamp(sec, datetime.timezone.utc)
    first_next = datetime.datetime(t.year + (t.month == 12), t.month % 12 + 1, 1,
                                   tzinfo=datetime.timezone.utc)
    return calendar.timegm(first_next.timetuple()) - sec


def month_id(sec):
    t = datetime.datetime.fromtimestamp(sec, datetime.timezone.utc)
    return t.year * 12 + t.month - 1


def test_a_tokens_rule_is_exact_across_two_daemons_under_concurrency(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "tok", per_minute=100000, per_day=100000)
    add_rule(pg, db, "tokens", "day", 1000, provider="tok")
    user = str(uuid.uuid4())
    daemons = [start_with(daemon_factory, workdir, pg, db, redis_server, name=f"t{i}")
               for i in range(2)]
    allowed = []
    lock = threading.Lock()

    def worker(d):
        with d.client() as c:
            for _ in range(30):
                a = c.call("check", {"user_id": user, "provider": "tok", "tokens": 30})
                with lock:
                    allowed.append(a["allowed"])

    threads = [threading.Thread(target=worker, args=(d,)) for d in daemons for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 180 checks of 30 tokens against 1000: exactly 33 fit, whichever daemon answered.
    assert allowed.count(True) == 33
    with daemons[0].client() as c:
        peek = c.call("check", {"user_id": user, "provider": "tok", "cost": 0})
    tokens = rule_of(peek, "tokens", "day")
    assert (tokens["used"], tokens["remaining"], tokens["limit"]) == (990, 10, 1000)
    assert tokens["scope"] == "provider"


def test_a_spend_rule_is_exact_to_the_micro_dollar_across_two_daemons(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "usd")
    add_rule(pg, db, "spend", "month", "10.00", provider="usd")
    user = str(uuid.uuid4())
    daemons = [start_with(daemon_factory, workdir, pg, db, redis_server, name=f"s{i}")
               for i in range(2)]
    answers = []
    lock = threading.Lock()

    def worker(d, spend):
        with d.client() as c:
            for _ in range(20):
                a = c.call("check", {"user_id": user, "provider": "usd", "spend": spend})
                with lock:
                    answers.append(a)

    # "0.35" as a string and 0.35 as a float are the same amount.
    threads = [threading.Thread(target=worker, args=(d, s)) for d in daemons
               for s in ("0.35", 0.35)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(a["allowed"] for a in answers) == 28  # 28 x 0.35 = 9.80; a 29th is 10.15
    denied = [a for a in answers if not a["allowed"]]
    assert all(a["reason"] == "month_limit" for a in denied)
    assert all(a["denied_by"]["dimension"] == "spend" for a in denied)
    assert all(a["denied_by"]["limit"] == "10.000000" for a in denied)
    assert all(a["reservation"] is None for a in denied)
    with daemons[1].client() as c:
        peek = c.call("check", {"user_id": user, "provider": "usd", "cost": 0})
    spend = rule_of(peek, "spend", "month")
    assert (spend["used"], spend["remaining"]) == ("9.800000", "0.200000")


def test_a_spend_sent_as_a_float32_is_read_as_that_float_s_shortest_decimal(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "f32")
    add_rule(pg, db, "spend", "day", "10", provider="f32")
    user = str(uuid.uuid4())
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    with d.client() as c:
        # 0.35 as a float32 is 0.3499999940395355 as a double: 16 places, were it read so.
        err, a = with_float32(c, "check", [{"user_id": user, "provider": "f32", "spend": 0.35}])
        assert err is None and a["allowed"]
        assert rule_of(a, "spend", "day")["used"] == "0.350000"
        err, _ = with_float32(c, "check", [{"user_id": user, "provider": "f32",
                                            "spend": 0.0000001}])
        assert (err["code"], err["field"]) == ("invalid_field", "spend")


def test_settle_gives_back_charges_more_cancels_and_is_applied_once(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "settle", per_minute=1000, per_day=1000)
    add_rule(pg, db, "tokens", "day", 1000, provider="settle")
    user = str(uuid.uuid4())
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    wait_for_fresh_minute(redis_server)

    def tokens_used(c):
        peek = c.call("check", {"user_id": user, "provider": "settle", "cost": 0})
        return rule_of(peek, "tokens", "day")["used"], rule_of(peek, "requests", "day")["used"]

    with d.client() as c:
        a = c.call("check", {"user_id": user, "provider": "settle", "tokens": 500})
        assert a["allowed"] and a["reservation"]
        assert tokens_used(c) == (500, 1)
        # The call used less: the difference comes back.
        assert c.call("settle", {"reservation": a["reservation"], "tokens": 120}) == \
            {"settled": True, "duplicate": False}
        assert tokens_used(c) == (120, 1)
        # Again: a duplicate, nothing changes.
        assert c.call("settle", {"reservation": a["reservation"], "tokens": 999}) == \
            {"settled": True, "duplicate": True}
        assert tokens_used(c) == (120, 1)
        # The call used more than estimated, even past the limit: charged, never refused.
        b = c.call("check", {"user_id": user, "provider": "settle", "tokens": 800})
        assert b["allowed"]
        c.call("settle", {"reservation": b["reservation"], "tokens": 1500})
        assert tokens_used(c) == (1620, 2)
        denied = c.call("check", {"user_id": user, "provider": "settle", "tokens": 0})
        assert not denied["allowed"] and denied["reason"] == "day_limit"
        assert rule_of(denied, "tokens", "day")["remaining"] == 0
        # A cancel gives back all the check took, its request included.
        sql(pg, db, "UPDATE public.usage_limits SET amount = 100000")
        servers.wait_for(lambda: rule_of(c.call("check", {
            "user_id": user, "provider": "settle", "cost": 0}), "tokens", "day")["limit"] ==
            100000, 10, "the new limit")
        e = c.call("check", {"user_id": user, "provider": "settle", "cost": 3, "tokens": 70})
        assert tokens_used(c) == (1690, 5)
        assert c.call("settle", {"reservation": e["reservation"], "cancel": True})["settled"]
        assert tokens_used(c) == (1620, 2)
        # Never issued: unknown_reservation.
        never = user + ".0123456789abcdef"
        assert c.call_err("settle", [{"reservation": never}])["code"] == "unknown_reservation"
        s = c.call("stats")["limits"]
        assert s["settles"] == 3 and s["settles_duplicate"] == 1 and s["settles_unknown"] == 1


def test_a_call_estimated_at_0_settles_its_use_into_a_window_its_hash_has_not_begun(
        daemon_factory, workdir, pg, db, redis_server):
    # Spend is known only after the call: the app sends no estimate, so the check charges the
    # month's spend 0 and its hash notes no month. The settle must still count the spend this
    # month, in a hash that then expires when the month does, and in a scope no other rule
    # writes (the every-provider one) too.
    add_provider(pg, db, "after", per_minute=1000, per_day=1000)
    add_rules(pg, db, [("spend", "month", "10", "after", None, None),
                       ("tokens", "hour", 100000, None, None, None)])
    user = str(uuid.uuid4())
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    window_with_time_left(redis_server, 3600, 60)

    def used(c):
        peek = c.call("check", {"user_id": user, "provider": "after", "cost": 0})
        return rule_of(peek, "spend", "month")["used"], rule_of(peek, "tokens", "hour")["used"]

    r = redis_py.Redis(unix_socket_path=redis_server.sock)
    with d.client() as c:
        a = c.call("check", {"user_id": user, "provider": "after"})
        assert a["allowed"] and a["reservation"]
        assert used(c) == ("0.000000", 0)
        assert c.call("settle", {"reservation": a["reservation"], "spend": "2.5",
                                 "tokens": 1200})["settled"]
        assert used(c) == ("2.500000", 1200)
        b = c.call("check", {"user_id": user, "provider": "after", "spend": "8"})
        assert not b["allowed"] and b["reason"] == "month_limit"
    sec = redis_now(redis_server)[0]
    assert_expires_a_minute_after(r, f"usaged:{{{user}}}:p:after", seconds_to_month_end(sec))
    assert_expires_a_minute_after(r, f"usaged:{{{user}}}:a", 3600 - sec % 3600)
    r.close()


def test_a_reservation_past_its_ttl_is_unknown_and_keeps_its_estimate(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "ttl")
    add_rule(pg, db, "tokens", "day", 1000, provider="ttl")
    user = str(uuid.uuid4())
    d = start_with(daemon_factory, workdir, pg, db, redis_server, "  reservation_ttl_s: 1\n")
    r = redis_py.Redis(unix_socket_path=redis_server.sock)
    with d.client() as c:
        a = c.call("check", {"user_id": user, "provider": "ttl", "tokens": 400})
        rid = a["reservation"].split(".")[1]
        servers.wait_for(lambda: not r.exists(f"usaged:{{{user}}}:r:{rid}"), 10,
                         "the reservation to expire")
        err = c.call_err("settle", [{"reservation": a["reservation"], "tokens": 1}])
        assert err["code"] == "unknown_reservation"
        peek = c.call("check", {"user_id": user, "provider": "ttl", "cost": 0})
        assert rule_of(peek, "tokens", "day")["used"] == 400
    r.close()


def test_log_prompt_settles_its_reservation_and_retries_while_redis_is_away(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "lp")
    add_rule(pg, db, "tokens", "day", 100000, provider="lp")
    add_rule(pg, db, "spend", "day", "50", provider="lp")
    user = make_users(pg, db, 1)[0]
    d = start_with(daemon_factory, workdir, pg, db, redis_server)

    def used(c):
        peek = c.call("check", {"user_id": user, "provider": "lp", "cost": 0})
        return rule_of(peek, "tokens", "day")["used"], rule_of(peek, "spend", "day")["used"]

    def prompt(reservation, **fields):
        ev = {"user_id": user, "provider": "lp", "status": "completed",
              "reservation": reservation}
        ev.update(fields)
        return ev

    with d.client() as c:
        a = c.call("check", {"user_id": user, "provider": "lp", "tokens": 1000, "spend": "2"})
        b = c.call("check", {"user_id": user, "provider": "lp", "tokens": 500, "spend": "1"})
        assert used(c) == (1500, "3.000000")
        assert c.call("log_prompt", [prompt(a["reservation"], tokens_used=321,
                                           cost_usd=0.0123)]) == {"accepted": 1}
        servers.wait_for(lambda: used(c) == (821, "1.012300"), 10, "the settle")
        # A cancelled call gives its charges back.
        c.call("log_prompt", [prompt(b["reservation"], status="cancelled")])
        servers.wait_for(lambda: used(c) == (321, "0.012300"), 10, "the cancel")
        # The events landed without their reservation (prompt_history has no such column).
        servers.wait_for(lambda: sql(pg, db, "SELECT count(*) FROM public.prompt_history")[0][0]
                         == 2, 10, "the rows")
        e = c.call("check", {"user_id": user, "provider": "lp", "tokens": 1000})
        # Redis goes away and comes back with its data (the test servers keep none across a
        # restart unless told: SAVE writes the file the restart loads).
        r = redis_py.Redis(unix_socket_path=redis_server.sock)
        r.save()
        r.close()
        redis_server.stop()
        try:
            assert c.call("log_prompt", [prompt(e["reservation"], tokens_used=10)]) == \
                {"accepted": 1}
            servers.wait_for(lambda: c.call("stats")["limits"]["settles_waiting"] == 1, 10,
                             "the settle to wait")
        finally:
            redis_server.start()
        servers.wait_for(lambda: c.call("stats")["limits"]["settles_waiting"] == 0, 20,
                         "the settle to go out")
        servers.wait_for(lambda: used(c)[0] == 331, 10, "the late settle")
        assert c.call("stats")["limits"]["settles_queued"] >= 1


def test_a_log_prompt_cost_sent_as_a_float32_settles_that_float_s_decimal(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "lpf32")
    add_rule(pg, db, "spend", "day", "10", provider="lpf32")
    user = make_users(pg, db, 1)[0]
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    with d.client() as c:
        resv = c.call("check", {"user_id": user, "provider": "lpf32", "spend": "2"})["reservation"]
        event = {"user_id": user, "status": "completed", "cost_usd": 0.1, "reservation": resv}
        assert with_float32(c, "log_prompt", [[event]]) == (None, {"accepted": 1})
        servers.wait_for(lambda: c.call("stats")["limits"]["settles"] >= 1, 10, "the settle")
        peek = c.call("check", {"user_id": user, "provider": "lpf32", "cost": 0})
    assert rule_of(peek, "spend", "day")["used"] == "0.100000"


def test_a_malformed_reservation_in_log_prompt_refuses_the_request(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "lpbad")
    user = make_users(pg, db, 1)[0]
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    good = {"user_id": user, "status": "completed"}
    with d.client() as c:
        err = c.call_err("log_prompt", [[good, dict(good, reservation="not-a-reservation")]])
        assert (err["code"], err["field"], err["index"]) == ("invalid_field", "reservation", 1)
        err = c.call_err("log_prompt", [[dict(good, reservation=7)]])
        assert (err["code"], err["field"]) == ("invalid_field", "reservation")
        # The key given twice (MessagePack allows it; a dict cannot hold it).
        rid = str(uuid.uuid4()) + ".0123456789abcdef"
        pairs = list(good.items()) + [("reservation", rid), ("reservation", rid)]
        event = msgpack.Packer().pack_map_pairs(pairs)
        c.send_raw(b"\x94\x00\x09\xaalog_prompt\x91\x91" + event)
        err, _ = c.wait(9)
        assert (err["code"], err["field"], err["index"]) == ("invalid_field", "reservation", 0)
        assert "twice" in err["message"]
        # The events of those refusals are counted as received and rejected (2 + 1 + 1).
        ingest = c.call("stats")["ingest"]
        assert (ingest["events_received"], ingest["events_rejected"]["invalid_field"]) == (4, 4)
        # A valid request after them: once its row has landed, theirs would have too.
        assert c.call("log_prompt", [dict(good, framework_name="after")]) == {"accepted": 1}
    servers.wait_for(lambda: sql(pg, db, "SELECT count(*) FROM public.prompt_history")[0][0] >= 1,
                     10, "the valid row")
    assert sql(pg, db, "SELECT framework_name FROM public.prompt_history") == [("after",)]


def test_a_peek_writes_nothing_to_redis_and_reads_a_window_moved_on_as_0(
        daemon_factory, workdir, pg, db, redis_server):
    # Peeks (check with cost 0, usage) may name any user: they must not leave keys behind. A
    # user whose hash holds a day that has ended reads 0 there, and the hash is left as it was.
    add_provider(pg, db, "peek", per_minute=10, per_day=100)
    add_rule(pg, db, "tokens", "day", 1000, provider="peek")
    fresh, old = str(uuid.uuid4()), str(uuid.uuid4())
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    r = redis_py.Redis(unix_socket_path=redis_server.sock)
    today = today_with_time_left(redis_server, 20)
    stale = {b"d": str(today - 1).encode(), f"td:{today - 1}".encode(): b"900",
             f"rd:{today - 1}".encode(): b"90"}
    r.hset(f"usaged:{{{old}}}:p:peek", mapping=stale)
    with d.client() as c:
        for user in (fresh, old):
            a = c.call("check", {"user_id": user, "provider": "peek", "cost": 0})
            assert a["allowed"]
            assert rule_of(a, "tokens", "day")["used"] == 0
            assert rule_of(a, "requests", "day")["used"] == 0
    assert list(r.scan_iter(f"usaged:{{{fresh}}}*")) == []
    assert r.hgetall(f"usaged:{{{old}}}:p:peek") == stale
    r.close()


def test_the_hour_and_month_windows_restart_when_redis_time_enters_a_new_one(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "win")
    add_rule(pg, db, "tokens", "hour", 100, provider="win")
    add_rule(pg, db, "spend", "month", "1", provider="win")
    full, spent = str(uuid.uuid4()), str(uuid.uuid4())
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    r = redis_py.Redis(unix_socket_path=redis_server.sock)
    # A margin to the hour's end (a month ends with an hour), so that "this hour" stays this
    # hour while the test runs.
    servers.wait_for(lambda: 3600 - redis_now(redis_server)[0] % 3600 > 20, 30,
                     "an hour with 20 s left")
    sec, _ = redis_now(redis_server)
    hour, month = sec // 3600, month_id(sec)
    # `full` used the whole hour and month: this hour's and this month's ids.
    r.hset(f"usaged:{{{full}}}:p:win", mapping={"h": hour, f"th:{hour}": 100, "M": month,
                                                f"sM:{month}": 1000000})
    # `spent` used them in the hour and the month before: those counts are over.
    r.hset(f"usaged:{{{spent}}}:p:win", mapping={"h": hour - 1, f"th:{hour - 1}": 100,
                                                 "M": month - 1, f"sM:{month - 1}": 1000000})
    with d.client() as c:
        a = c.call("check", {"user_id": full, "provider": "win", "tokens": 1})
        b = c.call("check", {"user_id": spent, "provider": "win", "tokens": 1,
                             "spend": "0.5"})
    assert not a["allowed"]
    # Both rules deny; the month's is the longer wait.
    assert a["reason"] == "month_limit"
    now_s, usec = redis_now(redis_server)
    to_month_end = seconds_to_month_end(now_s) * 1000 - usec // 1000
    assert abs(a["retry_after_ms"] - to_month_end) < 5000
    assert rule_of(a, "tokens", "hour")["remaining"] == 0
    assert b["allowed"]
    assert rule_of(b, "tokens", "hour")["used"] == 1
    assert rule_of(b, "spend", "month")["used"] == "0.500000"
    assert 0 < rule_of(b, "tokens", "hour")["reset_ms"] <= 3600000
    # The new windows are noted, and their counts restarted from the check's.
    assert r.hgetall(f"usaged:{{{spent}}}:p:win") == {
        b"h": str(hour).encode(), f"th:{hour}".encode(): b"1", b"M": str(month).encode(),
        f"sM:{month}".encode(): b"500000"}
    r.close()


def test_a_user_rule_lifts_a_provider_rule_and_changes_apply_live(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "prec", per_minute=2, per_day=1000)
    vip, other = make_users(pg, db, 2)
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    wait_for_fresh_minute(redis_server)
    before = loads(d)
    # Every user: 50 tokens a day; the vip: requests per minute lifted, 1000 tokens a day.
    add_rules(pg, db, [("tokens", "day", 50, "prec", None, None),
                       ("requests", "minute", None, "prec", None, vip),
                       ("tokens", "day", 1000, "prec", None, vip)])
    servers.wait_for(lambda: loads(d) > before, 10, "the rules to reload")
    with d.client() as c:
        vip_answers = [c.call("check", {"user_id": vip, "provider": "prec", "tokens": 20})
                       for _ in range(5)]
        other_answers = [c.call("check", {"user_id": other, "provider": "prec", "tokens": 10})
                         for _ in range(3)]
        assert all(a["allowed"] for a in vip_answers)
        assert rule_of(vip_answers[-1], "tokens", "day")["limit"] == 1000
        assert rule_of(vip_answers[-1], "requests", "minute")["limit"] is None
        assert vip_answers[-1]["limit_minute"] is None
        # 2 a minute for everyone else; the third is refused by the minute.
        assert [a["allowed"] for a in other_answers] == [True, True, False]
        assert other_answers[2]["reason"] == "minute_limit"
        # A live change of a row: the vip's tokens drop to 100 (used: 100).
        before = loads(d)
        sql(pg, db, "UPDATE public.usage_limits SET amount = 100 WHERE user_id = %s AND "
            "dimension = 'tokens'", (vip,))
        servers.wait_for(lambda: loads(d) > before, 10, "the change to reload")
        a = c.call("check", {"user_id": vip, "provider": "prec", "tokens": 1})
        assert not a["allowed"] and a["denied_by"]["limit"] == 100
        # And its removal: the every-user 50 applies to the vip again.
        sql(pg, db, "DELETE FROM public.usage_limits WHERE user_id = %s AND "
            "dimension = 'tokens'", (vip,))
        servers.wait_for(lambda: rule_of(c.call("check", {
            "user_id": vip, "provider": "prec", "cost": 0}), "tokens", "day")["limit"] == 50,
            10, "the removal")


def test_config_rules_beat_the_table_and_change_with_sighup(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "cfg")
    add_rule(pg, db, "tokens", "day", 1000, provider="cfg")
    user = str(uuid.uuid4())
    d = start_with(daemon_factory, workdir, pg, db, redis_server,
                   "  rules:\n    - { provider: cfg, tokens_per_day: 100 }\n")

    def limit(c):
        peek = c.call("check", {"user_id": user, "provider": "cfg", "cost": 0})
        return rule_of(peek, "tokens", "day")["limit"]

    with d.client() as c:
        assert limit(c) == 100
        text = open(d.config).read().replace("tokens_per_day: 100", "tokens_per_day: 250")
        with open(d.config, "w") as f:
            f.write(text)
        d.signal(signal.SIGHUP)
        servers.wait_for(lambda: limit(c) == 250, 10, "the reloaded rule")
        # Without the config's rule, the table's applies.
        text = text.replace("    - { provider: cfg, tokens_per_day: 250 }\n", "")
        with open(d.config, "w") as f:
            f.write(text)
        d.signal(signal.SIGHUP)
        servers.wait_for(lambda: limit(c) == 1000, 10, "the table's rule")


def test_a_model_rule_counts_that_model_only(daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "mod")
    add_rule(pg, db, "tokens", "minute", 100, provider="mod", model="big")
    user = str(uuid.uuid4())
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    wait_for_fresh_minute(redis_server)
    with d.client() as c:
        big = [c.call("check", {"user_id": user, "provider": "mod", "model": "big",
                                "tokens": 60}) for _ in range(2)]
        small = c.call("check", {"user_id": user, "provider": "mod", "model": "small",
                                 "tokens": 500})
        none = c.call("check", {"user_id": user, "provider": "mod", "tokens": 500})
    assert [a["allowed"] for a in big] == [True, False]
    assert big[1]["denied_by"]["scope"] == "model"
    # Only the provider's requests rules (NULL in api_providers: unlimited) apply to the others.
    assert small["allowed"] and small["reservation"] is None
    assert [(r["dimension"], r["limit"]) for r in small["limits"]] == [("requests", None)] * 2
    assert none["allowed"]


def test_the_local_fallback_applies_the_same_rules_and_settles_locally(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "loc")
    add_rule(pg, db, "tokens", "day", 100, provider="loc")
    user = str(uuid.uuid4())
    d = start_with(daemon_factory, workdir, pg, db, redis_server, "  on_redis_error: local\n")
    redis_server.stop()
    try:
        with d.client() as c:
            servers.wait_for(lambda: c.call("stats")["limits"]["redis"]["state"] == "down", 10,
                             "Redis to be seen down")
            a = c.call("check", {"user_id": user, "provider": "loc", "tokens": 80})
            b = c.call("check", {"user_id": user, "provider": "loc", "tokens": 30})
            assert a["allowed"] and a["degraded"] and a["reservation"]
            assert not b["allowed"] and b["degraded"] and b["reason"] == "day_limit"
            assert c.call("settle", {"reservation": a["reservation"], "tokens": 10}) == \
                {"settled": True, "duplicate": False}
            b = c.call("check", {"user_id": user, "provider": "loc", "tokens": 30})
            assert b["allowed"] and rule_of(b, "tokens", "day")["used"] == 40
            # A reservation Redis holds cannot be settled while it is away.
            redis_id = user + ".0123456789abcdef"
            assert c.call_err("settle", [{"reservation": redis_id}])["code"] == "unavailable"
    finally:
        redis_server.start()


@pytest.mark.parametrize("params, field", [
    ({"spend": "0.0000001"}, "spend"),
    ({"spend": 0.1234567}, "spend"),
    ({"spend": "-1"}, "spend"),
    ({"spend": "1e3"}, "spend"),
    ({"tokens": -5}, "tokens"),
    ({"tokens": 1.5}, "tokens"),
    ({"model": ""}, "model"),
    ({"model": "m" * 51}, "model"),
    ({"model": 7}, "model"),
])
def test_bad_check_params_are_invalid_field(daemon_factory, workdir, pg, db, redis_server,
                                            params, field):
    add_provider(pg, db, "bad")
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    p = {"user_id": str(uuid.uuid4()), "provider": "bad"}
    p.update(params)
    with d.client() as c:
        err = c.call_err("check", [p])
        assert (err["code"], err["field"]) == ("invalid_field", field)
        assert c.call("ping")["protocol"] == 1  # the connection is unharmed


@pytest.mark.parametrize("params, field", [
    ({"reservation": "abc"}, "reservation"),
    ({"reservation": str(uuid.uuid4()) + ".0123456789ABCDEF"}, "reservation"),
    ({"reservation": str(uuid.uuid4()) + ":0123456789abcdef"}, "reservation"),
    ({"reservation": 5}, "reservation"),
    ({}, "reservation"),
    ({"reservation": str(uuid.uuid4()) + ".0123456789abcdef", "tokens": -1}, "tokens"),
    ({"reservation": str(uuid.uuid4()) + ".0123456789abcdef", "spend": "0.1234567"}, "spend"),
    ({"reservation": str(uuid.uuid4()) + ".0123456789abcdef", "cancel": "yes"}, "cancel"),
    ({"reservation": str(uuid.uuid4()) + ".0123456789abcdef", "extra": 1}, "extra"),
])
def test_bad_settle_params_are_invalid_field(daemon_factory, workdir, pg, db, redis_server,
                                             params, field):
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    with d.client() as c:
        err = c.call_err("settle", [params])
        assert (err["code"], err["field"]) == ("invalid_field", field)


def test_large_amounts_are_read_as_they_are(daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "large", per_minute=2000000000, per_day=2100000000)
    add_rules(pg, db, [("tokens", "day", 10 ** 12, "large", None, None),
                       ("spend", "month", "1000000000", "large", None, None)])
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    with d.client() as c:
        a = c.call("check", {"user_id": str(uuid.uuid4()), "provider": "large", "tokens": 5})
    assert a["allowed"]
    assert (a["limit_minute"], a["limit_day"]) == (2000000000, 2100000000)
    assert rule_of(a, "tokens", "day")["limit"] == 10 ** 12
    assert rule_of(a, "spend", "month")["limit"] == "1000000000.000000"


def test_a_spend_rule_above_what_a_check_counts_is_refused_and_one_from_before_is_unlimited(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "huge")
    with pytest.raises(psycopg2.errors.CheckViolation, match="usage_limits_spend_range"):
        add_rule(pg, db, "spend", "month", "1000000000.5", provider="huge")
    # A row written before migration 0019 (its constraint is NOT VALID: such rows stay): it
    # still replaces the every-user rule of the user it names, as a limit no check can reach.
    vip, other = make_users(pg, db, 2)
    add_rule(pg, db, "spend", "month", "1", provider="huge")
    sql(pg, db, "ALTER TABLE public.usage_limits DROP CONSTRAINT usage_limits_spend_range")
    add_rule(pg, db, "spend", "month", "5000000000", provider="huge", user=vip)
    sql(pg, db, "ALTER TABLE public.usage_limits ADD CONSTRAINT usage_limits_spend_range "
        "CHECK (dimension <> 'spend' OR amount <= 1000000000) NOT VALID")
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    with d.client() as c:
        lifted = c.call("check", {"user_id": vip, "provider": "huge", "spend": "2"})
        held = c.call("check", {"user_id": other, "provider": "huge", "spend": "2"})
    assert lifted["allowed"] and rule_of(lifted, "spend", "month")["limit"] is None
    assert not held["allowed"] and held["denied_by"]["limit"] == "1.000000"
    assert "1 rows of usage_limits above what a check counts" in d.log_text()


def test_a_new_window_drops_the_old_ones_counts_and_a_rule_added_mid_window_reads_its_own(
        daemon_factory, workdir, pg, db, redis_server):
    # Counts are named by their window ("sd:20793"), and the hash notes the current window once
    # per window ("d"): when the day rolls over under the spend rule, the day before's counts of
    # every dimension go (the tokens count too, which no rule counts now; its alert markers; and
    # the fields of the layouts before: counts without a window's id, "wd"), or the hash would
    # grow a day at a time. A tokens rule added later today reads today's count, not the day
    # before's.
    add_provider(pg, db, "stale")
    add_rule(pg, db, "spend", "day", "100", provider="stale")
    user = str(uuid.uuid4())
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    today = today_with_time_left(redis_server, 20)
    r = redis_py.Redis(unix_socket_path=redis_server.sock)
    key = f"usaged:{{{user}}}:p:stale"
    r.hset(key, mapping={"d": today - 1, f"sd:{today - 1}": 5000000, f"td:{today - 1}": 999,
                         "asd": 1, "Atd": 1, "sd": 5000000, "td": 999, "wd": today - 1})
    with d.client() as c:
        a = c.call("check", {"user_id": user, "provider": "stale", "spend": "1"})
        assert rule_of(a, "spend", "day")["used"] == "1.000000"
        assert r.hgetall(key) == {b"d": str(today).encode(), f"sd:{today}".encode(): b"1000000"}
        # The hash outlives its longest window by a minute.
        expected = (today + 1) * 86400 + 60 - redis_now(redis_server)[0]
        assert abs(r.ttl(key) - expected) <= 2
        before = loads(d)
        add_rule(pg, db, "tokens", "day", 1000, provider="stale")
        servers.wait_for(lambda: loads(d) > before, 10, "the new rule")
        b = c.call("check", {"user_id": user, "provider": "stale", "tokens": 10})
    assert rule_of(b, "tokens", "day")["used"] == 10
    assert rule_of(b, "spend", "day")["used"] == "1.000000"
    r.close()


def test_a_log_prompt_settle_that_times_out_is_kept_and_retried(
        daemon_factory, workdir, pg, db, redis_server):
    # Redis up but not answering in time (CLIENT PAUSE holds the script calls): the settle is
    # kept and retried every second; the call that timed out still runs once the pause ends,
    # and whichever comes second is a duplicate, so the count is right either way. The pause
    # lasts until the settle is seen kept (a pause of a fixed 1.5 s could end, on a loaded
    # machine, before the settle reached Redis).
    add_provider(pg, db, "slow")
    add_rule(pg, db, "tokens", "day", 100000, provider="slow")
    user = make_users(pg, db, 1)[0]
    d = start(daemon_factory, workdir, pg, db, redis_server, redis_extra="  timeout_ms: 100\n",
              limits="  log_denied: false\n")
    r = redis_py.Redis(unix_socket_path=redis_server.sock)

    def used(c):
        peek = c.call("check", {"user_id": user, "provider": "slow", "cost": 0})
        return None if peek["degraded"] else rule_of(peek, "tokens", "day")["used"]

    with d.client() as c:
        e = c.call("check", {"user_id": user, "provider": "slow", "tokens": 1000})
        r.execute_command("CLIENT", "PAUSE", "30000", "WRITE")
        try:
            assert c.call("log_prompt", [{"user_id": user, "status": "completed",
                                          "tokens_used": 10,
                                          "reservation": e["reservation"]}]) == {"accepted": 1}
            servers.wait_for(lambda: c.call("stats")["limits"]["settles_queued"] >= 1, 10,
                             "the settle to be kept")
        finally:
            r.execute_command("CLIENT", "UNPAUSE")
        servers.wait_for(lambda: used(c) == 10, 20, "the retried settle")
        servers.wait_for(lambda: c.call("stats")["limits"]["settles_waiting"] == 0, 10,
                         "no settle left waiting")
    r.close()


def test_a_log_prompt_settle_kept_past_the_ttl_is_dropped_and_logged(
        daemon_factory, workdir, pg, db, redis_server):
    # While Redis stays away, the kept settles are looked at every second: one older than
    # limits.reservation_ttl_s is given up (its reservation has expired in Redis anyway).
    add_provider(pg, db, "gone")
    add_rule(pg, db, "tokens", "day", 100000, provider="gone")
    user = make_users(pg, db, 1)[0]
    d = start_with(daemon_factory, workdir, pg, db, redis_server, "  reservation_ttl_s: 1\n")
    with d.client() as c:
        e = c.call("check", {"user_id": user, "provider": "gone", "tokens": 100})
        redis_server.stop()
        try:
            c.call("log_prompt", [{"user_id": user, "status": "completed", "tokens_used": 1,
                                   "reservation": e["reservation"]}])
            servers.wait_for(lambda: c.call("stats")["limits"]["settles_dropped"] == 1, 15,
                             "the kept settle to be given up")
            assert c.call("stats")["limits"]["settles_waiting"] == 0
        finally:
            redis_server.start()
    assert "is given up (past limits.reservation_ttl_s)" in d.log_text()


def test_a_check_without_the_day_rule_never_cuts_the_day_counts_expiry(
        daemon_factory, workdir, pg, db, redis_server):
    # One scope hash, counted by two sets of rules over time: with the day rule, then (the rule
    # removed) without it, when a new minute begins, then with it again. The hash must keep
    # the day's count until the day ends: its expiry only ever moves later.
    add_provider(pg, db, "cut")
    add_rules(pg, db, [("requests", "minute", 100, "cut", None, None),
                       ("tokens", "day", 1000, "cut", None, None)])
    user = str(uuid.uuid4())
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    today_with_time_left(redis_server, 90)
    r = redis_py.Redis(unix_socket_path=redis_server.sock)
    key = f"usaged:{{{user}}}:p:cut"
    with d.client() as c:
        a = c.call("check", {"user_id": user, "provider": "cut", "tokens": 10})
        assert rule_of(a, "tokens", "day")["used"] == 10
        day_left = 86400 - redis_now(redis_server)[0] % 86400
        assert r.ttl(key) >= day_left
        before = loads(d)
        sql(pg, db, "DELETE FROM public.usage_limits WHERE provider = 'cut' AND "
            "dimension = 'tokens'")
        servers.wait_for(lambda: loads(d) > before, 10, "the removal")
        # As at the next minute: the hash's minute is another and the current one has no count,
        # so this check's charge is its minute's first and rolls it.
        minute = int(r.hget(key, "m"))
        r.hdel(key, f"rm:{minute}")
        r.hset(key, "m", minute - 1)
        c.call("check", {"user_id": user, "provider": "cut"})
        assert r.ttl(key) >= day_left - 5
        before = loads(d)
        add_rule(pg, db, "tokens", "day", 1000, provider="cut")
        servers.wait_for(lambda: loads(d) > before, 10, "the rule back")
        b = c.call("check", {"user_id": user, "provider": "cut", "tokens": 1})
        assert rule_of(b, "tokens", "day")["used"] == 11
    r.close()


def test_a_check_stopped_by_a_key_of_another_type_leaves_its_new_hash_with_an_expiry(
        daemon_factory, workdir, pg, db, redis_server):
    # The user's check counts two scopes: every provider (":a", a rule of the user's, charged
    # first) and the provider's hash, which holds a list. The check cannot be counted and gives
    # its charge back; the hash it made on the way must still note its window and expire when
    # its day does, or a failed check would leave a key that never goes.
    add_provider(pg, db, "listed", per_minute=5)
    user = make_users(pg, db, 1)[0]
    add_rule(pg, db, "requests", "day", 100, user=user)
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    today = today_with_time_left(redis_server, 60)
    r = redis_py.Redis(unix_socket_path=redis_server.sock)
    r.rpush(f"usaged:{{{user}}}:p:listed", "not a counter")
    with d.client() as c:
        a = c.call("check", {"user_id": user, "provider": "listed"})
    assert a["degraded"]
    key = f"usaged:{{{user}}}:a"
    assert r.hgetall(key) == {b"d": str(today).encode(), f"rd:{today}".encode(): b"0"}
    assert_expires_a_minute_after_the_day(r, key, redis_server)
    r.close()


def check_a_hash_of_old_windows(daemon_factory, workdir, pg, db, redis_server, provider, fields,
                                ttl=None):
    """One check of a user of a provider of 10 a minute and 100 a day, whose scope hash holds
    fields(minute, day, month) (Redis's current window ids) and expires in ttl s (None: never).
    Returns the answer, the hash's fields after it, the day's id, and a client of the Redis."""
    add_provider(pg, db, provider, per_minute=10, per_day=100)
    user = str(uuid.uuid4())
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    today = today_with_time_left(redis_server, 60)
    r = redis_py.Redis(unix_socket_path=redis_server.sock)
    key = f"usaged:{{{user}}}:p:{provider}"
    sec = redis_now(redis_server)[0]
    r.hset(key, mapping=fields(sec // 60, today, month_id(sec)))
    if ttl is not None:
        r.expire(key, ttl)
    with d.client() as c:
        a = c.call("check", {"user_id": user, "provider": provider})
    assert a["allowed"] and a["remaining_day"] == 99
    return r.hgetall(key), today, r, key


def test_two_windows_moved_on_in_one_hash_both_drop_their_counts_in_one_check(
        daemon_factory, workdir, pg, db, redis_server):
    # A hash last counted yesterday, in a minute long gone: the first check of today rolls both
    # of its windows at once, and neither the minute's nor the day's old counts and alert
    # markers stay behind.
    got, today, r, key = check_a_hash_of_old_windows(
        daemon_factory, workdir, pg, db, redis_server, "both",
        lambda minute, day, month: {"m": minute - 1440, f"rm:{minute - 1440}": 9, "arm": 1,
                                    "d": day - 1, f"rd:{day - 1}": 99, "ard": 1})
    m = got[b"m"].decode()
    assert got == {b"m": m.encode(), f"rm:{m}".encode(): b"1", b"d": str(today).encode(),
                   f"rd:{today}".encode(): b"1"}
    assert_expires_a_minute_after_the_day(r, key, redis_server)
    r.close()


def test_a_long_window_no_rule_counts_any_more_does_not_hold_back_the_expiry(
        daemon_factory, workdir, pg, db, redis_server):
    # The hash still notes last month's window (a month rule since removed), and its expiry,
    # set when that month began, is about to run out. Today's first check rolls the minute and
    # the day: the hash must now outlive today, whatever the stale month says.
    got, today, r, key = check_a_hash_of_old_windows(
        daemon_factory, workdir, pg, db, redis_server, "stalemonth",
        lambda minute, day, month: {"m": minute - 1, f"rm:{minute - 1}": 3, "d": day - 1,
                                    f"rd:{day - 1}": 30, "M": month - 1, f"rM:{month - 1}": 300},
        ttl=30)
    assert got[b"d"] == str(today).encode()
    assert_expires_a_minute_after_the_day(r, key, redis_server)
    r.close()


def test_a_user_under_two_providers_in_one_call_counts_the_shared_scope_once_each_and_expires(
        daemon_factory, workdir, pg, db, redis_server):
    # Every user's checks of two providers, sent in one write, ride in shared script calls:
    # a user's part for each provider charges that provider's hash and the user's hash of
    # every provider (":a", a month rule), which the first part makes and rolls. Every count
    # is exact, and every hash expires with its longest window.
    add_provider(pg, db, "parta", per_minute=100, per_day=1000)
    add_provider(pg, db, "partb", per_minute=100, per_day=1000)
    add_rule(pg, db, "requests", "month", 10000)
    users = [str(uuid.uuid4()) for _ in range(20)]
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    today = today_with_time_left(redis_server, 60)
    wait_for_fresh_minute(redis_server)
    order = [(u, p) for _ in range(3) for u in users for p in ("parta", "partb")]
    with d.client() as c:
        answers = pipelined_checks(c, order)
        batched = c.call("stats")["limits"]["batched"]
    assert all(e is None and a["allowed"] for e, a in answers)
    assert batched > 0
    r = redis_py.Redis(unix_socket_path=redis_server.sock)
    sec = redis_now(redis_server)[0]
    month, minute = month_id(sec), sec // 60
    for u in users:
        every = r.hgetall(f"usaged:{{{u}}}:a")
        assert every == {b"M": str(month).encode(), f"rM:{month}".encode(): b"6"}
        assert_expires_a_minute_after(r, f"usaged:{{{u}}}:a", seconds_to_month_end(sec))
        for p in ("parta", "partb"):
            key = f"usaged:{{{u}}}:p:{p}"
            assert r.hgetall(key) == {b"m": str(minute).encode(), f"rm:{minute}".encode(): b"3",
                                      b"d": str(today).encode(), f"rd:{today}".encode(): b"3"}
            assert_expires_a_minute_after_the_day(r, key, redis_server)
    r.close()
