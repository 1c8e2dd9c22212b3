"""The TypeScript client (clients/node, the npm package usaged-client) against the real daemon.

The tests are node's own (node:test) files in clients/node/test/daemon/; each test here starts
the servers and the daemons they need, runs one of those files with `node --test`, and asserts it
passed. The package is installed from its lockfile (`npm ci`) and built with its own `tsc` first.
A test that restarts the daemon in the middle of a stream hands over through a marker file: the
node side writes it once its stream is running, this side then restarts the daemon."""

import fcntl
import glob
import os
import re
import shutil
import subprocess
import types

import pytest

from conftest import base_config, make_users, preload_env, sql, write_token
import servers

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = os.path.normpath(os.path.join(HERE, "../../clients/node"))
TOKEN = "node-client-token-91ad"
INGEST = "ingest:\n  batch_rows: 1000\n  batch_ms: 20\n"
# tiny: 3 a minute, to see denials; bulk: room for every check the tests send, and budgets for
# its model gpt-4o (which only checks that name that model meet).
BUDGET_RULE = "provider: bulk, model: gpt-4o, tokens_per_minute: 10000, spend_per_day: \"1\""
LIMITS = ("limits:\n  providers: { tiny: { per_minute: 3, per_day: 1000 }, "
          "bulk: { per_minute: 100000000, per_day: 1000000000 } }\n"
          f"  rules:\n    - {{ {BUDGET_RULE} }}\n")


def node_test_command():
    """`node --test`, with a per-test deadline where this Node has the flag (20.11 and later), so
    that a hung test is reported by name."""
    version = subprocess.run(["node", "-p", "process.versions.node"], capture_output=True,
                             text=True, check=True).stdout.strip()
    major, minor = (int(x) for x in version.split(".")[:2])
    return ["node", "--test"] + (["--test-timeout=30000"] if (major, minor) >= (20, 11) else [])


def npm(*args):
    subprocess.run(["npm", *args, "--no-audit", "--no-fund", "--loglevel=error"], cwd=PACKAGE,
                   check=True, stdout=subprocess.DEVNULL)


def newest_mtime(*paths):
    """The newest modification time of the files under paths (files or folders)."""
    newest = 0.0
    for path in paths:
        if os.path.isfile(path):
            newest = max(newest, os.path.getmtime(path))
        for root, _, files in os.walk(path):
            for name in files:
                newest = max(newest, os.path.getmtime(os.path.join(root, name)))
    return newest


