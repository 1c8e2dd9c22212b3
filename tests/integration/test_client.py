"""The C client library (include/usaged/client.h) and usagectl, against the real daemon.

The library's tests are the C program tests/client/test_client.c: each Python test here runs one
of its named tests against a daemon with auth configured, then checks what reached PostgreSQL.
usagectl is run as scripts run it: exit codes, --help, and output that parses."""

import json
import os
import subprocess
import types

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import base_config, make_users, sql, write_token
from usaged_client import Client
import servers

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.join(HERE, "../../build")
USAGECTL_BIN = os.environ.get("USAGECTL_BIN", os.path.join(BUILD, "usagectl"))
CLIENT_TEST_BIN = os.environ.get("USAGED_CLIENT_TEST_BIN", os.path.join(BUILD, "tests/test_client"))
BUILD_DIR = os.environ.get("USAGED_BUILD_DIR", os.path.dirname(os.path.abspath(USAGECTL_BIN)))

TOKEN = "client-test-token-4f1c"
INGEST = "ingest:\n  batch_rows: 1000\n  batch_ms: 20\n"


@pytest.fixture
def authed(daemon_factory, workdir, pg, db, redis_server):
    """A daemon with auth.token_file, on a migrated database with one user."""
    user = make_users(pg, db, 1)[0]
    cfg = base_config(workdir, pg=pg, dbname=db, redis=redis_server) + INGEST
    cfg += f"auth:\n  token_file: \"{write_token(workdir, TOKEN)}\"\n"
    return types.SimpleNamespace(daemon=daemon_factory(cfg), user=user, db=db, pg=pg)


@pytest.fixture
def plain(daemon_factory, workdir, pg, db, redis_server):
    """A daemon without auth, on a migrated database with one user."""
    user = make_users(pg, db, 1)[0]
    cfg = base_config(workdir, pg=pg, dbname=db, redis=redis_server) + INGEST
    return types.SimpleNamespace(daemon=daemon_factory(cfg), user=user, db=db, pg=pg)


def run_c(ctx, test, token=TOKEN):
    return subprocess.run([CLIENT_TEST_BIN, "-s", ctx.daemon.socket, "-T", token,
                           "-u", ctx.user, test], capture_output=True, text=True, timeout=60)


def passes(ctx, test):
    r = run_c(ctx, test)
    assert r.returncode == 0 and r.stdout.strip() == f"ok {test}", r.stdout + r.stderr


def rows(ctx, table, column, value):
    return sql(ctx.pg, ctx.db, f"SELECT count(*) FROM public.{table} WHERE {column} = %s",
               (value,))[0][0]


def wait_rows(ctx, table, column, value, n):
    servers.wait_for(lambda: rows(ctx, table, column, value) >= n, 30,
                     f"{n} rows of {table} with {column} = {value}")
    assert rows(ctx, table, column, value) == n


def authed_stats(ctx):
    with ctx.daemon.client() as c:
        c.call("auth", TOKEN)
        return c.call("stats")


# ---------------------------------------------------------------------------------------------
# The C client library

def test_ping_answers_with_version_and_protocol(authed):
    passes(authed, "ping")


def test_requests_before_auth_are_unauthorized(authed):
    passes(authed, "requests_before_auth_are_unauthorized")


def test_a_wrong_token_is_refused_and_the_connection_closed(authed):
    passes(authed, "a_wrong_token_is_refused_and_the_connection_closed")


def test_auth_with_the_token_allows_requests(authed):
    passes(authed, "auth_with_the_token_allows_requests")


def test_stats_returns_the_stats_map(authed):
    passes(authed, "stats")


def test_log_usage_single_queued_lands_one_row(authed):
    passes(authed, "log_usage_single_queued")
    wait_rows(authed, "api_usage_logs", "provider", "c-usage-single", 1)


def test_log_usage_batch_durable_is_committed_when_acked(authed):
    passes(authed, "log_usage_batch_durable")
    assert rows(authed, "api_usage_logs", "provider", "c-usage-durable") == 3


def test_log_usage_notification_lands_its_rows(authed):
    passes(authed, "log_usage_notification")
    wait_rows(authed, "api_usage_logs", "provider", "c-usage-notify", 2)


def test_log_usage_invalid_field_names_field_and_index_and_keeps_nothing(authed):
    passes(authed, "log_usage_invalid_field")
    assert authed_stats(authed)["ingest"]["events_rejected"]["invalid_field"] == 3
    assert rows(authed, "api_usage_logs", "provider", "c-usage-invalid") == 0


