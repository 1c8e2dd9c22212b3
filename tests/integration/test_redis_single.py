"""Redis with a password: AUTH (as an ACL user, or the default user) on every connection before
anything else; a wrong password is one log line and the fallback policy, never in a log or stats;
a rediss:// address is refused with the way to reach a TLS Redis."""

import os
import subprocess
import uuid

import pytest

from conftest import base_config
from usaged_client import USAGED_BIN
import servers
from test_limits import add_provider, check, wait_for_fresh_minute

PASSWORD = "s3cret-Pa55word-for-tests"
APP_PASSWORD = "app-only-Pa55"
# What docs/operations.md says an ACL user needs (keys under the prefix; the commands the daemon
# and its script send).
APP_ACL = ["~usaged:*", "+role", "+script|load", "+eval", "+evalsha", "+asking",
           "+cluster|slots", "+time", "+hget", "+hmget", "+hincrby", "+hset", "+hsetnx",
           "+hdel", "+expire", "+get", "+set"]


@pytest.fixture(scope="module")
def redis_server(workdir):
    """A Redis that takes nothing without AUTH: the default user has a password, and the ACL
    user `app` another, with only the keys and commands docs/operations.md lists."""
    server = servers.Redis(os.path.join(workdir, "redis-auth"), password=PASSWORD,
                           users={"app": (APP_PASSWORD, APP_ACL)}).start()
    yield server
    server.stop()


def password_file(workdir, name, text):
    path = os.path.join(workdir, name)
    with open(path, "w") as f:
        f.write(text + "\n")
    os.chmod(path, 0o600)
    return path


def start(daemon_factory, workdir, pg, db, redis_server, redis_keys, limits=""):
    cfg = base_config(workdir, pg=pg, dbname=db)
    cfg += f"redis:\n  address: \"{redis_server.address()}\"\n  reconnect_max_ms: 100\n"
    cfg += redis_keys
    cfg += "limits:\n  resync_s: 60\n  log_denied: false\n" + limits
    d = daemon_factory(cfg)
    servers.wait_for(lambda: d.client().call("stats")["limits"]["limits_loads"] >= 1, 30,
                     "the limits to be loaded")
    return d


def test_an_acl_user_authenticates_and_two_daemons_share_exact_limits(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "aclfive", per_minute=5, per_day=1000)
    pw = password_file(workdir, "app-password", APP_PASSWORD)
    keys = f"  username: app\n  password_file: \"{pw}\"\n"
    a = start(daemon_factory, workdir, pg, db, redis_server, keys)
    b = start(daemon_factory, workdir, pg, db, redis_server, keys)
    user = str(uuid.uuid4())
    wait_for_fresh_minute_auth(redis_server)
    with a.client() as ca, b.client() as cb:
        answers = []
        for i in range(8):
            answers.append(check(ca if i % 2 == 0 else cb, user, "aclfive"))
    assert [r["allowed"] for r in answers] == [True] * 5 + [False] * 3
    assert not any(r["degraded"] for r in answers)
    # The counters were written as the ACL user, in the one Redis both daemons share.
    clients = redis_server.client(decode_responses=True).client_list()
    assert sum(1 for c in clients if c["user"] == "app") >= 2


def wait_for_fresh_minute_auth(redis_server):
    r = redis_server.client()
    servers.wait_for(lambda: int(r.time()[0]) % 60 < 45, 20, "a fresh minute")
    r.close()


def test_the_default_user_authenticates_with_the_password_alone(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "deffive", per_minute=5, per_day=1000)
    pw = password_file(workdir, "default-password", PASSWORD)
    d = start(daemon_factory, workdir, pg, db, redis_server, f"  password_file: \"{pw}\"\n")
    with d.client() as c:
        r = check(c, str(uuid.uuid4()), "deffive")
    assert r["allowed"] and not r["degraded"] and r["remaining_minute"] in (4, 5)


