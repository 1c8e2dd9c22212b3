"""Redis behind Sentinel: the daemons find the primary through the sentinels, share exact limits
on it, and follow a failover (the primary killed in the middle of a check stream, or moved by
SENTINEL FAILOVER): checks are decided by the fallback policy only while no primary is known,
and exact again once the new one is connected."""

import os
import threading
import uuid

import pytest

from conftest import base_config
import servers
from test_limits import add_provider, check


@pytest.fixture
def group(workdir):
    """A fresh primary, replica and three sentinels for each test: a failover changes them."""
    root = os.path.join(workdir, f"sentinel-{uuid.uuid4().hex[:8]}")
    g = servers.SentinelGroup(root).start()
    yield g
    g.stop()


def start(daemon_factory, workdir, pg, db, group, policy="local", redis_extra=""):
    cfg = base_config(workdir, pg=pg, dbname=db)
    sentinels = ", ".join(f"\"{s.address()}\"" for s in group.sentinels)
    cfg += (f"redis:\n  sentinels: [{sentinels}]\n  sentinel_master: {group.master}\n"
            "  timeout_ms: 1000\n  reconnect_max_ms: 200\n" + redis_extra)
    cfg += f"limits:\n  resync_s: 60\n  log_denied: false\n  on_redis_error: {policy}\n"
    d = daemon_factory(cfg)
    servers.wait_for(lambda: d.client().call("stats")["limits"]["limits_loads"] >= 1, 30,
                     "the limits to be loaded")
    return d


def redis_stats(d):
    return d.client().call("stats")["limits"]["redis"]


def wait_primary(d, address, timeout=60):
    servers.wait_for(lambda: (lambda s: s["state"] == "up" and s["primary"] == address)(
        redis_stats(d)), timeout, f"the daemon to use the primary {address}")


def exact_across(daemons, provider, limit):
    """limit + 3 checks of a new user, alternating between the daemons: exactly limit allowed,
    none degraded."""
    user = str(uuid.uuid4())
    clients = [d.client() for d in daemons]
    try:
        answers = [check(clients[i % len(clients)], user, provider)
                   for i in range(limit + 3)]
    finally:
        for c in clients:
            c.close()
    assert not any(a["degraded"] for a in answers)
    return sum(1 for a in answers if a["allowed"])


def test_two_daemons_find_the_primary_and_share_exact_limits(
        daemon_factory, workdir, pg, db, group):
    add_provider(pg, db, "sentday", per_day=7)
    a = start(daemon_factory, workdir, pg, db, group)
    b = start(daemon_factory, workdir, pg, db, group)
    for d in (a, b):
        wait_primary(d, group.primary.tcp_address())
        assert redis_stats(d)["mode"] == "sentinel"
    assert exact_across([a, b], "sentday", 7) == 7


def test_a_primary_killed_mid_stream_is_followed_to_the_promoted_replica(
        daemon_factory, workdir, pg, db, group):
    add_provider(pg, db, "sentkill", per_day=1000000)
    add_provider(pg, db, "sentafter", per_day=6)
    a = start(daemon_factory, workdir, pg, db, group, policy="allow")
    b = start(daemon_factory, workdir, pg, db, group, policy="allow")
    wait_primary(a, group.primary.tcp_address())
    wait_primary(b, group.primary.tcp_address())

    stop = threading.Event()
    answers = []
    errors = []

    def stream():
        user = str(uuid.uuid4())
        try:
            with a.client() as c:
                while not stop.is_set():
                    answers.append(check(c, user, "sentkill"))
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    t = threading.Thread(target=stream)
    t.start()
    try:
        servers.wait_for(lambda: len(answers) >= 50, 30, "the stream to run")
        group.primary.kill()
        new_primary = group.replica.tcp_address()
        servers.wait_for(lambda: group.current_primary() == new_primary, 60,
                         "the sentinels to promote the replica")
        wait_primary(a, new_primary)
        wait_primary(b, new_primary)
        # The stream goes on, exact again: wait for answers counted by the new primary.
        seen = len(answers)
        servers.wait_for(lambda: len(answers) >= seen + 20 and
                         not any(x["degraded"] for x in answers[-10:]), 30,
                         "exact answers after the failover")
    finally:
        stop.set()
        t.join(30)
    assert not errors, errors
    # Every check had an answer: exact before and after, by the policy (allow) in between.
    assert all(x["allowed"] for x in answers)
    assert any(x["degraded"] for x in answers)
    assert not answers[0]["degraded"]
    assert redis_stats(a)["failovers"] >= 1
    assert exact_across([a, b], "sentafter", 6) == 6
    log = a.log_text()
    assert f"redis: connected to {new_primary}" in log