def test_log_prompt_single_queued_lands_one_row(authed):
    passes(authed, "log_prompt_single_queued")
    wait_rows(authed, "prompt_history", "model", "c-prompt-single", 1)


def test_log_prompt_batch_durable_is_committed_when_acked(authed):
    passes(authed, "log_prompt_batch_durable")
    assert rows(authed, "prompt_history", "model", "c-prompt-durable") == 3


def test_log_prompt_notification_lands_its_row(authed):
    passes(authed, "log_prompt_notification")
    wait_rows(authed, "prompt_history", "model", "c-prompt-notify", 1)


def test_log_prompt_invalid_field_names_field_and_index_and_keeps_nothing(authed):
    passes(authed, "log_prompt_invalid_field")
    assert authed_stats(authed)["ingest"]["events_rejected"]["invalid_field"] == 2
    assert rows(authed, "prompt_history", "model", "c-prompt-invalid") == 0


def test_a_missing_required_field_is_an_argument_error_that_sends_nothing(authed):
    passes(authed, "a_missing_required_field_is_an_argument_error")
    received = authed_stats(authed)["ingest"]["events_received"]
    assert received == 0


def test_pipelined_answers_are_waited_for_in_reverse_order(authed):
    passes(authed, "pipelined_answers_are_waited_for_in_reverse_order")


def test_waiting_for_an_unsent_msgid_times_out(authed):
    passes(authed, "waiting_for_an_unsent_msgid_times_out")


def test_a_long_pipeline_is_flushed_without_waiting_first(authed):
    passes(authed, "a_long_pipeline_is_flushed_without_waiting_first")


def test_connecting_to_a_full_listen_queue_times_out(authed):
    passes(authed, "connecting_to_a_full_listen_queue_times_out")


def test_check_answers_with_a_coherent_result(authed):
    passes(authed, "check")


def wait_for_tokens_rule(ctx):
    """Waits until the daemon's check answers name a tokens rule for openai; the last answer
    is in the message if it never does."""
    last = []

    def applied():
        with ctx.daemon.client() as c:
            err, r = c.wait(c.send_request("check", [{"user_id": ctx.user, "provider": "openai",
                                                      "cost": 0}]))
            last[:] = [err, r]
            # unavailable: the daemon has not read the limits yet, right after its start
            return err is None and any(x["dimension"] == "tokens" for x in r["limits"])
    try:
        servers.wait_for(applied, 30, "the tokens rule")
    except TimeoutError as e:
        raise TimeoutError(f"{e}; the last answer: {last}") from None


def with_tokens_rule(ctx, amount=1000):
    """Adds usage_limits' openai tokens-per-day rule and waits until the daemon (without auth:
    the `plain` fixture) applies it."""
    sql(ctx.pg, ctx.db, "INSERT INTO public.usage_limits (provider, dimension, period, amount) "
        "VALUES ('openai', 'tokens', 'day', %s)", (amount,))
    wait_for_tokens_rule(ctx)


def passes_without_auth(ctx, test):
    r = subprocess.run([CLIENT_TEST_BIN, "-s", ctx.daemon.socket, "-u", ctx.user, test],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"ok {test}", r.stdout + r.stderr


def test_budget_check_reserves_and_settle_applies_once(plain):
    with_tokens_rule(plain)
    passes_without_auth(plain, "budget_check_reserves_and_settle_applies_once")


def test_log_prompt_with_a_reservation_settles_it(plain):
    with_tokens_rule(plain)
    passes_without_auth(plain, "log_prompt_with_a_reservation_settles_it")
    wait_rows(plain, "prompt_history", "model", "c-prompt-reserved", 1)


def test_budget_shadow_rules_and_usage_flags(plain):
    sql(plain.pg, plain.db, "INSERT INTO public.usage_limits (provider, dimension, period, "
        "amount, shadow) VALUES ('openai', 'tokens', 'minute', 100, true)")
    with_tokens_rule(plain)
    passes_without_auth(plain, "budget_shadow_rules_and_usage_flags")


def test_an_unknown_test_name_is_a_usage_error(authed):
    assert run_c(authed, "no_such_test").returncode == 2


def sanitizer_flags(lib):
    """A program linking a sanitized library must be built with the same sanitizers."""
    with open(lib, "rb") as f:
        data = f.read()
    flags = []
    if b"__asan_" in data:
        flags.append("-fsanitize=address")
    if b"__ubsan_" in data:
        flags.append("-fsanitize=undefined")
    return flags


def test_a_program_builds_against_the_pkg_config_file_and_talks_to_the_daemon(authed, workdir):
    src = os.path.join(workdir, "tiny.c")
    exe = os.path.join(workdir, "tiny")
    with open(src, "w") as f:
        f.write("""
#include <stdio.h>
#include <usaged/client.h>
int main(int argc, char **argv)
{
    char err[256];
    usaged_client *c = usaged_connect(argv[1], 5000, err, sizeof(err));
    struct usaged_ping_result p;
    if (!c || usaged_auth(c, argv[2]) != USAGED_OK || usaged_ping(c, &p) != USAGED_OK)
        return 1;
    printf("protocol %u\\n", p.protocol);
    usaged_close(c);
    return 0;
}
""")
    env = dict(os.environ, PKG_CONFIG_PATH=os.path.join(BUILD_DIR, "meson-uninstalled"))
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "usaged-client"], env=env,
                           capture_output=True, text=True, check=True).stdout.split()
    lib = os.path.join(BUILD_DIR, "libusaged-client.so")
    subprocess.run(["cc", "-o", exe, src, *flags, *sanitizer_flags(os.path.realpath(lib))],
                   check=True, capture_output=True, text=True)
    r = subprocess.run([exe, authed.daemon.socket, TOKEN], capture_output=True, text=True,
                       env=dict(os.environ, LD_LIBRARY_PATH=BUILD_DIR), timeout=30)
    assert r.returncode == 0 and r.stdout == "protocol 1\n", r.stderr


