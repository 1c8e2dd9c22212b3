"""Redis Cluster: checks routed by their key's slot to the primary that owns it, grouped into one
script call per slot; exact limits across two daemons; a slot migrated in the middle of a check
stream (ASK, then MOVED) loses and doubles no count, and a settle or a check making a
reservation waits while its slot is split; a primary stopped affects only the checks whose slots
it owns."""

import os
import subprocess
import threading
import uuid

import msgpack
import pytest

from conftest import base_config, sql
import servers
from test_limits import add_provider, check


@pytest.fixture
def cluster(workdir):
    """A fresh three-primary cluster for each test: the tests move slots and stop nodes."""
    root = os.path.join(workdir, f"cluster-{uuid.uuid4().hex[:8]}")
    c = servers.Cluster(root, n=3).start()
    yield c
    c.stop()


def start(daemon_factory, workdir, pg, db, cluster, policy="local", seeds=None):
    cfg = base_config(workdir, pg=pg, dbname=db)
    nodes = ", ".join(f"\"{a}\"" for a in (seeds or cluster.addresses()[:2]))
    cfg += f"redis:\n  cluster: [{nodes}]\n  timeout_ms: 2000\n  reconnect_max_ms: 200\n"
    cfg += f"limits:\n  resync_s: 60\n  log_denied: false\n  on_redis_error: {policy}\n"
    d = daemon_factory(cfg)
    servers.wait_for(lambda: d.client().call("stats")["limits"]["limits_loads"] >= 1, 30,
                     "the limits to be loaded")
    servers.wait_for(lambda: redis_stats(d)["state"] == "up", 30, "the slot map")
    return d


def redis_stats(d):
    return d.client().call("stats")["limits"]["redis"]


def key_slot(user):
    """The slot of a user's keys (all share the hash tag {user_id}): CRC16 (XMODEM) of the tag,
    as Redis computes it (test_redis.c checks the daemon's against CLUSTER KEYSLOT)."""
    crc = 0
    for byte in user.encode():
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc % 16384


def pipelined(c, checks):
    """One write of many checks; [error, result] of each, in order."""
    c.send_raw(b"".join(msgpack.packb([0, i, "check", [{"user_id": u, "provider": p}]])
                        for i, (u, p) in enumerate(checks, 1)))
    return [c.wait(i) for i in range(1, len(checks) + 1)]


def test_two_daemons_share_exact_limits_over_three_primaries(
        daemon_factory, workdir, pg, db, cluster):
    add_provider(pg, db, "clfive", per_day=5)
    a = start(daemon_factory, workdir, pg, db, cluster)
    b = start(daemon_factory, workdir, pg, db, cluster, seeds=cluster.addresses()[2:])
    users = [str(uuid.uuid4()) for _ in range(60)]
    results = {}

    def run(d, name):
        with d.client() as c:
            results[name] = pipelined(c, [(u, "clfive") for _ in range(4) for u in users])

    threads = [threading.Thread(target=run, args=(d, n)) for d, n in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    allowed = {u: 0 for u in users}
    for name in ("a", "b"):
        order = [u for _ in range(4) for u in users]
        for u, (err, r) in zip(order, results[name]):
            assert err is None and not r["degraded"]
            allowed[u] += r["allowed"]
    assert all(n == 5 for n in allowed.values()), allowed
    # The users' keys are spread over every primary, and each daemon sent one script call per
    # slot (more round trips than batches).
    assert all(n.client().dbsize() > 0 for n in cluster.nodes)
    assert redis_stats(a)["mode"] == "cluster"


class Streams:
    """Checks of one user from each daemon, in a loop each, until stopped."""

    def __init__(self, daemons, user, provider):
        self.stop_event = threading.Event()
        self.answers = [[] for _ in daemons]
        self.errors = []
        self.threads = [threading.Thread(target=self._run, args=(d, i, user, provider))
                        for i, d in enumerate(daemons)]
        for t in self.threads:
            t.start()

    def _run(self, d, i, user, provider):
        try:
            with d.client() as c:
                while not self.stop_event.is_set():
                    self.answers[i].append(check(c, user, provider))
        except Exception as e:  # noqa: BLE001 - reported by the assertion of the test
            self.errors.append(e)

    def total(self):
        return sum(len(a) for a in self.answers)

    def more(self, n, what):
        want = self.total() + n
        servers.wait_for(lambda: self.total() >= want or self.errors, 30, what)

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join(30)
        return [a for answers in self.answers for a in answers]


def migrate_slot(cluster, slot, source, target, streams):
    """Moves slot from source to target the way redis-cli --cluster reshard does, with checks
    flowing at each step."""
    src_id, tgt_id = cluster.node_id(source), cluster.node_id(target)
    target.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    source.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", tgt_id)
    streams.more(40, "checks while the slot is migrating, its key still on the source")
    keys = source.client().execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
    assert keys, "the user's key is on the source"
    source.client().execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS",
                                    *keys)
    streams.more(40, "checks sent on by ASK, the key on the target")
    # The target first, then the source, then the others, as redis-cli does: a source that let
    # go before the target took over would send calls back and forth with MOVED.
    order = [target, source] + [n for n in cluster.nodes if n not in (target, source)]
    for n in order:
        if n.pid is not None:
            n.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", tgt_id)
    streams.more(40, "checks sent on by MOVED, then straight to the target")


