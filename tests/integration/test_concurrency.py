"""`concurrent` rules and shadow rules end to end (PROTOCOL.md, "Protocol 1, additions": the
sections "`concurrent` rules" and "Shadow rules and alerts"): the cap on calls in flight, exact
across two daemons sharing one Redis; a slot freed by settle, by a cancel and by the reservation's
TTL; shadow rules counted and reported, never denying; bad input."""

import os
import subprocess
import threading
import uuid

import pytest

from conftest import sql
from test_budgets import add_rule, start_with
from test_limits import add_provider
import servers


def add_concurrent(pg, db, amount, provider=None, user=None, shadow=False):
    sql(pg, db, "INSERT INTO public.usage_limits (user_id, provider, dimension, period, amount, "
        "shadow) VALUES (%s, %s, 'concurrent', NULL, %s, %s)", (user, provider, amount, shadow))


def concurrent_rule(answer, shadow=False):
    found = [r for r in answer["limits"] if r["dimension"] == "concurrent" and
             r.get("shadow", False) == shadow]
    assert len(found) == 1, answer["limits"]
    return found[0]


def test_the_cap_on_calls_in_flight_is_never_exceeded_across_two_daemons(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "cc")
    add_concurrent(pg, db, 5, provider="cc")
    user = str(uuid.uuid4())
    daemons = [start_with(daemon_factory, workdir, pg, db, redis_server, name=f"c{i}")
               for i in range(2)]
    lock = threading.Lock()
    state = {"in_flight": 0, "most": 0, "allowed": 0, "denied": 0, "reasons": set()}

    def worker(d):
        with d.client() as c:
            for _ in range(40):
                a = c.call("check", {"user_id": user, "provider": "cc"})
                if not a["allowed"]:
                    with lock:
                        state["denied"] += 1
                        state["reasons"].add(a["reason"])
                    continue
                with lock:
                    state["allowed"] += 1
                    state["in_flight"] += 1
                    state["most"] = max(state["most"], state["in_flight"])
                    # What Redis reports is the slots in use, this one's included.
                    assert 1 <= concurrent_rule(a)["used"] <= 5
                    state["in_flight"] -= 1
                assert c.call("settle", {"reservation": a["reservation"]})["settled"]

    threads = [threading.Thread(target=worker, args=(d,)) for d in daemons for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert state["most"] <= 5
    assert state["allowed"] > 0
    assert state["denied"] > 0 and state["reasons"] == {"concurrency_limit"}

    # Held, not settled: 9 checks from both daemons at once, exactly 5 get a slot.
    answers = []

    def hold(d):
        with d.client() as c:
            a = c.call("check", {"user_id": user, "provider": "cc"})
            with lock:
                answers.append(a)

    threads = [threading.Thread(target=hold, args=(daemons[i % 2],)) for i in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    allowed = [a for a in answers if a["allowed"]]
    assert len(allowed) == 5
    denied = [a for a in answers if not a["allowed"]][0]
    assert denied["reason"] == "concurrency_limit"
    assert denied["denied_by"]["dimension"] == "concurrent"
    assert denied["denied_by"]["window"] is None
    assert (denied["denied_by"]["used"], denied["denied_by"]["remaining"]) == (5, 0)
    assert denied["retry_after_ms"] > 0
    with daemons[0].client() as c:
        stats = c.call("stats")["limits"]
    with daemons[1].client() as c:
        other = c.call("stats")["limits"]
    assert stats["denied"]["concurrency_limit"] + other["denied"]["concurrency_limit"] >= 5


def test_a_slot_is_freed_by_settle_by_cancel_and_by_the_ttl(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "slot")
    add_concurrent(pg, db, 2, provider="slot")
    user = str(uuid.uuid4())
    # The reservations (and their slots) lapse after 1 s; the settles come from the other daemon.
    d = start_with(daemon_factory, workdir, pg, db, redis_server, name="ttl",
                   limits="  reservation_ttl_s: 1\n")
    e = start_with(daemon_factory, workdir, pg, db, redis_server, name="other")

    def take(c):
        return c.call("check", {"user_id": user, "provider": "slot"})

    with d.client() as c, e.client() as o:
        a, b = take(c), take(c)
        assert a["allowed"] and b["allowed"] and a["reservation"] and b["reservation"]
        assert not take(c)["allowed"]
        # A peek takes no slot and is refused only past the cap.
        peek = c.call("check", {"user_id": user, "provider": "slot", "cost": 0})
        assert peek["allowed"] and peek["reservation"] is None
        assert concurrent_rule(peek)["used"] == 2
        # Settled on the other daemon: the slot is free for the next check.
        assert o.call("settle", {"reservation": a["reservation"], "tokens": 10})["settled"]
        f = take(c)
        assert f["allowed"]
        assert not take(c)["allowed"]
        assert o.call("settle", {"reservation": f["reservation"], "cancel": True})["settled"]
        g = take(c)
        assert g["allowed"]
        # b and g are never settled: their slots lapse with the reservations' TTL.
        servers.wait_for(lambda: concurrent_rule(c.call("check", {
            "user_id": user, "provider": "slot", "cost": 0}))["used"] == 0, 10,
            "the unsettled slots to lapse")
        assert take(c)["allowed"] and take(c)["allowed"]


def test_a_shadow_rule_reports_what_it_would_deny_and_never_denies(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "sh")
    add_rule(pg, db, "requests", "day", 5, provider="sh")
    # The shadow rule counts every provider's requests of the user (usage_limits allows one row
    # per pattern, shadow or not, until a migration lets a shadow row name an enforced one's).
    sql(pg, db, "INSERT INTO public.usage_limits (provider, dimension, period, amount, shadow) "
        "VALUES (NULL, 'requests', 'day', 2, true)")
    add_concurrent(pg, db, 1, provider="sh", shadow=True)
    user = str(uuid.uuid4())
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    with d.client() as c:
        answers = [c.call("check", {"user_id": user, "provider": "sh"}) for _ in range(5)]
        assert all(a["allowed"] for a in answers)
        # The first is within both shadow rules; the second holds a second slot in flight.
        assert answers[0]["shadow_denied_by"] is None
        second = answers[1]["shadow_denied_by"]
        assert second["dimension"] == "concurrent" and second["shadow"] is True
        # The third would pass neither: the one with the longest wait (the day) is named.
        third = answers[2]["shadow_denied_by"]
        assert (third["dimension"], third["window"], third["limit"]) == ("requests", "day", 2)
        assert third["scope"] == "user"
        assert third["shadow"] is True and third["used"] == 3
        # Both the shadow rule and the enforced one are in `limits`; the enforced one denies.
        enforced = [r for r in answers[4]["limits"] if r["dimension"] == "requests" and
                    not r.get("shadow")]
        assert enforced[0]["used"] == 5 and enforced[0]["remaining"] == 0
        sixth = c.call("check", {"user_id": user, "provider": "sh"})
        assert not sixth["allowed"] and sixth["reason"] == "day_limit"
        assert not sixth["denied_by"].get("shadow")
        stats = c.call("stats")["limits"]
    assert stats["shadow_denied"]["day_limit"] >= 3
    assert stats["shadow_denied"]["concurrency_limit"] >= 1


def test_config_rules_take_concurrent_and_shadow(daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "cfg")
    user = str(uuid.uuid4())
    d = start_with(daemon_factory, workdir, pg, db, redis_server, limits=(
        "  rules:\n"
        "    - { provider: cfg, concurrent: 1 }\n"
        "    - { provider: cfg, requests_per_minute: 1, shadow: true }\n"))
    with d.client() as c:
        a = c.call("check", {"user_id": user, "provider": "cfg"})
        assert a["allowed"] and a["shadow_denied_by"] is None
        b = c.call("check", {"user_id": user, "provider": "cfg"})
        assert not b["allowed"] and b["reason"] == "concurrency_limit"
        c.call("settle", {"reservation": a["reservation"]})
        e = c.call("check", {"user_id": user, "provider": "cfg"})
        assert e["allowed"]
        assert e["shadow_denied_by"]["window"] == "minute"


def test_bad_concurrent_and_shadow_input_is_refused(workdir, pg, db):
    # The table refuses a concurrent rule with a period, and a negative cap.
    for period, amount in (("minute", 3), (None, -1)):
        with pytest.raises(Exception):
            sql(pg, db, "INSERT INTO public.usage_limits (dimension, period, amount) "
                "VALUES ('concurrent', %s, %s)", (period, amount))
    # The config names the bad key.
    path = os.path.join(workdir, "bad-concurrent.yaml")
    with open(path, "w") as f:
        f.write("limits:\n  rules:\n    - { concurrent: many }\n")
    out = subprocess.run([os.environ["USAGED_BIN"], "--check-config", "-c", path],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "limits.rules[0].concurrent" in out.stderr


def test_a_shadow_rule_beside_the_enforced_one_shares_its_count_and_settles_once(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "twin")
    user = str(uuid.uuid4())
    d = start_with(daemon_factory, workdir, pg, db, redis_server, limits=(
        "  rules:\n"
        "    - { provider: twin, tokens_per_day: 1000 }\n"
        "    - { provider: twin, tokens_per_day: 500, shadow: true }\n"))

    def tokens(answer):
        rules = [r for r in answer["limits"] if r["dimension"] == "tokens"]
        assert len(rules) == 2, answer["limits"]
        return sorted((r.get("shadow", False), r["limit"], r["used"]) for r in rules)

    with d.client() as c:
        a = c.call("check", {"user_id": user, "provider": "twin", "tokens": 400})
        assert a["allowed"] and a["shadow_denied_by"] is None
        assert tokens(a) == [(False, 1000, 400), (True, 500, 400)]
        b = c.call("check", {"user_id": user, "provider": "twin", "tokens": 400})
        assert b["allowed"] and b["shadow_denied_by"]["limit"] == 500
        assert tokens(b) == [(False, 1000, 800), (True, 500, 800)]
        # One counter, settled once: 800 - 300 = 500 for both, not 200.
        assert c.call("settle", {"reservation": a["reservation"], "tokens": 100})["settled"]
        peek = c.call("check", {"user_id": user, "provider": "twin", "cost": 0})
        assert tokens(peek) == [(False, 1000, 500), (True, 500, 500)]
        e = c.call("check", {"user_id": user, "provider": "twin", "tokens": 600})
        assert not e["allowed"] and e["denied_by"]["limit"] == 1000
        assert e["denied_by"].get("shadow") is None


def limits_stats(daemons):
    out = []
    for d in daemons:
        with d.client() as c:
            out.append(c.call("stats")["limits"])
    return out


def summed(stats, key):
    return sum(s[key] for s in stats)


def test_reservations_and_slots_in_use_sum_exactly_over_two_daemons(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "led")
    add_concurrent(pg, db, 10, provider="led")
    user = str(uuid.uuid4())
    # A TTL of 2 s (and so a grace of 2 s) on both, so that the unsettled ones expire in the test.
    daemons = [start_with(daemon_factory, workdir, pg, db, redis_server, name=f"l{i}",
                          limits="  reservation_ttl_s: 2\n") for i in range(2)]
    rds = redis_server.client()

    def slots_in_redis():
        keys = [k for k in rds.keys(f"*{user}*") if b"}:c:" in k]
        now_ms = int(rds.time()[0]) * 1000
        return sum(rds.zcount(k, now_ms, "+inf") for k in keys)

    with daemons[0].client() as one, daemons[1].client() as two:
        held = [one.call("check", {"user_id": user, "provider": "led"}) for _ in range(3)]
        held.append(two.call("check", {"user_id": user, "provider": "led"}))
        assert all(a["allowed"] and a["reservation"] for a in held)
        # Settled across: two of the first daemon's by the second, the second's by the first.
        for a in held[:2]:
            assert two.call("settle", {"reservation": a["reservation"], "tokens": 1})["settled"]
        assert one.call("settle", {"reservation": held[3]["reservation"],
                                   "cancel": True})["settled"]
        # A duplicate settle changes nothing.
        assert one.call("settle", {"reservation": held[3]["reservation"]})["duplicate"]
    stats = limits_stats(daemons)
    assert [s["reservations"] for s in stats] == [3, 1]
    assert [s["settles"] for s in stats] == [1, 2]
    # One daemon settled more than it issued: its share is negative, the sum exact.
    assert [s["reservations_open"] for s in stats] == [2, -1]
    assert summed(stats, "reservations_open") == 1
    assert summed(stats, "concurrent_slots_in_use") == 1 == slots_in_redis()
    assert summed(stats, "concurrent_slots_taken") == 4
    assert summed(stats, "concurrent_slots_freed") == 3
    assert summed(stats, "reservations_expired") == 0

    # The last one is never settled: past its TTL (and the grace) it counts as expired.
    servers.wait_for(lambda: summed(limits_stats(daemons), "reservations_expired") == 1, 30,
                     "the unsettled reservation to expire")
    stats = limits_stats(daemons)
    assert summed(stats, "reservations_open") == 0
    assert summed(stats, "concurrent_slots_in_use") == 0 == slots_in_redis()
    assert summed(stats, "concurrent_slots_lapsed") == 1
    rds.close()


def test_shadow_denials_are_counted_by_rule_pattern_in_stats_and_prometheus(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "shp")
    add_provider(pg, db, "shq")
    user = str(uuid.uuid4())
    d = start_with(daemon_factory, workdir, pg, db, redis_server, limits=(
        "  rules:\n"
        "    - { provider: shp, model: m1, requests_per_minute: 1, shadow: true }\n"
        "    - { provider: shq, concurrent: 1, shadow: true }\n"))
    with d.client() as c:
        for _ in range(3):
            assert c.call("check", {"user_id": user, "provider": "shp", "model": "m1"})["allowed"]
        for _ in range(2):
            assert c.call("check", {"user_id": user, "provider": "shq", "model": "m2"})["allowed"]
        stats = c.call("stats")["limits"]
    by_rule = stats["shadow_denied_rules"]
    assert by_rule == {"shp/m1/requests/minute": 2, "shq/*/concurrent": 1}, by_rule
    ctl = subprocess.run([os.environ["USAGECTL_BIN"], "-s", d.socket, "stats", "--prometheus"],
                         capture_output=True, text=True, timeout=30)
    assert ctl.returncode == 0, ctl.stderr
    assert ('usaged_limits_shadow_denied_rules{rule="shp/m1/requests/minute"} 2'
            in ctl.stdout), ctl.stdout


def test_a_model_named_like_another_s_slots_counts_apart_from_them(
        daemon_factory, workdir, pg, db, redis_server):
    # Model names are free text: "a:c" (or a provider and model whose bytes run together the
    # same way) must not share a key with the slots of model "a", in either order of use.
    add_provider(pg, db, "kc")
    sql(pg, db, "INSERT INTO public.usage_limits (model, dimension, period, amount) "
        "VALUES ('a', 'concurrent', NULL, 1), ('b', 'concurrent', NULL, 1)")
    add_rule(pg, db, "tokens", "day", 1000, model="a:c")
    add_rule(pg, db, "tokens", "day", 1000, provider="kc", model="b:c")
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    user = str(uuid.uuid4())
    with d.client() as c:
        first = c.call("check", {"user_id": user, "provider": "kc", "model": "a:c", "tokens": 10})
        held = c.call("check", {"user_id": user, "provider": "kc", "model": "a"})
        over = c.call("check", {"user_id": user, "provider": "kc", "model": "a"})
        held_b = c.call("check", {"user_id": user, "provider": "kc", "model": "b"})
        second = c.call("check", {"user_id": user, "provider": "kc", "model": "b:c", "tokens": 7})
        assert c.call("stats")["limits"]["key_errors"] == 0
    for a in (first, held, over, held_b, second):
        assert not a["degraded"], a
    assert first["allowed"] and held["allowed"] and held_b["allowed"] and second["allowed"]
    assert not over["allowed"] and over["reason"] == "concurrency_limit"
    assert [r["used"] for r in second["limits"] if r["dimension"] == "tokens"] == [7]