# ---------------------------------------------------------------------------------------------
# usagectl

def usagectl(*args, socket=None, timeout=30):
    argv = [USAGECTL_BIN] + (["-s", socket] if socket else []) + list(args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def test_usagectl_ping_exits_zero(plain):
    r = usagectl("ping", socket=plain.daemon.socket)
    assert r.returncode == 0, r.stderr
    assert "protocol 1" in r.stdout


def test_usagectl_an_error_answer_exits_one(plain):
    r = usagectl("call", "no_such_method", socket=plain.daemon.socket)
    assert r.returncode == 1
    assert "unknown_method" in r.stderr


def test_usagectl_an_invalid_event_exits_one_naming_the_field(plain):
    r = usagectl("log-usage", f"user_id={plain.user}", "provider=openai", "status_code=7000",
                 socket=plain.daemon.socket)
    assert r.returncode == 1
    assert "invalid_field" in r.stderr and "(field status_code, index 0)" in r.stderr


@pytest.fixture
def tokens_100(daemon_factory, workdir, pg, db, redis_server):
    """A daemon without auth whose config limits openai to 100 tokens a day per user."""
    user = make_users(pg, db, 1)[0]
    cfg = (base_config(workdir, pg=pg, dbname=db, redis=redis_server) + INGEST
           + "limits:\n  rules:\n    - { provider: openai, tokens_per_day: 100 }\n")
    ctx = types.SimpleNamespace(daemon=daemon_factory(cfg), user=user, db=db, pg=pg)
    wait_for_tokens_rule(ctx)
    return ctx


def test_usagectl_check_with_tokens_then_settle(tokens_100):
    plain = tokens_100
    sock = plain.daemon.socket
    r = usagectl("check", plain.user, "openai", "--tokens", "80", "--model", "gpt-4o",
                 "--spend", "0.5", socket=sock)
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    assert answer["allowed"] and answer["reservation"]
    denied = usagectl("check", plain.user, "openai", "--tokens", "30", socket=sock)
    assert denied.returncode == 1 and json.loads(denied.stdout)["reason"] == "day_limit"
    r = usagectl("settle", answer["reservation"], "--tokens", "10", socket=sock)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"settled": True, "duplicate": False}
    again = usagectl("settle", answer["reservation"], "--cancel", socket=sock)
    assert again.returncode == 0 and json.loads(again.stdout)["duplicate"] is True
    assert usagectl("check", plain.user, "openai", "--tokens", "30", socket=sock).returncode == 0
    unknown = usagectl("settle", plain.user + ".0123456789abcdef", socket=sock)
    assert unknown.returncode == 1 and "unknown_reservation" in unknown.stderr
    # A field of check's params has no event index to name.
    bad = usagectl("check", plain.user, "openai", "--spend", "0.1234567", socket=sock)
    assert bad.returncode == 1 and bad.stderr.rstrip().endswith("(field spend)"), bad.stderr


@pytest.mark.parametrize("args", [
    [], ["frobnicate"], ["check", "only-a-user"], ["check", "u", "p", "--tokens", "-1"],
    ["check", "u", "p", "--cost"], ["settle"], ["settle", "r", "--tokens", "x"], ["-t", "soon", "ping"], ["ping", "extra"],
    ["log-usage", "not-a-pair"], ["stats", "--yaml"], ["migrate"],
], ids=lambda a: " ".join(a) or "nothing")
def test_usagectl_bad_usage_exits_two(plain, args):
    r = usagectl(*args, socket=plain.daemon.socket)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("usage: usagectl") or r.stderr.startswith("usagectl: "), r.stderr
    assert r.stdout == ""