def assert_counted_once(every, per_day):
    """Every check allowed, exact (none degraded), and counted once: each saw a count of its own
    (none lost, none doubled), and the last count is the number of checks."""
    assert not any(r["degraded"] for r in every)
    assert all(r["allowed"] for r in every)
    remaining = [r["remaining_day"] for r in every]
    assert len(set(remaining)) == len(every)
    assert min(remaining) == per_day - len(every)


def test_a_slot_migrated_mid_stream_loses_and_doubles_no_count(
        daemon_factory, workdir, pg, db, cluster):
    add_provider(pg, db, "clmig", per_day=1000000)
    a = start(daemon_factory, workdir, pg, db, cluster)
    b = start(daemon_factory, workdir, pg, db, cluster)
    user = str(uuid.uuid4())
    slot = key_slot(user)
    source = cluster.node_of_slot(slot)
    target = next(n for n in cluster.nodes if n is not source)
    streams = Streams([a, b], user, "clmig")
    try:
        streams.more(40, "the streams to run")
        migrate_slot(cluster, slot, source, target, streams)
    finally:
        every = streams.stop()
    assert not streams.errors, streams.errors
    assert_counted_once(every, 1000000)
    assert cluster.node_of_slot(slot) is target
    assert redis_stats(a)["redirects"] + redis_stats(b)["redirects"] >= 2


def test_redis_cli_reshard_mid_stream_loses_and_doubles_no_count(
        daemon_factory, workdir, pg, db, cluster):
    add_provider(pg, db, "clcli", per_day=1000000)
    a = start(daemon_factory, workdir, pg, db, cluster)
    b = start(daemon_factory, workdir, pg, db, cluster)
    source = cluster.nodes[0]
    first = min(start for start, end, primary, *_ in
                source.client().execute_command("CLUSTER", "SLOTS")
                if primary[1] == source.port)
    # A user whose slot is among the first 20 of the source's: redis-cli moves the lowest first.
    user = next(u for u in (str(uuid.uuid4()) for _ in range(100000))
                if first <= key_slot(u) < first + 20)
    assert key_slot(user) == cluster.keyslot(user)
    target = cluster.nodes[1]
    streams = Streams([a, b], user, "clcli")
    try:
        streams.more(40, "the streams to run")
        subprocess.run(["redis-cli", "--cluster", "reshard", source.tcp_address(),
                        "--cluster-from", cluster.node_id(source),
                        "--cluster-to", cluster.node_id(target),
                        "--cluster-slots", "20", "--cluster-yes"],
                       check=True, capture_output=True, timeout=120)
        streams.more(40, "checks after the reshard")
    finally:
        every = streams.stop()
    assert not streams.errors, streams.errors
    assert cluster.node_of_slot(key_slot(user)) is target
    assert_counted_once(every, 1000000)


def test_a_slot_moved_to_a_node_added_mid_stream_waits_for_its_connection(
        daemon_factory, workdir, pg, db, cluster):
    add_provider(pg, db, "clgrow", per_day=1000000)
    d = start(daemon_factory, workdir, pg, db, cluster)
    user = str(uuid.uuid4())
    slot = key_slot(user)
    source = cluster.node_of_slot(slot)
    streams = Streams([d], user, "clgrow")
    try:
        streams.more(40, "the stream to run")
        added = cluster.add_node()
        migrate_slot(cluster, slot, source, added, streams)
    finally:
        every = streams.stop()
    assert not streams.errors, streams.errors
    # The daemon first heard of the new node from ASK and MOVED: no check was answered by the
    # policy while it connected.
    assert_counted_once(every, 1000000)
    assert f"redis: connected to {added.tcp_address()}" in d.log_text()