def test_a_manual_failover_moves_the_daemon_off_the_demoted_primary(
        daemon_factory, workdir, pg, db, group):
    add_provider(pg, db, "sentmove", per_day=5)
    d = start(daemon_factory, workdir, pg, db, group)
    old = group.primary.tcp_address()
    wait_primary(d, old)
    group.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", group.master)
    new_primary = group.replica.tcp_address()
    servers.wait_for(lambda: group.current_primary() == new_primary, 60,
                     "the sentinels to promote the replica")
    # The old primary is alive (now a replica): the move comes from +switch-master, or from a
    # -READONLY answer, and the ROLE check refuses to stay on a replica.
    wait_primary(d, new_primary)
    assert redis_stats(d)["failovers"] >= 1
    servers.wait_for(lambda: group.primary.client().execute_command("ROLE")[0] == b"slave", 30,
                     "the old primary to become a replica")
    assert exact_across([d], "sentmove", 5) == 5


def test_with_every_sentinel_away_the_daemon_starts_on_the_policy_then_finds_the_primary(
        daemon_factory, workdir, pg, db, group):
    add_provider(pg, db, "sentaway", per_day=4)
    for s in group.sentinels:
        s.stop()
    d = start(daemon_factory, workdir, pg, db, group, policy="deny")
    user = str(uuid.uuid4())
    with d.client() as c:
        r = check(c, user, "sentaway")
    assert r["degraded"] and not r["allowed"]
    assert redis_stats(d)["state"] == "down"
    for s in group.sentinels:
        s.start()
    wait_primary(d, group.primary.tcp_address())
    assert exact_across([d], "sentaway", 4) == 4



@pytest.fixture
def password_group(workdir):
    """Starts a group whose primary and replica want password (and its sentinels
    sentinel_password), and a daemon whose password file holds given; yields
    start(given, password, sentinel_password) -> (group, its config lines)."""
    groups = []

    def start_group(given, password, sentinel_password):
        g = servers.SentinelGroup(os.path.join(workdir, f"sentinel-{uuid.uuid4().hex[:8]}"),
                                  password=password, sentinel_password=sentinel_password)
        groups.append(g.start())
        pw = os.path.join(workdir, f"password-{uuid.uuid4().hex[:8]}")
        with open(pw, "w") as f:
            f.write(given + "\n")
        return g, f"  password_file: \"{pw}\"\n"

    yield start_group
    for g in groups:
        g.stop()


@pytest.mark.parametrize("sentinels_too", [False, True])
def test_a_password_protected_primary_is_found_and_authenticated(
        daemon_factory, workdir, pg, db, password_group, sentinels_too):
    # The same password on the primary and the replica, and on the sentinels or not: AUTH goes
    # to every connection, and a sentinel without a password is not put off by it.
    add_provider(pg, db, "sentauth", per_day=3)
    g, extra = password_group("sentinel-group-Pw", "sentinel-group-Pw",
                              "sentinel-group-Pw" if sentinels_too else None)
    d = start(daemon_factory, workdir, pg, db, g, redis_extra=extra)
    wait_primary(d, g.primary.tcp_address())
    assert exact_across([d], "sentauth", 3) == 3
    assert "sentinel-group-Pw" not in d.log_text()


def test_a_wrong_password_for_the_sentinels_is_counted_and_logged_as_refused(
        daemon_factory, workdir, pg, db, password_group):
    g, extra = password_group("Wrong-sentinel-Pw", "Right-sentinel-Pw", "Right-sentinel-Pw")
    d = start(daemon_factory, workdir, pg, db, g, redis_extra=extra)
    servers.wait_for(lambda: redis_stats(d)["auth_failures"] >= 1, 30,
                     "the refused AUTH to be counted")
    servers.wait_for(lambda: "AUTH refused (WRONGPASS" in d.log_text(), 30,
                     "the refused AUTH to be logged")
    assert f"no primary named {g.master}" not in d.log_text()
    assert redis_stats(d)["state"] != "up"
    assert "Wrong-sentinel-Pw" not in d.log_text()


def test_an_acl_user_works_with_sentinels_that_know_no_such_user(
        daemon_factory, workdir, pg, db, password_group):
    # Sentinels without a password answer the user's AUTH with WRONGPASS (they have no such
    # user) and the question all the same: no refused AUTH is counted.
    add_provider(pg, db, "sentacl", per_day=3)
    g, extra = password_group("App-user-Pw", "sentinel-group-Pw", None)
    for node in (g.primary, g.replica):
        node.client().execute_command("ACL", "SETUSER", "app", "on", ">App-user-Pw", "~*", "+@all")
    d = start(daemon_factory, workdir, pg, db, g, redis_extra=extra + "  username: app\n")
    wait_primary(d, g.primary.tcp_address())
    assert exact_across([d], "sentacl", 3) == 3
    assert redis_stats(d)["auth_failures"] == 0