def test_usagectl_socket_is_a_path_even_a_relative_one_without_a_slash(plain):
    # "usaged.sock" alone would read as host:port if it were taken as an address.
    directory, name = os.path.split(plain.daemon.socket)
    r = subprocess.run([USAGECTL_BIN, "-s", name, "ping"], capture_output=True, text=True,
                       timeout=30, cwd=directory)
    assert r.returncode == 0, r.stderr
    assert "protocol 1" in r.stdout


def test_usagectl_an_unreachable_daemon_exits_three(workdir):
    r = usagectl("ping", socket=os.path.join(workdir, "nobody-listens.sock"))
    assert r.returncode == 3
    assert "cannot connect" in r.stderr


@pytest.mark.parametrize("command", ["ping", "stats", "check", "log-usage", "log-prompt", "call",
                                     "migrate"])
def test_usagectl_help_of_each_command_exits_zero(command, workdir):
    # No daemon: help must not need one.
    r = usagectl(command, "--help", socket=os.path.join(workdir, "nobody-listens.sock"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: usagectl") and command in r.stdout.splitlines()[0]


def test_usagectl_help_exits_zero():
    r = usagectl("--help")
    assert r.returncode == 0
    assert "exit codes" in r.stdout


def test_usagectl_stats_json_parses_as_json(plain):
    r = usagectl("stats", "--json", socket=plain.daemon.socket)
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["connections"]["open"] >= 1
    assert "api_usage_logs" in stats["ingest"]["tables"]


def test_usagectl_stats_prometheus_parses_as_the_text_exposition_format(plain):
    with plain.daemon.client() as c:
        c.send_request("no_such_method", [])  # one error, for the errors family
        c.read_message()
    r = usagectl("stats", "--prometheus", socket=plain.daemon.socket)
    assert r.returncode == 0, r.stderr
    families = {f.name: f for f in text_string_to_metric_families(r.stdout)}
    assert families["usaged_connections_open"].type == "gauge"
    assert families["usaged_connections_open"].samples[0].value >= 1
    errors = {s.labels["code"]: s.value for s in families["usaged_errors"].samples}
    assert errors["unknown_method"] == 1 and errors["bad_request"] == 0
    written = families["usaged_ingest_tables_rows_written"].samples
    assert {s.labels["table"] for s in written} == {"api_usage_logs", "prompt_history"}
    assert families["usaged_version_info"].samples[0].labels["version"]
    # Each family once: a repeated # TYPE would make the parser start a second family.
    names = [f.name for f in text_string_to_metric_families(r.stdout)]
    assert len(names) == len(set(names))


def test_usagectl_stats_human_form_has_one_line_per_figure(plain):
    r = usagectl("stats", socket=plain.daemon.socket)
    assert r.returncode == 0, r.stderr
    lines = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines()}
    assert int(lines["connections.open"]) >= 1


def test_usagectl_log_usage_key_value_lands_a_row(plain):
    r = usagectl("log-usage", f"user_id={plain.user}", "provider=ctl-usage", "status_code=201",
                 "response_time_ms=12", "--ack", "durable", socket=plain.daemon.socket)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"accepted": 1}
    got = sql(plain.pg, plain.db, "SELECT status_code, response_time_ms FROM public.api_usage_logs "
              "WHERE provider = 'ctl-usage'")
    assert got == [(201, 12)]


def test_usagectl_log_prompt_key_value_lands_a_row(plain):
    r = usagectl("log-prompt", f"user_id={plain.user}", "status=completed", "model=ctl-prompt",
                 "temperature=0.5", "tokens_used=99", "--ack", "durable",
                 socket=plain.daemon.socket)
    assert r.returncode == 0, r.stderr
    got = sql(plain.pg, plain.db, "SELECT temperature, tokens_used FROM public.prompt_history "
              "WHERE model = 'ctl-prompt'")
    assert [(float(t), n) for t, n in got] == [(0.5, 99)]


def test_usagectl_token_file_authenticates(authed, workdir):
    token_file = os.path.join(workdir, "token")
    assert usagectl("-T", token_file, "ping", socket=authed.daemon.socket).returncode == 0
    r = usagectl("ping", socket=authed.daemon.socket)
    assert r.returncode == 1 and "unauthorized" in r.stderr
