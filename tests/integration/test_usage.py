"""The `usage` method end to end (PROTOCOL.md, "Protocol 1, additions", "`usage`"): a user's
standing under every rule that applies, narrowed to a provider and model when given, read from
the same counters `check` spends, without spending anything; and its bad input."""

import os
import subprocess
import uuid

import pytest

from conftest import make_users, sql
from test_budgets import add_rule, start_with
from test_limits import add_provider
from usaged_client import RpcError


def find(answer, provider, model, dimension, window):
    found = [r for r in answer["limits"] if (r["provider"], r["model"], r["dimension"],
                                             r["window"]) == (provider, model, dimension, window)]
    assert len(found) == 1, answer["limits"]
    return found[0]


def test_usage_lists_every_rule_of_the_user_with_its_use_and_spends_nothing(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "ua", per_minute=60, per_day=1000)
    add_provider(pg, db, "ub", per_minute=5, per_day=None)
    user, other = make_users(pg, db, 2)
    add_rule(pg, db, "tokens", "day", 5000, provider="ua")
    add_rule(pg, db, "tokens", "minute", 900, provider="ua", model="m1")
    add_rule(pg, db, "spend", "month", "3.50", user=user)
    add_rule(pg, db, "spend", "month", "1.00", user=other)
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    with d.client() as c:
        for _ in range(3):
            a = c.call("check", {"user_id": user, "provider": "ua", "model": "m1",
                                 "tokens": 100, "spend": "0.25"})
            assert a["allowed"]
        c.call("check", {"user_id": user, "provider": "ub"})
        first = c.call("usage", {"user_id": user})
        again = c.call("usage", {"user_id": user})
        assert again["limits"] == [dict(r, reset_ms=r2["reset_ms"]) for r, r2 in
                                   zip(first["limits"], again["limits"])]
        assert first["degraded"] is False and first["truncated"] is False

        assert find(first, "ua", None, "requests", "minute")["used"] == 3
        assert find(first, "ua", None, "requests", "minute")["remaining"] == 57
        assert find(first, "ua", None, "requests", "day")["used"] == 3
        assert find(first, "ua", None, "tokens", "day")["used"] == 300
        model = find(first, "ua", "m1", "tokens", "minute")
        assert (model["used"], model["limit"], model["scope"]) == (300, 900, "model")
        spend = find(first, None, None, "spend", "month")
        assert (spend["used"], spend["limit"], spend["scope"]) == ("0.750000", "3.500000", "user")
        assert find(first, "ub", None, "requests", "minute")["used"] == 1
        unlimited = find(first, "ub", None, "requests", "day")
        assert unlimited["limit"] is None and unlimited["used"] is None
        # The other user's rule is not this user's.
        assert not [r for r in first["limits"] if r["limit"] == "1.000000"]

        # Narrowed to a provider: its rules and every provider's; to a model: that model's too.
        ua = c.call("usage", {"user_id": user, "provider": "ua"})
        assert {r["provider"] for r in ua["limits"]} == {"ua", None}
        assert find(ua, "ua", "m1", "tokens", "minute")["used"] == 300
        m2 = c.call("usage", {"user_id": user, "provider": "ua", "model": "m2"})
        assert not [r for r in m2["limits"] if r["model"] is not None]

        # Nothing was spent by asking: the next check sees the same counts plus its own.
        a = c.call("check", {"user_id": user, "provider": "ua", "cost": 0})
        assert [r for r in a["limits"] if r["dimension"] == "requests" and
                r["window"] == "minute"][0]["used"] == 3

        # A user with no use of their own: every rule for every user, at 0.
        fresh = c.call("usage", {"user_id": str(uuid.uuid4()), "provider": "ua"})
        assert find(fresh, "ua", None, "tokens", "day")["used"] == 0


def test_usage_refuses_bad_input(daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "ubad", per_minute=10)
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    user = str(uuid.uuid4())
    with d.client() as c:
        assert c.call_err("usage", [])["code"] == "bad_request"
        for params, code in (
                ({}, "invalid_field"),
                ({"user_id": "nope"}, "invalid_field"),
                ({"user_id": user, "provider": ""}, "invalid_field"),
                ({"user_id": user, "provider": "ubad", "model": 7}, "invalid_field"),
                ({"user_id": user, "tokens": 1}, "invalid_field"),
                ({"user_id": user, "provider": "nosuch"}, "unknown_provider")):
            with pytest.raises(RpcError) as err:
                c.call("usage", params)
            assert err.value.code == code, params
        with pytest.raises(RpcError) as err:
            c.call("usage", "not a map")
        assert err.value.code == "bad_request"
        # The connection still answers.
        assert find(c.call("usage", {"user_id": user}), "ubad", None, "requests",
                    "minute")["used"] == 0


def test_usagectl_usage_prints_the_rules_as_a_table(daemon_factory, workdir, pg, db, redis_server):
    """Through the C client library's usaged_usage."""
    add_provider(pg, db, "uctl", per_minute=60)
    add_rule(pg, db, "spend", "day", "5", provider="uctl")
    add_rule(pg, db, "tokens", "hour", 800, provider="uctl", model="m9")
    d = start_with(daemon_factory, workdir, pg, db, redis_server)
    user = str(uuid.uuid4())
    with d.client() as c:
        c.call("check", {"user_id": user, "provider": "uctl", "model": "m9", "spend": "1.25",
                         "tokens": 40})
    ctl = os.environ["USAGECTL_BIN"]
    r = subprocess.run([ctl, "-s", d.socket, "usage", user, "uctl"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()]
    assert rows[0][:4] == ["PROVIDER", "MODEL", "DIMENSION", "WINDOW"]
    by_rule = {tuple(row[:4]): row[4:7] for row in rows[1:]}
    assert by_rule[("uctl", "*", "requests", "minute")] == ["60", "1", "59"]
    assert by_rule[("uctl", "*", "spend", "day")] == ["5.000000", "1.250000", "3.750000"]
    assert by_rule[("uctl", "m9", "tokens", "hour")] == ["800", "40", "760"]
    # An unknown provider is an error answer: exit 1, the code on stderr.
    r = subprocess.run([ctl, "-s", d.socket, "usage", user, "nosuch"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1 and "unknown_provider" in r.stderr
    r = subprocess.run([ctl, "-s", d.socket, "usage"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
