"""usaged-client's budget calls (check's model/tokens/spend, settle, usage, log_prompt's
reservation) against the real daemon: clients/node/test/budgets/budgets.test.mjs.

Not wired into tests/meson.build yet: the daemon does not have these methods. Once it does, add
['node_budgets', 180] to integration_tests there."""

import os

from conftest import base_config, make_users, write_token
from test_node_client import INGEST, PACKAGE, TOKEN, assert_passed, node_test_command, package  # noqa: F401
import servers
import subprocess

RULES = ("limits:\n  providers: { bulk: { per_minute: 100000000, per_day: 1000000000 } }\n"
         "  rules:\n    - { provider: bulk, model: gpt-4o, tokens_per_minute: 10000, "
         "spend_per_day: \"1\", concurrent: 2 }\n")


def test_budgets_through_the_client(package, daemon_factory, workdir, pg, db, redis_server):  # noqa: F811
    user = make_users(pg, db, 1)[0]
    cfg = (base_config(workdir, pg=pg, dbname=db, redis=redis_server) + INGEST + RULES
           + f"auth:\n  token_file: \"{write_token(workdir, TOKEN, 'node-token')}\"\n")
    d = daemon_factory(cfg, name="budgets")
    env = dict(os.environ, USAGED_SOCKET=d.socket, USAGED_TOKEN=TOKEN, USAGED_PID=str(d.proc.pid),
               USAGED_USER=user, USAGED_PSQL=f"{servers.PG_BIN}/psql", USAGED_PG_DSN=pg.dsn(db))
    r = subprocess.run([*node_test_command(), os.path.join("test", "budgets", "budgets.test.mjs")],
                       cwd=PACKAGE, env=env, capture_output=True, text=True, timeout=120)
    assert_passed(r)
