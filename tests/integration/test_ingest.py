"""log_usage and log_prompt end to end: validation at the socket, batched binary COPY into the real
PostgreSQL, acks, repeated ids, poison rows, outages, backpressure and the drain on SIGTERM."""

import datetime
import decimal
import os
import signal
import threading
import time
import uuid

import msgpack
import pytest

from conftest import base_config, make_users, sql
from usaged_client import Client, Closed, RpcError
import servers

UTC = datetime.timezone.utc


def start(daemon_factory, workdir, pg, db, ingest="", extra=""):
    cfg = base_config(workdir, pg=pg, dbname=db)
    if "spool:" in extra:  # replace the default spool section, keeping its dir
        cfg = cfg.replace("spool:\n", extra.split("\n", 1)[0] + "\n" + extra.split("\n", 1)[1], 1)
        extra = ""
    cfg += "ingest:\n" + (ingest or "  batch_rows: 1000\n  batch_ms: 20\n") + extra
    return daemon_factory(cfg)


def count(pg, db, table="api_usage_logs", where="true"):
    return sql(pg, db, f"SELECT count(*) FROM public.{table} WHERE {where}")[0][0]


def wait_count(pg, db, n, table="api_usage_logs", timeout=60):
    servers.wait_for(lambda: count(pg, db, table) >= n, timeout, f"{n} rows in {table}")
    assert count(pg, db, table) == n


def v7(ms):
    """A UUIDv7 with the given millisecond timestamp."""
    rand = uuid.uuid4().int & ((1 << 74) - 1)
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


# ---------------------------------------------------------------------------------------------
# Round trips

def test_a_queued_request_is_acked_and_its_rows_land_with_every_field(
        daemon_factory, workdir, pg, db):
    user = make_users(pg, db, 1)[0]
    d = start(daemon_factory, workdir, pg, db)
    ts = datetime.datetime(2026, 3, 4, 5, 6, 7, 123000, tzinfo=UTC)
    events = [
        {"id": str(uuid.uuid4()), "user_id": user, "provider": "openai", "endpoint": "/v1/chat",
         "request_size": 0, "response_size": 2**31 - 1, "response_time_ms": 15,
         "status_code": 200, "error_message": "", "created_at": int(ts.timestamp() * 1000)},
        {"id": str(uuid.uuid4()), "user_id": user, "provider": "ánthropic ✓",
         "endpoint": None, "status_code": 599, "error_message": "überlastet 🚀",
         "created_at": msgpack.Timestamp(1772600767, 123000000)},
    ]
    with d.client() as c:
        assert c.call("log_usage", events) == {"accepted": 2}
    wait_count(pg, db, 2)
    rows = sql(pg, db, "SELECT id::text, user_id::text, provider, endpoint, request_size, "
               "response_size, response_time_ms, status_code, error_message, created_at "
               "FROM public.api_usage_logs ORDER BY status_code")
    assert rows[0] == (events[0]["id"], user, "openai", "/v1/chat", 0, 2**31 - 1, 15, 200, "", ts)
    assert rows[1] == (events[1]["id"], user, "ánthropic ✓", None, None, None, None, 599,
                       "überlastet 🚀", ts)


def test_a_postgres_host_given_by_name_is_looked_up_and_the_rows_land(
        daemon_factory, workdir, pg, db):
    """The daemon looks host names up itself, off the event loop (libpq would block it inside
    PQconnectPoll), and hands libpq the address beside the name."""
    user = make_users(pg, db, 1)[0]
    cfg = base_config(workdir, pg=pg, dbname=db)
    cfg = cfg.replace(f"conninfo: \"host={pg.sockdir} ", "conninfo: \"host=localhost ", 1)
    assert "host=localhost" in cfg
    d = daemon_factory(cfg + "ingest:\n  batch_ms: 20\n")
    with d.client() as c:
        assert c.call("log_usage", [{"user_id": user, "provider": "byname", "status_code": 200}],
                      {"ack": "durable"}) == {"accepted": 1}
    assert count(pg, db, where="provider = 'byname'") == 1
    # The ingest connections came over TCP to the address localhost names.
    addrs = sql(pg, db, "SELECT DISTINCT host(client_addr) FROM pg_stat_activity "
                "WHERE usename = 'usaged'")
    assert ("127.0.0.1",) in addrs