@pytest.fixture(scope="module")
def package():
    """clients/node installed from its lockfile and built (dist/esm, dist/cjs), once: the test
    files that use it may run at the same time (meson runs two at once), and two `npm ci` in one
    folder remove each other's files, so the install and the build hold a lock, and a build
    newer than every source is kept rather than rewritten under a running test."""
    with open(os.path.join(PACKAGE, ".install.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        installed = os.path.join(PACKAGE, "node_modules", ".package-lock.json")
        lockfile = os.path.join(PACKAGE, "package-lock.json")
        if not os.path.exists(installed) or os.path.getmtime(installed) < os.path.getmtime(lockfile):
            npm("ci")
        stamp = os.path.join(PACKAGE, "dist", ".built")
        sources = [os.path.join(PACKAGE, x) for x in
                   ("src", "scripts", "package.json", "tsconfig.json", "tsconfig.cjs.json")]
        if not os.path.exists(stamp) or os.path.getmtime(stamp) < newest_mtime(*sources):
            npm("run", "build")
            open(stamp, "w").close()
    return PACKAGE


@pytest.fixture
def ctx(package, daemon_factory, workdir, pg, db, redis_server):
    """A daemon with auth on a migrated database; the environment the node tests read."""
    user = make_users(pg, db, 1)[0]
    cfg = (base_config(workdir, pg=pg, dbname=db, redis=redis_server) + INGEST + LIMITS
           + f"auth:\n  token_file: \"{write_token(workdir, TOKEN, 'node-token')}\"\n")
    # A small message limit, so that the daemon's own too_large can be seen.
    cfg = cfg.replace("listen:\n", "listen:\n  max_message_bytes: 65536\n", 1)
    d = daemon_factory(cfg, name="node")
    return types.SimpleNamespace(daemon=d, env=node_env(d, pg, db, user), pg=pg, db=db, user=user)


def run_node(env, *files, timeout=120):
    """node --test on files named from clients/node/test/."""
    return subprocess.run([*node_test_command(), *[os.path.join("test", f) for f in files]],
                          cwd=PACKAGE, env=env, capture_output=True, text=True, timeout=timeout)


def node_env(daemon, pg, db, user, **extra):
    """What clients/node/test/daemon/env.mjs reads: the daemon, its token, a user, the database."""
    return dict(os.environ, USAGED_SOCKET=daemon.socket, USAGED_TOKEN=TOKEN,
                USAGED_PID=str(daemon.proc.pid), USAGED_USER=user,
                USAGED_PSQL=f"{servers.PG_BIN}/psql", USAGED_PG_DSN=pg.dsn(db), **extra)


def assert_passed(r):
    out = r.stdout + r.stderr
    m = re.search(r"^# pass (\d+)$", r.stdout, re.M)
    assert r.returncode == 0 and m and int(m.group(1)) > 0, out
    assert re.search(r"^# fail 0$", r.stdout, re.M), out


def test_the_clients_unit_tests(package):
    """The client's own tests (wire mapping, framing, ids, headers, and its behaviour against a
    stand-in daemon: reconnects, retries, deadlines, close)."""
    files = sorted(glob.glob(os.path.join(PACKAGE, "test", "unit", "*.test.mjs")))
    r = subprocess.run([*node_test_command(), *files], cwd=PACKAGE, capture_output=True,
                       text=True, timeout=120)
    assert_passed(r)


def test_every_method_against_the_daemon(ctx):
    assert_passed(run_node(ctx.env, "daemon/methods.test.mjs"))


def test_budget_calls_against_the_daemon(ctx):
    """check's model, tokens and spend, settle, and log_prompt's reservation."""
    assert_passed(run_node(ctx.env, "budgets/budgets.test.mjs"))


def test_every_error_code_the_daemon_gives(ctx, daemon_factory, workdir, redis_server):
    # A second daemon whose PostgreSQL never answers (unavailable for providers it has not read),
    # that takes two connections (overloaded), and whose spool's fsyncs take 3 s each: a durable
    # log in flight holds its stop open long enough to see shutting_down.
    dead_pg = f"host=127.0.0.1 port={servers.free_port()} dbname=x user=x connect_timeout=1"
    cfg = (f"listen:\n  unix: \"@SOCKET@\"\n  max_connections: 2\n"
           f"postgres:\n  conninfo: \"{dead_pg}\"\n"
           f"redis:\n  address: \"{redis_server.address()}\"\n"
           f"spool:\n  dir: \"{os.path.join(workdir, 'nopg-spool')}\"\n")
    nopg = daemon_factory(cfg, name="nopg",
                          extra_env=preload_env(os.environ["USAGED_SLOWSYNC_LIB"],
                                                USAGED_SLOWSYNC_MS="3000"))
    env = dict(ctx.env, USAGED_SOCKET_NOPG=nopg.socket, USAGED_PID_NOPG=str(nopg.proc.pid))
    assert_passed(run_node(env, "daemon/errors.test.mjs"))


def test_ten_thousand_pipelined_checks(ctx):
    assert_passed(run_node(ctx.env, "daemon/pipeline.test.mjs"))


def run_node_handing_over(env, file, marker, what, then):
    """node --test on one file that writes `marker` at the point where this side must act: once
    it is there, then() runs, and the file goes on to its end."""
    proc = subprocess.Popen([*node_test_command(), os.path.join("test", file)],
                            cwd=PACKAGE, env=dict(env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        servers.wait_for(lambda: os.path.exists(marker) or proc.poll() is not None, 60, what)
        assert proc.poll() is None, proc.stdout.read()
        then()
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_passed(types.SimpleNamespace(returncode=proc.returncode, stdout=out, stderr=""))


def test_a_daemon_restart_in_the_middle_of_a_stream(ctx, workdir):
    marker = os.path.join(workdir, "node-streaming")

    def restart():
        assert ctx.daemon.stop() == 0
        ctx.daemon.start()
    run_node_handing_over(dict(ctx.env, USAGED_RESTART_MARKER=marker), "daemon/restart.test.mjs",
                          marker, "the node client's stream to start", restart)


def test_calls_fail_at_once_while_the_daemon_is_away(ctx, workdir):
    """The node side SIGKILLs the daemon: its checks fail at once with closed while it is away
    (and every call of a client with reconnect: false); it is started again once the node side
    has seen that, and checks succeed again."""
    marker = os.path.join(workdir, "node-away")

    def start_again():
        ctx.daemon.kill()  # reaps the process the node side killed
        ctx.daemon.start()
    run_node_handing_over(dict(ctx.env, USAGED_AWAY_MARKER=marker), "daemon/away.test.mjs",
                          marker, "the node client to see the daemon away", start_again)


def test_the_packed_tarball_installs_and_works_in_a_fresh_project(ctx, workdir):
    """`npm pack`, then a project outside the repo installs the tarball (its one dependency from
    the registry) and runs the README's example, from ESM and from CommonJS."""
    app = os.path.join(workdir, "fresh-app")
    os.makedirs(app)
    tgz = subprocess.run(["npm", "pack", "--ignore-scripts", "--pack-destination", app,
                          "--loglevel=error"],
                         cwd=PACKAGE, check=True, capture_output=True, text=True).stdout.split()[-1]
    with open(os.path.join(app, "package.json"), "w") as f:
        f.write('{ "name": "fresh-app", "private": true }\n')
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error",
                    os.path.join(app, tgz)], cwd=app, check=True, stdout=subprocess.DEVNULL)
    shutil.copy(os.path.join(PACKAGE, "test", "daemon", "readme-example.mjs"), app)
    shutil.copy(os.path.join(PACKAGE, "test", "daemon", "readme-example.cjs"), app)
    for script in ("readme-example.mjs", "readme-example.cjs"):
        r = subprocess.run(["node", script], cwd=app, env=ctx.env, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr
    servers.wait_for(lambda: sql(ctx.pg, ctx.db, "SELECT count(*) FROM public.api_usage_logs "
                                 "WHERE endpoint = 'readme-example'")[0][0] == 2, 30,
                     "the two examples' rows")