def test_a_stopped_primary_affects_only_its_own_slots(daemon_factory, workdir, pg, db, cluster):
    add_provider(pg, db, "clstop", per_day=1000)
    d = start(daemon_factory, workdir, pg, db, cluster, policy="deny")
    users = [str(uuid.uuid4()) for _ in range(40)]
    owner = {u: cluster.node_of_slot(key_slot(u)) for u in users}
    victim = cluster.nodes[1]
    lost = [u for u in users if owner[u] is victim]
    kept = [u for u in users if owner[u] is not victim]
    assert lost and kept
    victim.kill()
    servers.wait_for(lambda: all(check(d.client(), u, "clstop", 0)["degraded"] for u in lost),
                     30, "the checks of the stopped primary's slots to be degraded")
    with d.client() as c:
        for u in lost:
            r = check(c, u, "clstop")
            assert r["degraded"] and not r["allowed"]  # on_redis_error: deny
        for u in kept:
            r = check(c, u, "clstop")
            assert not r["degraded"] and r["allowed"] and r["remaining_day"] == 999
    assert redis_stats(d)["state"] == "up"
    # Back, with its slots: exact again.
    victim.start()
    cluster.wait_ok()
    servers.wait_for(lambda: not check(d.client(), lost[0], "clstop", 0)["degraded"], 30,
                     "the checks of the restarted primary's slots to be exact again")
    with d.client() as c:
        r = check(c, lost[1] if len(lost) > 1 else lost[0], "clstop")
    assert not r["degraded"] and r["allowed"]


def test_a_password_protected_cluster_authenticates_every_node(
        daemon_factory, workdir, pg, db):
    add_provider(pg, db, "clauth", per_day=2)
    c = servers.Cluster(os.path.join(workdir, f"cluster-{uuid.uuid4().hex[:8]}"), n=3,
                        password="cluster-Pw").start()
    try:
        pw = os.path.join(workdir, "cluster-password")
        with open(pw, "w") as f:
            f.write("cluster-Pw\n")
        cfg = base_config(workdir, pg=pg, dbname=db)
        cfg += (f"redis:\n  cluster: [\"{c.addresses()[0]}\"]\n"
                f"  password_file: \"{pw}\"\n")
        cfg += "limits:\n  resync_s: 60\n  log_denied: false\n  on_redis_error: deny\n"
        d = daemon_factory(cfg)
        servers.wait_for(lambda: d.client().call("stats")["limits"]["limits_loads"] >= 1, 30,
                         "the limits to be loaded")
        servers.wait_for(lambda: redis_stats(d)["state"] == "up", 30, "the slot map")
        users = [str(uuid.uuid4()) for _ in range(30)]
        with d.client() as cl:
            answers = pipelined(cl, [(u, "clauth") for _ in range(3) for u in users])
        assert all(err is None and not r["degraded"] for err, r in answers)
        allowed = {}
        for u, (_, r) in zip([u for _ in range(3) for u in users], answers):
            allowed[u] = allowed.get(u, 0) + r["allowed"]
        assert set(allowed.values()) == {2}
        # Every node was reached, each after its own AUTH.
        assert all(n.client().dbsize() > 0 for n in c.nodes)
        assert redis_stats(d)["auth_failures"] == 0
    finally:
        c.stop()


def test_a_stopped_primary_s_replica_takes_over_its_slots_exact_again(
        daemon_factory, workdir, pg, db):
    add_provider(pg, db, "clrep", per_day=1000)
    c = servers.Cluster(os.path.join(workdir, f"cluster-{uuid.uuid4().hex[:8]}"), n=6,
                        replicas=1).start()
    try:
        d = start(daemon_factory, workdir, pg, db, c, policy="deny")
        users = [str(uuid.uuid4()) for _ in range(40)]
        victim = c.primaries()[0]
        lost = [u for u in users if c.node_of_slot(key_slot(u)) is victim]
        assert lost
        with d.client() as cl:
            for u in lost:
                assert not check(cl, u, "clrep")["degraded"]
        # Redis replicates asynchronously: a primary killed right after a write may take it with
        # it. The test is of the daemon following the new map, so the replica first acknowledges
        # every count the checks above made.
        with victim.client() as r:
            assert r.execute_command("WAIT", 1, 10000) == 1
        victim.kill()
        # The replica is promoted after cluster-node-timeout; the daemon reads the new map and
        # moves those slots' checks to it, whose counts it had replicated.
        servers.wait_for(lambda: not check(d.client(), lost[0], "clrep", 0)["degraded"], 60,
                         "the checks of the lost primary's slots to be exact again")
        with d.client() as cl:
            for u in lost:
                r = check(cl, u, "clrep")
                assert not r["degraded"] and r["allowed"] and r["remaining_day"] == 998
        assert victim not in c.primaries()
    finally:
        c.stop()