def test_a_postgres_name_that_does_not_resolve_is_logged_and_the_daemon_answers(
        daemon_factory, workdir, pg, db):
    cfg = base_config(workdir, pg=pg, dbname=db)
    cfg = cfg.replace(f"conninfo: \"host={pg.sockdir} ", "conninfo: \"host=no-such-host.invalid ",
                      1)
    d = daemon_factory(cfg)
    servers.wait_for(lambda: "cannot resolve no-such-host.invalid" in d.log_text(), 30,
                     "the lookup failure logged")
    assert "postgres (ingest" in d.log_text()
    with d.client() as c:
        assert c.call("ping")["protocol"] == 1


def test_a_slow_lookup_holds_up_no_client_and_outlasts_the_connect_timeout(
        daemon_factory, workdir, pg, db):
    """A resolver slower than postgres.connect_timeout_s (slowdns.c, preloaded): the daemon
    answers while the lookups run, which are off its loop, and connects once they are done (the
    deadline is the connect's; a lookup ends by the resolver's own timeouts)."""
    user = make_users(pg, db, 1)[0]
    cfg = base_config(workdir, pg=pg, dbname=db)
    cfg = cfg.replace(f"conninfo: \"host={pg.sockdir} ", "conninfo: \"host=slow-localhost ", 1)
    cfg = cfg.replace("postgres:\n", "postgres:\n  connect_timeout_s: 1\n", 1)
    env = {"LD_PRELOAD": os.environ["USAGED_SLOWDNS_LIB"], "USAGED_SLOWDNS_MS": "3000",
           "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"}
    d = daemon_factory(cfg + "ingest:\n  batch_ms: 20\n", extra_env=env)
    with d.client() as c:
        assert c.call("ping")["protocol"] == 1
        # Answered while every connection is still waiting for its lookup.
        assert "): connected" not in d.log_text()
        c.call("log_usage", [{"user_id": user, "provider": "slowdns"}])
    wait_count(pg, db, 1)
    assert not [line for line in d.log_text().splitlines()
                if "postgres (" in line and "connect timeout" in line]


def test_a_durable_request_is_committed_when_acked(daemon_factory, workdir, pg, db):
    user = make_users(pg, db, 1)[0]
    d = start(daemon_factory, workdir, pg, db, "  batch_rows: 100000\n  batch_ms: 300\n")
    with d.client() as c:
        r = c.call("log_usage", [{"user_id": user, "provider": "openai"}] * 3,
                   {"ack": "durable"})
        assert r == {"accepted": 3}
        assert count(pg, db) == 3


def test_events_of_the_first_and_last_years_land_in_one_batch_with_the_rest(
        daemon_factory, workdir, pg, db):
    # Years 1 to 9999 are taken; the years below 1000 once went into the batch's text (the
    # api_configurations bump) as "55-06-12", which PostgreSQL refused, setting the event aside.
    user = make_users(pg, db, 1)[0]
    d = start(daemon_factory, workdir, pg, db, "  batch_rows: 100000\n  batch_ms: 300\n")
    moments = [datetime.datetime(*t, tzinfo=UTC) for t in (
        (1, 1, 1), (55, 6, 12, 1, 2, 3), (999, 12, 31, 23, 59, 59, 999000),
        (9999, 12, 31, 23, 59, 59, 999000))]
    with d.client() as c:
        events = [{"user_id": user, "provider": "openai",
                   "created_at": int(m.timestamp() * 1000)} for m in moments]
        events.append({"user_id": user, "provider": "openai"})
        assert c.call("log_usage", events, {"ack": "durable"}) == {"accepted": 5}
        # A UUIDv7 whose time is after 9999 cannot give created_at its default.
        err = c.call_err("log_usage", [[{"id": v7(253402300800000), "user_id": user,
                                         "provider": "openai"}]])
        assert (err["code"], err["field"]) == ("invalid_field", "id")
    stored = [r[0] for r in sql(pg, db, "SELECT created_at FROM public.api_usage_logs")]
    assert len(stored) == 5 and set(moments) <= set(stored)
    assert sql(pg, db, "SELECT count(*) FROM usaged.rejects")[0][0] == 0


def test_the_config_default_ack_can_be_durable(daemon_factory, workdir, pg, db):
    user = make_users(pg, db, 1)[0]
    d = start(daemon_factory, workdir, pg, db,
              "  batch_rows: 100000\n  batch_ms: 300\n  ack: durable\n")
    with d.client() as c:
        c.call("log_usage", [{"user_id": user, "provider": "openai"}])
        assert count(pg, db) == 1


