"""usaged-client's calls of issue 15's additions (`usage`, and `concurrent` rules) against the
real daemon: clients/node/test/budgets/usage.test.mjs. The other budget calls run from
test_node_client.py."""

from conftest import base_config, make_users, write_token
from test_node_client import (BUDGET_RULE, INGEST, TOKEN, assert_passed, node_env,  # noqa: F401
                              package, run_node)

LIMITS = ("limits:\n  providers: { bulk: { per_minute: 100000000, per_day: 1000000000 } }\n"
          f"  rules:\n    - {{ {BUDGET_RULE}, concurrent: 2 }}\n")


def test_usage_and_concurrent_rules_through_the_client(package, daemon_factory, workdir,  # noqa: F811
                                                       pg, db, redis_server):
    user = make_users(pg, db, 1)[0]
    cfg = (base_config(workdir, pg=pg, dbname=db, redis=redis_server) + INGEST + LIMITS
           + f"auth:\n  token_file: \"{write_token(workdir, TOKEN, 'node-token')}\"\n")
    d = daemon_factory(cfg, name="budgets")
    assert_passed(run_node(node_env(d, pg, db, user), "budgets/usage.test.mjs"))