def errors(nodes, code):
    """The errors code (TRYAGAIN, ASK) the nodes have answered (INFO errorstats)."""
    total = 0
    for n in nodes:
        stat = n.client().info("errorstats").get(f"errorstat_{code}", "count=0")
        total += stat["count"] if isinstance(stat, dict) else int(stat.split("=")[1])
    return total


def test_a_settle_waits_while_its_slot_is_split_and_then_counts_on_the_new_node(
        daemon_factory, workdir, pg, db, cluster):
    # A settle learns which hashes it changes only from its reservation. While the user's slot
    # is being migrated, the reservation may be on one node and the hash on the other: the
    # settle must wait for the slot to move, not change a hash that is not there. So must a
    # check that makes a reservation (a key on neither node) once all the slot's keys have
    # moved and the slot has not: Redis answers it ASK, then TRYAGAIN, for as long as that
    # lasts, which is waiting, not redirect upon redirect.
    add_provider(pg, db, "clset", per_day=1000000)
    sql(pg, db, "INSERT INTO public.usage_limits (provider, dimension, period, amount) "
        "VALUES ('clset', 'tokens', 'day', 1000000)")
    d = start(daemon_factory, workdir, pg, db, cluster)
    user = str(uuid.uuid4())
    slot = key_slot(user)
    source = cluster.node_of_slot(slot)
    target = next(n for n in cluster.nodes if n is not source)

    def tokens_used(c):
        peek = c.call("check", {"user_id": user, "provider": "clset", "cost": 0})
        return next(r["used"] for r in peek["limits"] if r["dimension"] == "tokens")

    with d.client() as c:
        servers.wait_for(lambda: any(r["dimension"] == "tokens" for r in c.call(
            "check", {"user_id": user, "provider": "clset", "cost": 0})["limits"]), 30,
            "the tokens rule")
        resv = c.call("check", {"user_id": user, "provider": "clset", "tokens": 100})
        assert resv["allowed"] and tokens_used(c) == 100
    keys = source.client().execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
    hashes = [k for k in keys if b":r:" not in k]
    assert hashes and len(hashes) < len(keys)
    src_id, tgt_id = cluster.node_id(source), cluster.node_id(target)
    target.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    source.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", tgt_id)
    # The hash moves first; the reservation stays on the source.
    source.client().execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS",
                                    *hashes)
    tryagain, ask = errors([source, target], "TRYAGAIN"), errors([source], "ASK")
    answers = {}

    def call(name, method, params):
        with d.client() as c:
            answers[name] = c.call(method, params)

    settle = threading.Thread(target=call, args=("settle", "settle", {
        "reservation": resv["reservation"], "tokens": 30}))
    settle.start()
    more = None
    try:
        servers.wait_for(lambda: errors([source, target], "TRYAGAIN") > tryagain
                         or not settle.is_alive(), 10, "the settle to meet the split slot")
        assert settle.is_alive(), f"settled while the slot was split: {answers}"
        # Now the reservation moves too: the source answers ASK, the target TRYAGAIN.
        rest = source.client().execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
        source.client().execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000,
                                        "KEYS", *rest)
        more = threading.Thread(target=call, args=("check", "check", {
            "user_id": user, "provider": "clset", "tokens": 5}))
        more.start()
        servers.wait_for(lambda: errors([source], "ASK") > ask + 12
                         or not settle.is_alive() or not more.is_alive(), 10,
                         "the settle and the check to be sent back and forth")
        assert settle.is_alive() and more.is_alive(), answers
        for n in [target, source] + [n for n in cluster.nodes if n not in (target, source)]:
            n.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", tgt_id)
    finally:
        settle.join(30)
        if more:
            more.join(30)
    assert answers["settle"] == {"settled": True, "duplicate": False}
    assert answers["check"]["allowed"] and not answers["check"]["degraded"]
    with d.client() as c:
        assert tokens_used(c) == 35
    assert cluster.node_of_slot(slot) is target