def test_prompt_events_land_with_numeric_text_and_defaults(daemon_factory, workdir, pg, db):
    user = make_users(pg, db, 1)[0]
    d = start(daemon_factory, workdir, pg, db)
    full = {"id": str(uuid.uuid4()), "user_id": user, "framework_id": "RACE",
            "framework_name": "R" * 100, "model": "gpt-4o", "provider": "openai",
            "user_input": "Écris un poème 🌙", "ai_response": "", "tone": "warm",
            "length": "short", "temperature": 0.7, "max_tokens": 2**31 - 1, "vibe_coding": True,
            "processing_time_ms": 0, "tokens_used": 1234, "cost_usd": "123456789.000012345",
            "status": "completed", "error_message": None, "error_code": "E" * 50,
            "created_at": 1767225600000}
    minimal = {"id": str(uuid.uuid4()), "user_id": user, "status": "pending",
               "temperature": 2, "cost_usd": 0.0012}
    with d.client() as c:
        assert c.call("log_prompt", [full, minimal], {"ack": "durable"}) == {"accepted": 2}
    rows = sql(pg, db, "SELECT id::text, framework_id, framework_name, model, provider, "
               "user_input, ai_response, tone, length, temperature, max_tokens, vibe_coding, "
               "processing_time_ms, tokens_used, cost_usd, status, error_message, error_code, "
               "created_at FROM public.prompt_history ORDER BY status")
    assert rows[0] == (full["id"], "RACE", "R" * 100, "gpt-4o", "openai", "Écris un poème 🌙", "",
                       "warm", "short", decimal.Decimal("0.7"), 2**31 - 1, True, 0, 1234,
                       decimal.Decimal("123456789.000012345"), "completed", None, "E" * 50,
                       datetime.datetime(2026, 1, 1, tzinfo=UTC))
    assert rows[1][0] == minimal["id"]
    assert rows[1][9] == decimal.Decimal("2")
    assert rows[1][11] is False  # vibe_coding defaults to false
    assert rows[1][14] == decimal.Decimal("0.0012")
    assert rows[1][1:9] == (None,) * 8
    # An integer above int64 (msgpack's uint64) is a number too.
    huge = {"user_id": user, "status": "failed", "cost_usd": 2**64 - 1}
    with d.client() as c:
        assert c.call("log_prompt", [huge], {"ack": "durable"}) == {"accepted": 1}
    assert sql(pg, db, "SELECT cost_usd FROM public.prompt_history WHERE status = 'failed'") == \
        [(decimal.Decimal(2**64 - 1),)]


def test_events_without_id_get_time_ordered_uuidv7_and_created_at_from_it(
        daemon_factory, workdir, pg, db):
    user = make_users(pg, db, 1)[0]
    d = start(daemon_factory, workdir, pg, db)
    given_ms = 1700000000123
    with d.client() as c:
        c.call("log_usage", [{"user_id": user, "provider": "a"} for _ in range(50)],
               {"ack": "durable"})
        c.call("log_usage", [{"id": v7(given_ms), "user_id": user, "provider": "b"}],
               {"ack": "durable"})
    rows = sql(pg, db, "SELECT id, created_at FROM public.api_usage_logs WHERE provider = 'a'")
    ids = [uuid.UUID(r[0]) for r in rows]
    assert all(i.version == 7 for i in ids)
    assert len(set(ids)) == 50
    now = datetime.datetime.now(UTC)
    assert all(abs((r[1] - now).total_seconds()) < 60 for r in rows)
    (created,), = sql(pg, db, "SELECT created_at FROM public.api_usage_logs WHERE provider = 'b'")
    assert created == datetime.datetime.fromtimestamp(given_ms / 1000, UTC)


# ---------------------------------------------------------------------------------------------
# Validation

GOOD_USAGE = {"user_id": "0189d2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d", "provider": "openai"}
GOOD_PROMPT = {"user_id": "0189d2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d", "status": "completed"}

BAD_USAGE = [
    ("id", "not-a-uuid"), ("id", 5), ("user_id", "0189d2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6"),
    ("user_id", b"\x01" * 15), ("provider", ""), ("provider", "x" * 51), ("provider", 7),
    ("provider", "bad\x00nul"), ("provider", b"\xff\xfe".decode("latin-1").encode("utf-8")),
    ("endpoint", 12), ("endpoint", "bad \udced\udca0\udc80"), ("request_size", -1),
    ("request_size", 2**31), ("request_size", "5"), ("response_size", -5),
    ("response_time_ms", 1.5), ("status_code", 99), ("status_code", 600), ("status_code", True),
    ("error_message", ["x"]), ("created_at", "2026-01-01"), ("created_at", 2**62),
    ("created_at", msgpack.ExtType(5, b"\x00" * 8)), ("colour", "blue"),
]