def test_a_wrong_password_is_one_log_line_and_the_policy_and_never_shown(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "wrongpw", per_minute=5, per_day=1000)
    wrong = "not-the-Right-0ne"
    pw = password_file(workdir, "wrong-password", wrong)
    d = start(daemon_factory, workdir, pg, db, redis_server,
              f"  username: app\n  password_file: \"{pw}\"\n",
              limits="  on_redis_error: deny\n")
    # Retried every 100 ms at most (reconnect_max_ms): many refusals, one line.
    servers.wait_for(lambda: d.client().call("stats")["limits"]["redis"]["auth_failures"] >= 5,
                     30, "several refused attempts")
    with d.client() as c:
        r = check(c, str(uuid.uuid4()), "wrongpw")
        stats = c.call("stats")
    assert r["degraded"] and not r["allowed"]  # on_redis_error: deny
    assert stats["limits"]["redis"]["state"] == "down"
    log = d.log_text()
    refused = [line for line in log.splitlines() if "AUTH refused" in line]
    assert len(refused) == 1, refused
    assert "WRONGPASS" in refused[0]
    assert wrong not in log and wrong not in repr(stats)
    assert d.proc.poll() is None


def test_no_password_against_a_server_that_wants_one_is_logged_once(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "nopw", per_minute=5, per_day=1000)
    d = start(daemon_factory, workdir, pg, db, redis_server, "",
              limits="  on_redis_error: allow\n")
    servers.wait_for(
        lambda: d.client().call("stats")["limits"]["redis"]["connect_failures"] >= 5, 30,
        "several failed attempts")
    with d.client() as c:
        r = check(c, str(uuid.uuid4()), "nopw")
    assert r["degraded"] and r["allowed"]
    lines = [line for line in d.log_text().splitlines() if "NOAUTH" in line]
    assert len(lines) == 1, lines


def test_an_unreadable_password_file_leaves_checks_to_the_policy(
        daemon_factory, workdir, pg, db, redis_server):
    add_provider(pg, db, "nofile", per_minute=5, per_day=1000)
    missing = os.path.join(workdir, "no-such-password")
    d = start(daemon_factory, workdir, pg, db, redis_server,
              f"  password_file: \"{missing}\"\n", limits="  on_redis_error: deny\n")
    with d.client() as c:
        r = check(c, str(uuid.uuid4()), "nofile")
    assert r["degraded"] and not r["allowed"]
    assert f"redis.password_file {missing}: No such file or directory" in d.log_text()


def test_a_tls_address_is_refused_at_start_with_the_way_to_reach_one(workdir):
    cfg = os.path.join(workdir, "tls.yaml")
    with open(cfg, "w") as f:
        f.write("redis:\n  address: \"rediss://cache.example.com:6380\"\n")
    r = subprocess.run([USAGED_BIN, "--check-config", "-c", cfg], capture_output=True, text=True)
    assert r.returncode != 0
    assert f"{cfg}:2:12: redis.address: rediss:// (TLS) is not supported" in r.stderr
    assert "stunnel" in r.stderr


def test_a_server_turned_replica_drops_the_connection_until_it_is_a_primary_again(
        daemon_factory, workdir, pg, db):
    add_provider(pg, db, "turned", per_day=1000)
    root = os.path.join(workdir, f"turned-{uuid.uuid4().hex[:8]}")
    a = servers.Redis(os.path.join(root, "a"), tcp=True).start()
    b = servers.Redis(os.path.join(root, "b"), tcp=True).start()
    try:
        cfg = base_config(workdir, pg=pg, dbname=db)
        cfg += f"redis:\n  address: \"{a.address()}\"\n  reconnect_max_ms: 100\n"
        cfg += "limits:\n  resync_s: 60\n  log_denied: false\n  on_redis_error: deny\n"
        d = daemon_factory(cfg)
        servers.wait_for(lambda: d.client().call("stats")["limits"]["limits_loads"] >= 1, 30,
                         "the limits to be loaded")
        user = str(uuid.uuid4())
        with d.client() as c:
            assert not check(c, user, "turned")["degraded"]
            a.client().replicaof("127.0.0.1", b.port)
            # The script's write is refused (READONLY): the policy answers, and the connection
            # goes, again at each reconnect, with one log line.
            r = check(c, user, "turned")
            assert r["degraded"] and not r["allowed"]
            def refused_again():
                assert check(c, user, "turned")["degraded"]
                return d.client().call("stats")["limits"]["redis"]["connects"] >= 4
            servers.wait_for(refused_again, 30, "several connects to the replica")
            lines = [x for x in d.log_text().splitlines() if "READONLY" in x and "lost" in x]
            assert len(lines) == 1, lines
            a.client().replicaof("NO", "ONE")
            servers.wait_for(lambda: not check(c, user, "turned", 0)["degraded"], 30,
                             "exact answers once it is a primary again")
    finally:
        a.stop()
        b.stop()