BAD_PROMPT = [
    ("user_id", None), ("framework_id", "f" * 51), ("framework_name", "n" * 101),
    ("model", "m" * 51), ("provider", "p" * 51), ("tone", "t" * 51), ("length", "l" * 51),
    ("user_input", 5), ("ai_response", {"a": 1}), ("temperature", 2.01), ("temperature", -0.1),
    ("temperature", float("nan")), ("temperature", "0.5"), ("max_tokens", -1),
    ("processing_time_ms", 2**31), ("tokens_used", -3), ("vibe_coding", 1),
    ("cost_usd", -0.01), ("cost_usd", "-1"), ("cost_usd", "1e5"), ("cost_usd", "abc"),
    ("cost_usd", float("inf")), ("status", "done"), ("status", None), ("error_code", "e" * 51),
    ("error_message", 1), ("created_at", -2**63), ("extra", 1),
]


def _bad(good, field, value):
    ev = dict(good)
    ev[field] = value
    return ev


@pytest.mark.parametrize("field,value", BAD_USAGE)
def test_every_invalid_usage_field_is_named(daemon_factory, workdir, pg, db, field, value):
    d = start(daemon_factory, workdir, pg, db)
    with d.client() as c:
        raw = msgpack.packb([0, 1, "log_usage", [[GOOD_USAGE, _bad(GOOD_USAGE, field, value)]]],
                            use_bin_type=True, unicode_errors="surrogateescape")
        c.send_raw(raw)
        err, _ = c.wait(1)
    assert err["code"] == "invalid_field", (field, value, err)
    assert err["field"] == field
    assert err["index"] == 1


@pytest.mark.parametrize("field,value", BAD_PROMPT)
def test_every_invalid_prompt_field_is_named(daemon_factory, workdir, pg, db, field, value):
    d = start(daemon_factory, workdir, pg, db)
    with d.client() as c:
        ev = _bad(GOOD_PROMPT, field, value)
        err = c.call_err("log_prompt", [[ev]])
    assert err["code"] == "invalid_field", (field, value, err)
    assert err["field"] == field
    assert err["index"] == 0


def test_a_request_with_one_bad_event_keeps_none_of_them(daemon_factory, workdir, pg, db):
    user = make_users(pg, db, 1)[0]
    d = start(daemon_factory, workdir, pg, db)
    with d.client() as c:
        events = [{"user_id": user, "provider": "ok"}] * 3 + [{"user_id": user}]
        err = c.call_err("log_usage", [events])
        assert (err["code"], err["field"], err["index"]) == ("invalid_field", "provider", 3)
        assert c.call("log_usage", [{"user_id": user, "provider": "after"}],
                      {"ack": "durable"}) == {"accepted": 1}
    assert sql(pg, db, "SELECT provider FROM public.api_usage_logs") == [("after",)]
    s = Client(d.socket).call("stats")
    assert s["ingest"]["events_rejected"]["invalid_field"] == 4


def test_bad_params_shapes_get_bad_request_and_bad_options_invalid_field(
        daemon_factory, workdir, pg, db):
    d = start(daemon_factory, workdir, pg, db)
    with d.client() as c:
        assert c.call_err("log_usage", [])["code"] == "bad_request"
        assert c.call_err("log_usage", [{"user_id": "x"}])["code"] == "bad_request"
        assert c.call_err("log_usage", [[], {}, 3])["code"] == "bad_request"
        err = c.call_err("log_usage", [[], {"ack": "eventually"}])
        assert (err["code"], err["field"]) == ("invalid_field", "ack")
        err = c.call_err("log_usage", [[5]])
        assert (err["code"], err["index"]) == ("invalid_field", 0)
        c.send_raw(b"\x94\x00\x07\xa9log_usage\x92\x90\x82\xa3ack\xa6queued\xa3ack\xa7durable")
        err = c.wait(7)[0]
        assert (err["code"], err["field"], err["message"]) == ("invalid_field", "ack",
                                                              "ack is given twice")
        assert c.call("log_usage", []) == {"accepted": 0}


def test_an_unknown_option_is_named_even_after_a_valid_ack(daemon_factory, workdir, pg, db):
    d = start(daemon_factory, workdir, pg, db)
    with d.client() as c:
        err = c.call_err("log_usage", [[], {"ack": "durable", "ack2": 1}])
        assert (err["code"], err["field"]) == ("invalid_field", "ack2")
        err = c.call_err("log_prompt", [[], {"acks": "durable"}])
        assert (err["code"], err["field"]) == ("invalid_field", "acks")


def test_an_invalid_notification_is_dropped_and_counted(daemon_factory, workdir, pg, db):
    user = make_users(pg, db, 1)[0]
    d = start(daemon_factory, workdir, pg, db)
    with d.client() as c:
        c.notify("log_usage", [[{"user_id": user, "provider": "x" * 60}]])
        c.notify("log_usage", [[{"user_id": user, "provider": "fine"}]])
        servers.wait_for(lambda: count(pg, db) == 1, 30, "the valid notification to land")
        s = c.call("stats")
    assert s["dropped_notifications"]["invalid_field"] == 1
    assert sql(pg, db, "SELECT provider FROM public.api_usage_logs") == [("fine",)]


# ---------------------------------------------------------------------------------------------
# Exactly once

def test_a_repeated_id_lands_once(daemon_factory, workdir, pg, db):
    user = make_users(pg, db, 1)[0]
    d = start(daemon_factory, workdir, pg, db)
    ev = {"id": v7(1750000000000), "user_id": user, "provider": "openai", "status_code": 200}
    other = {"id": str(uuid.uuid4()), "user_id": user, "provider": "openai",
             "created_at": 1750000000000}
    with d.client() as c:
        c.call("log_usage", [ev, other], {"ack": "durable"})
        c.call("log_usage", [ev], {"ack": "durable"})          # a retry after a lost ack
        c.call("log_usage", [ev, ev, other], {"ack": "durable"})  # repeats within one batch
        s = c.call("stats")
    assert count(pg, db) == 2
    assert s["ingest"]["tables"]["api_usage_logs"]["idempotent_writes"] >= 1


def test_rows_for_unknown_users_are_rejected_alone_and_the_rest_land(
        daemon_factory, workdir, pg, db):
    users = make_users(pg, db, 3)
    d = start(daemon_factory, workdir, pg, db, "  batch_rows: 100000\n  batch_ms: 100\n")
    ghosts = [str(uuid.uuid4()) for _ in range(3)]
    bad_at = (5, 150, 299)
    events = []
    for i in range(300):
        u = ghosts[bad_at.index(i)] if i in bad_at else users[i % 3]
        events.append({"id": str(uuid.uuid4()), "user_id": u, "provider": "openai",
                       "request_size": i})
    with d.client() as c:
        assert c.call("log_usage", events, {"ack": "durable"}) == {"accepted": 300}
        s = c.call("stats")
    assert count(pg, db) == 297
    rejects = sql(pg, db, "SELECT table_name, row_data->>'user_id', (row_data->>'request_size')"
                  "::int, sqlstate, error FROM usaged.rejects ORDER BY 3")
    assert [(r[0], r[2], r[3]) for r in rejects] == [("api_usage_logs", 5, "23503"),
                                                     ("api_usage_logs", 150, "23503"),
                                                     ("api_usage_logs", 299, "23503")]
    assert [r[1] for r in rejects] == ghosts
    assert all("foreign key" in r[4] for r in rejects)
    assert s["ingest"]["tables"]["api_usage_logs"]["rows_rejected"] == 3
    assert s["ingest"]["tables"]["api_usage_logs"]["rows_written"] == 297


def test_many_rows_of_unknown_users_are_set_aside_at_once_not_found_by_halves(
        daemon_factory, workdir, pg, db):
    """A batch refused for rows of users that do not exist is not split until each stands
    alone (about 2 statements per bad row, holding up every client's rows): the daemon asks
    which users are unknown, stores their rows in usaged.rejects in one statement and writes the
    rest in one COPY."""
    users = make_users(pg, db, 10)
    d = start(daemon_factory, workdir, pg, db, "  batch_rows: 100000\n  batch_ms: 100\n")
    ghosts = [str(uuid.uuid4()) for _ in range(1000)]
    events = []
    for i in range(2000):
        u = ghosts[i // 2] if i % 2 else users[i % 10]
        events.append({"user_id": u, "provider": "openai", "request_size": i})
    with d.client() as c:
        assert c.call("log_usage", events, {"ack": "durable"}) == {"accepted": 2000}
        s = c.call("stats")["ingest"]["tables"]["api_usage_logs"]
    assert count(pg, db) == 1000
    assert sql(pg, db, "SELECT count(*) FROM public.api_usage_logs WHERE request_size % 2 = 1"
               ) == [(0,)]
    rejects = sql(pg, db, "SELECT row_data->>'user_id', sqlstate, error FROM usaged.rejects")
    assert sorted(r[0] for r in rejects) == sorted(ghosts)
    assert all(r[1] == "23503" and "foreign key" in r[2] and "not in auth.users" in r[2]
               and "DETAIL" not in r[2] for r in rejects)
    assert (s["rows_rejected"], s["rows_written"]) == (1000, 1000)
    # The refused COPY and the COPY of the rest: no splitting.
    assert s["statements"] == 2
    assert d.log_text().count("stored in usaged.rejects") == 1


def test_a_refused_event_sent_twice_is_stored_in_rejects_once(daemon_factory, workdir, pg, db):
    """Like a repeated id in the tables: the same refused row (a batch written again after a
    lost commit, replayed from the spool, or sent twice) is one row of usaged.rejects."""
    d = start(daemon_factory, workdir, pg, db)
    event = {"id": str(uuid.uuid4()), "user_id": str(uuid.uuid4()), "provider": "openai"}
    with d.client() as c:
        for _ in range(2):
            assert c.call("log_usage", [event], {"ack": "durable"}) == {"accepted": 1}
    assert sql(pg, db, "SELECT count(*) FROM usaged.rejects WHERE row_data->>'id' = %s",
               (event["id"],)) == [(1,)]


def test_rejects_larger_than_one_statement_are_stored_in_several(daemon_factory, workdir, pg,
                                                                 db):
    """Rows of unknown users whose JSON passes 4 MiB go to usaged.rejects in more than one
    INSERT (jsonb refuses values past 256 MB: one statement per batch could fail for ever)."""
    d = start(daemon_factory, workdir, pg, db, "  batch_rows: 100000\n  batch_ms: 2000\n")
    text = "x" * 100000
    with d.client() as c:
        for k in range(8):
            c.notify("log_prompt", [[{"user_id": str(uuid.uuid4()), "status": "failed",
                                      "user_input": text} for _ in range(8)]])
        c.call("ping")
    servers.wait_for(lambda: sql(pg, db, "SELECT count(*) FROM usaged.rejects")[0][0] >= 64, 60,
                     "64 rejected prompts")
    assert sql(pg, db, "SELECT count(*), min(length(row_data->>'user_input')) "
               "FROM usaged.rejects") == [(64, 100000)]


def test_a_stop_during_the_unknown_users_question_spools_the_batch_and_loses_nothing(
        daemon_factory, workdir, pg, db):
    """drain_timeout_s cancels what is running; a batch whose question about unknown users was
    cancelled goes to the spool, not on to more statements that nothing would cancel."""
    users = make_users(pg, db, 2)
    sql(pg, db, "ALTER FUNCTION public.usaged_unknown_users(uuid[]) RENAME TO real_unknown_users")
    sql(pg, db, "CREATE FUNCTION public.usaged_unknown_users(ids uuid[]) RETURNS SETOF uuid "
        "LANGUAGE sql SECURITY DEFINER AS $$ SELECT NULL::uuid FROM pg_sleep(120) "
        "UNION ALL SELECT * FROM public.real_unknown_users(ids) $$")
    sql(pg, db, "GRANT EXECUTE ON FUNCTION public.usaged_unknown_users(uuid[]) TO usaged")
    d = start(daemon_factory, workdir, pg, db, "  batch_ms: 20\n  drain_timeout_s: 1\n")
    ghost = str(uuid.uuid4())
    with d.client() as c:
        events = [{"user_id": users[i % 2], "provider": "good"} for i in range(20)]
        events.append({"user_id": ghost, "provider": "ghost"})
        assert c.call("log_usage", events) == {"accepted": 21}
    servers.wait_for(lambda: sql(pg, db, "SELECT count(*) FROM pg_stat_activity "
                                 "WHERE query LIKE '%usaged_unknown_users%' AND usename = "
                                 "'usaged'")[0][0] >= 1, 30, "the question to be asked")
    d.signal(signal.SIGTERM)
    assert d.wait_exit(timeout=30) == 0
    assert count(pg, db) == 0
    # The real question again, and a restart on the same spool: every row lands or is rejected.
    sql(pg, db, "DROP FUNCTION public.usaged_unknown_users(uuid[])")
    sql(pg, db, "ALTER FUNCTION public.real_unknown_users(uuid[]) RENAME TO usaged_unknown_users")
    d.start()
    wait_count(pg, db, 20)
    assert sql(pg, db, "SELECT row_data->>'user_id' FROM usaged.rejects") == [(ghost,)]


def test_refused_rows_are_logged_at_most_ten_times_in_ten_seconds(daemon_factory, workdir, pg,
                                                                  db):
    user = make_users(pg, db, 1)[0]
    d = start(daemon_factory, workdir, pg, db)
    with d.client() as c:
        for _ in range(30):
            c.call("log_usage", [{"user_id": str(uuid.uuid4()), "provider": "openai"},
                                 {"user_id": user, "provider": "openai"}], {"ack": "durable"})
        s = c.call("stats")["ingest"]["tables"]["api_usage_logs"]
    assert (s["rows_rejected"], s["rows_written"]) == (30, 30)
    assert 1 <= d.log_text().count("stored in usaged.rejects") <= 10


def test_api_configurations_usage_is_bumped_per_batch(daemon_factory, workdir, pg, db):
    a, b = make_users(pg, db, 2)
    armored = "-----BEGIN PGP MESSAGE-----\\nx\\n-----END PGP MESSAGE-----"
    for u in (a, b):
        sql(pg, db, "INSERT INTO public.api_configurations (user_id, provider, "
            "api_key_encrypted) VALUES (%s, 'openai', E'" + armored + "')", (u,))
    d = start(daemon_factory, workdir, pg, db)
    t_late = 1770000000000
    with d.client() as c:
        c.call("log_usage", [{"user_id": a, "provider": "openai", "created_at": 1760000000000},
                             {"user_id": a, "provider": "openai", "created_at": t_late},
                             {"user_id": a, "provider": "openai", "status_code": 429,
                              "created_at": t_late + 5},
                             {"user_id": b, "provider": "anthropic"},
                             # Quotes, backslashes, commas and braces in a provider must neither
                             # break the bump statement nor reach beyond it.
                             {"user_id": a, "provider": "a\"b\\c'd{e},f); DROP TABLE x; --"}],
                            {"ack": "durable"})
    rows = dict((r[0], r[1:]) for r in sql(
        pg, db, "SELECT user_id::text, usage_count, last_used_at FROM public.api_configurations"))
    assert rows[a] == (2, datetime.datetime.fromtimestamp(t_late / 1000, UTC))
    assert rows[b] == (0, None)


# ---------------------------------------------------------------------------------------------
# Volume, outages, shutdown

def _send_load(sock, user_ids, n_events, conn_index, results, notify_every=3, per_msg=50):
    """Sends n_events in messages of per_msg events; every notify_every-th message is a
    notification. Records the events sent (by id)."""
    sent = {}
    c = Client(sock, timeout=120)
    msgid = 0
    pending = []
    i = 0
    while i < n_events:
        batch = []
        for _ in range(min(per_msg, n_events - i)):
            eid = str(uuid.uuid4())
            ev = {"id": eid, "user_id": user_ids[(i + conn_index) % len(user_ids)],
                  "provider": ["openai", "anthropic", "google", "mistral", "ünï"][i % 5],
                  "endpoint": "" if i % 7 == 0 else f"/v1/{i}",
                  "request_size": (2**31 - 1) if i % 11 == 0 else i,
                  "status_code": 100 + i % 500,
                  "created_at": 1767225600000 + i}
            if i % 13 == 0:
                ev.pop("endpoint")
            batch.append(ev)
            sent[eid] = ev
            i += 1
        msgid += 1
        if msgid % notify_every == 0:
            c.notify("log_usage", [batch])
        else:
            pending.append(c.send_request("log_usage", [batch]))
    for m in pending:
        err, res = c.wait(m)
        assert err is None, err
        assert res["accepted"] > 0
    c.close()
    results[conn_index] = sent


def _check_rows(pg, db, sent):
    rows = sql(pg, db, "SELECT id::text, user_id::text, provider, endpoint, request_size, "
               "status_code, created_at FROM public.api_usage_logs")
    assert len(rows) == len(sent)
    for r in rows:
        ev = sent[r[0]]
        assert r[1] == ev["user_id"] and r[2] == ev["provider"]
        assert r[3] == ev.get("endpoint") and r[4] == ev["request_size"]
        assert r[5] == ev["status_code"]
        assert r[6] == datetime.datetime.fromtimestamp(ev["created_at"] / 1000, UTC)


def test_200000_events_from_8_connections_land_exactly_once_with_their_fields(
        daemon_factory, workdir, pg, db):
    users = make_users(pg, db, 100)
    d = start(daemon_factory, workdir, pg, db, "  batch_rows: 5000\n  batch_ms: 50\n")
    results = [None] * 8
    threads = [threading.Thread(target=_send_load, args=(d.socket, users, 25000, k, results))
               for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sent = {}
    for r in results:
        sent.update(r)
    assert len(sent) == 200000
    wait_count(pg, db, 200000, timeout=120)
    _check_rows(pg, db, sent)


def test_postgres_stopped_for_5s_under_load_loses_and_duplicates_nothing(
        daemon_factory, workdir, pg, db):
    users = make_users(pg, db, 20)
    d = start(daemon_factory, workdir, pg, db, "  batch_rows: 500\n  batch_ms: 20\n")
    results = [None] * 4
    threads = [threading.Thread(target=_send_load, args=(d.socket, users, 10000, k, results),
                                kwargs={"per_msg": 20})
               for k in range(4)]
    for t in threads:
        t.start()
    # The outage begins under load: once the daemon has taken some of the events.
    servers.wait_for(lambda: d.client().call("stats")["ingest"]["events_accepted"] >= 2000, 30,
                     "the load to be under way")
    pg.stop()
    time.sleep(5)  # the outage itself: a duration, not a wait for a condition
    pg.start()
    for t in threads:
        t.join()
    sent = {}
    for r in results:
        sent.update(r)
    wait_count(pg, db, 40000, timeout=120)
    _check_rows(pg, db, sent)


def test_sigterm_right_after_a_burst_writes_every_row_before_exit(
        daemon_factory, workdir, pg, db):
    users = make_users(pg, db, 5)
    d = start(daemon_factory, workdir, pg, db, "  batch_rows: 100000\n  batch_ms: 10000\n")
    with d.client() as c:
        for k in range(20):
            c.notify("log_usage", [[{"user_id": users[k % 5], "provider": "p"}] * 500])
        c.call("ping")  # every notification before it has been read
        d.signal(signal.SIGTERM)
        with pytest.raises((Closed, ConnectionResetError)):
            for _ in range(100):
                c.read_message()
    assert d.wait_exit() == 0
    assert count(pg, db) == 10000


def test_a_full_queue_and_spool_answer_overloaded_and_pause_notification_senders(
        daemon_factory, workdir, pg, db):
    """PostgreSQL down: the queue (1000 rows) spills to the spool until spool.max_bytes, then
    requests get overloaded and notification senders are paused; nothing accepted is lost."""
    user = make_users(pg, db, 1)[0]
    d = start(daemon_factory, workdir, pg, db,
              "  batch_rows: 100\n  batch_ms: 10\n  queue_rows: 1000\n",
              extra="spool:\n  max_bytes: 1MiB\n  segment_bytes: 256KiB\n")
    pg.stop()
    notifier = None
    try:
        with d.client() as c:
            accepted = 0
            err = None
            for _ in range(1000):
                try:
                    accepted += c.call("log_usage", [{"user_id": user, "provider": "p"}] * 100)[
                        "accepted"]
                except RpcError as e:
                    err = e.err
                    break
            assert err is not None and err["code"] == "overloaded", err
            assert err["retry_after_ms"] > 0
            assert accepted > 1000  # more than memory holds: the spool took the rest
            # A request that could never be accepted is told so, not to send it again; and
            # every event received is counted as accepted or as rejected, by why.
            bad = c.call_err("log_usage", [[{"user_id": user, "provider": "p"}, {"user_id": user}]])
            assert (bad["code"], bad["field"], bad["index"]) == ("invalid_field", "provider", 1)
            assert c.call_err("log_usage", [[{"user_id": user, "provider": "p"}],
                                            {"ack": "never"}])["field"] == "ack"
            ingest = c.call("stats")["ingest"]
            assert ingest["events_received"] == (ingest["events_accepted"]
                                                 + sum(ingest["events_rejected"].values()))
            assert ingest["events_rejected"]["overloaded"] >= 100
            assert ingest["events_rejected"]["invalid_field"] == 3
            servers.wait_for(lambda: c.call("stats")["spool"]["rows_spooled"] > 0, 10,
                             "rows fsync'd in the spool")
            assert c.call("stats")["spool"]["bytes"] <= 1 << 20
            # A notification sender is paused, not dropped: its events wait in its socket.
            notifier = d.client()
            for _ in range(5):
                notifier.notify("log_usage", [[{"user_id": user, "provider": "n"}] * 10])
            servers.wait_for(
                lambda: c.call("stats")["ingest"]["notification_senders_paused"] >= 1, 10,
                "the notification sender to be paused")
    finally:
        pg.start()
    wait_count(pg, db, accepted + 50, timeout=120)
    if notifier:
        notifier.close()
