"""Durability: the disk spool keeps every accepted event through PostgreSQL outages, a SIGKILL of
the daemon, and damaged spool files; exact counts are read back from PostgreSQL."""

import glob
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid

import pytest

from conftest import base_config, make_users, sql
from usaged_client import Client, RpcError
import servers


def start(daemon_factory, workdir, pg, db, ingest="", spool="", name=None):
    cfg = base_config(workdir, pg=pg, dbname=db)
    if spool:
        cfg = cfg.replace("spool:\n", "spool:\n" + spool, 1)
    cfg += "ingest:\n" + (ingest or "  batch_rows: 200\n  batch_ms: 20\n")
    return daemon_factory(cfg, name=name)


def count(pg, db):
    return sql(pg, db, "SELECT count(*) FROM public.api_usage_logs")[0][0]


def ids_in(pg, db):
    return [r[0] for r in sql(pg, db, "SELECT id::text FROM public.api_usage_logs")]


def event(user, tag=0):
    # A client-chosen id with created_at makes the event recognisable and its retry harmless.
    return {"id": str(uuid.uuid4()), "user_id": user, "provider": "p", "request_size": tag,
            "created_at": 1767225600000 + tag}


def spool_dir(d):
    text = open(d.config).read()
    return text.split("spool:\n", 1)[1].split('dir: "', 1)[1].split('"', 1)[0]


def test_postgres_down_for_10s_under_durable_load_loses_and_duplicates_nothing(
        daemon_factory, workdir, pg, db):
    users = make_users(pg, db, 8)
    d = start(daemon_factory, workdir, pg, db)
    acked = [[] for _ in range(8)]
    stop = threading.Event()
    errors = []

    def sender(k):
        with Client(d.socket, timeout=60) as c:
            i = 0
            while not stop.is_set():
                batch = [event(users[k], k * 1000000 + i + j) for j in range(20)]
                i += 20
                try:
                    r = c.call("log_usage", batch, {"ack": "durable"})
                    assert r == {"accepted": 20}
                    acked[k].extend(e["id"] for e in batch)
                except RpcError as e:
                    if e.code != "overloaded":
                        errors.append(e.err)
                        return

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    servers.wait_for(lambda: sum(len(a) for a in acked) > 2000, 30, "load before the outage")
    pg.stop()
    outage_start = sum(len(a) for a in acked)
    time.sleep(10)  # the outage itself: a duration, not a wait for a condition
    during = sum(len(a) for a in acked) - outage_start
    pg.start()
    servers.wait_for(lambda: sum(len(a) for a in acked) > outage_start + during + 2000, 60,
                     "load after the outage")
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors
    assert during > 1000, "durable acks kept coming while PostgreSQL was down (spool)"
    expected = {i for a in acked for i in a}
    servers.wait_for(lambda: count(pg, db) >= len(expected), 120, "every acked event to land")
    got = ids_in(pg, db)
    assert len(got) == len(set(got)), "an event landed twice"
    assert set(got) == expected
    s = Client(d.socket).call("stats")
    assert s["spool"]["rows_spooled"] > 0 and s["spool"]["rows_replayed"] > 0


def test_durable_acks_survive_sigkill_with_postgres_down(daemon_factory, workdir, pg, db):
    users = make_users(pg, db, 2)
    d = start(daemon_factory, workdir, pg, db, name="killed")
    pg.stop()
    acked = []
    try:
        with d.client() as c:
            for i in range(50):
                batch = [event(users[i % 2], i * 100 + j) for j in range(30)]
                assert c.call("log_usage", batch, {"ack": "durable"}) == {"accepted": 30}
                acked.extend(e["id"] for e in batch)
        d.kill()  # SIGKILL: nothing gets a chance to flush
        d.start(wait=True)  # the same config, spool and socket; PostgreSQL still down
    finally:
        pg.start()
    servers.wait_for(lambda: count(pg, db) >= len(acked), 60, "the spool to be replayed")
    got = ids_in(pg, db)
    assert len(got) == len(set(got)) == len(acked)
    assert set(got) == set(acked)


def test_a_disk_slower_than_the_clients_holds_them_back_not_the_memory(
        daemon_factory, workdir, pg, db):
    """Batches on their way to the spool stay in memory until their fsync: with a slow disk
    (slowsync.c, preloaded: 300 ms per flush) and PostgreSQL down, at most queue_bytes / 8 of
    them wait there, and clients are told to come back in 20 ms, not taken in without bound."""
    user = make_users(pg, db, 1)[0]
    cfg = base_config(workdir, pg=pg, dbname=db) + (
        "ingest:\n  batch_rows: 500\n  batch_ms: 20\n  queue_bytes: 1MiB\n")
    d = daemon_factory(cfg, extra_env={"LD_PRELOAD": os.environ["USAGED_SLOWSYNC_LIB"],
                                       "USAGED_SLOWSYNC_MS": "300",
                                       "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "")
                                       + ":verify_asan_link_order=0"})
    pg.stop()
    sent, overloaded, peak = [], 0, 0
    try:
        with d.client() as c:
            for i in range(40):
                batch = [event(user, i * 500 + k) for k in range(500)]
                while True:
                    try:
                        c.call("log_usage", batch)
                        break
                    except RpcError as e:
                        assert e.code == "overloaded" and e.err["retry_after_ms"] == 20, e.err
                        overloaded += 1
                        peak = max(peak, c.call("stats")["ingest"]["spooling_bytes"])
                        time.sleep(0.02)  # what retry_after_ms asks of a client
                sent += batch
        assert overloaded > 0
        # Bounded: the cap (128 KiB) plus what one spill may add past it (the queue, 1 MiB).
        assert 0 < peak <= 128 * 1024 + 1024 * 1024
    finally:
        pg.start()
    servers.wait_for(lambda: count(pg, db) >= len(sent), 120, "the spool to be replayed")
    assert sorted(ids_in(pg, db)) == sorted(e["id"] for e in sent)


def test_sigterm_with_postgres_down_spools_the_queue_and_the_next_start_replays_it(
        daemon_factory, workdir, pg, db):
    user = make_users(pg, db, 1)[0]
    d = start(daemon_factory, workdir, pg, db,
              ingest="  batch_rows: 100000\n  batch_ms: 60000\n  drain_timeout_s: 2\n",
              name="drained")
    pg.stop()
    try:
        with d.client() as c:
            sent = [event(user, i) for i in range(3000)]
            assert c.call("log_usage", sent) == {"accepted": 3000}  # queued, in memory
        t0 = time.monotonic()
        assert d.stop() == 0
        assert time.monotonic() - t0 < 10
        assert glob.glob(os.path.join(spool_dir(d), "api_usage_logs", "*.seg"))
    finally:
        pg.start()
    d.start()
    servers.wait_for(lambda: count(pg, db) >= 3000, 60, "the spool to be replayed")
    assert sorted(ids_in(pg, db)) == sorted(e["id"] for e in sent)


def test_a_torn_tail_and_a_flipped_byte_lose_only_their_records_and_are_reported(
        daemon_factory, workdir, pg, db):
    user = make_users(pg, db, 1)[0]
    # One record per request: batch_rows equals the request size, so each request seals a batch.
    d = start(daemon_factory, workdir, pg, db, ingest="  batch_rows: 10\n  batch_ms: 10000\n",
              spool="  segment_bytes: 64KiB\n", name="damaged")
    pg.stop()
    records = []
    try:
        with d.client() as c:
            for i in range(200):
                batch = [event(user, i * 10 + j) for j in range(10)]
                assert c.call("log_usage", batch, {"ack": "durable"}) == {"accepted": 10}
                records.append([e["id"] for e in batch])
        d.kill()
        segs = sorted(glob.glob(os.path.join(spool_dir(d), "api_usage_logs", "*.seg")))
        assert len(segs) >= 3
        # Every record here has the same length: find it from the first segment.
        first = open(segs[0], "rb").read()
        rec_len = 32 + int.from_bytes(first[8:12], "little")
        per_seg = [os.path.getsize(s) // rec_len for s in segs]
        # A bit flipped in the rows of the 3rd record of the first segment.
        with open(segs[0], "r+b") as f:
            f.seek(2 * rec_len + 100)
            b = f.read(1)
            f.seek(2 * rec_len + 100)
            f.write(bytes([b[0] ^ 0x40]))
        # The last segment torn in the middle of its last record, as by a power loss.
        last = segs[-1]
        os.truncate(last, os.path.getsize(last) - rec_len // 2)
        lost = {2, sum(per_seg) - 1}  # record indexes, in append order
        d.start()
    finally:
        pg.start()
    expected = {i for k, r in enumerate(records) if k not in lost for i in r}
    servers.wait_for(lambda: count(pg, db) >= len(expected), 60, "the valid records to land")
    assert set(ids_in(pg, db)) == expected
    s = d.client().call("stats")["spool"]
    assert s["corrupt_records"] == 2
    assert s["quarantined_bytes"] > 0
    assert "damaged record" in d.log_text()
    assert glob.glob(os.path.join(spool_dir(d), "api_usage_logs", "quarantine", "*.bad"))


def assert_a_second_daemon_refuses(daemon_factory, d, name):
    """A daemon on d's config (another socket) exits at once: d's spool is in use."""
    text = open(d.config).read().replace(d.socket, d.socket + ".2")
    other = daemon_factory(text, start=False, name=name)
    other.start(wait=False)
    assert other.proc.wait(timeout=30) == 1
    assert "in use by another usaged" in other.log_text()
    other.proc = None


def test_a_second_daemon_on_the_same_spool_refuses_to_start(daemon_factory, workdir, pg, db):
    d = start(daemon_factory, workdir, pg, db, name="owner")
    assert_a_second_daemon_refuses(daemon_factory, d, "intruder")


def test_sigterm_does_not_wait_for_a_copy_stuck_on_a_lock(daemon_factory, workdir, pg, db):
    import psycopg2
    user = make_users(pg, db, 1)[0]
    d = start(daemon_factory, workdir, pg, db,
              ingest="  batch_rows: 100\n  batch_ms: 10\n  drain_timeout_s: 1\n",
              name="stuck")
    locker = psycopg2.connect(pg.dsn(db))
    try:
        cur = locker.cursor()
        cur.execute("LOCK TABLE public.api_usage_logs IN ACCESS EXCLUSIVE MODE")
        with d.client() as c:
            sent = [event(user, i) for i in range(100)]
            assert c.call("log_usage", sent) == {"accepted": 100}
            servers.wait_for(lambda: sql(pg, db, "SELECT count(*) FROM pg_stat_activity WHERE "
                                         "wait_event_type = 'Lock'")[0][0] >= 1, 10,
                             "the COPY to wait for the lock")
        t0 = time.monotonic()
        assert d.stop(timeout=30) == 0
        assert time.monotonic() - t0 < 10
    finally:
        locker.rollback()
        locker.close()
    d.start()
    servers.wait_for(lambda: count(pg, db) >= 100, 60, "the spooled batch to be replayed")
    assert sorted(ids_in(pg, db)) == sorted(e["id"] for e in sent)


@pytest.fixture(scope="module")
def lazy_pg(workdir):
    """A server that commits lazily (synchronous_commit = off, as the other fixture) and whose
    WAL writer waits 10 s between flushes: a crash loses the commits of the last moments unless
    their sessions flush the WAL themselves."""
    server = servers.Postgres(os.path.join(workdir, "lazypgroot"))
    server.init()
    with open(os.path.join(server.data, "postgresql.conf"), "a") as f:
        f.write("\nwal_writer_delay = 10000ms\nwal_writer_flush_after = 0\n")
    server.start()
    yield server
    server.stop()


def migrated_db(server, workdir, name):
    from usaged_client import USAGED_BIN
    server.createdb(name)
    cfg = os.path.join(workdir, f"migrate-{name}.yaml")
    with open(cfg, "w") as f:
        f.write(base_config(workdir, pg=server, dbname=name).replace("@SOCKET@", "/tmp/unused"))
    r = subprocess.run([USAGED_BIN, "--migrate", "-c", cfg], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return name


def test_durable_acks_survive_a_crash_of_a_server_that_commits_lazily(
        daemon_factory, workdir, lazy_pg):
    """A durable ack is usaged's promise, not the server's synchronous_commit: the writers commit
    with it on, so what was acked is in the WAL on disk when PostgreSQL is killed."""
    db = migrated_db(lazy_pg, workdir, "lazy")
    users = make_users(lazy_pg, db, 2)
    d = start(daemon_factory, workdir, lazy_pg, db, ingest="  batch_rows: 50\n  batch_ms: 2\n")
    acked = []
    with d.client() as c:
        for i in range(200):
            batch = [event(users[i % 2], i * 10 + j) for j in range(3)]
            assert c.call("log_usage", batch, {"ack": "durable"}) == {"accepted": 3}
            acked.extend(e["id"] for e in batch)
    lazy_pg.kill()  # SIGKILL of every server process: the WAL buffers in memory are gone
    lazy_pg.start()
    got = ids_in(lazy_pg, db)
    assert len(set(acked) - set(got)) == 0, f"{len(set(acked) - set(got))} acked events lost"


def big_event(user, tag):
    """About 1 KB in the spool: a thousand fill spool.max_bytes at its least, 1 MiB."""
    e = event(user, tag)
    e["error_message"] = "x" * 900
    return e


def fill_until_overloaded(c, user, ack="queued"):
    """Sends requests of 50 events until one is refused as overloaded; returns the accepted ids."""
    accepted = []
    for i in range(1000):
        batch = [big_event(user, i * 50 + j) for j in range(50)]
        try:
            assert c.call("log_usage", batch, {"ack": ack}) == {"accepted": 50}
        except RpcError as e:
            assert e.code == "overloaded", e.err
            return accepted
        accepted.extend(e["id"] for e in batch)
    raise AssertionError("never overloaded")


def test_a_stop_with_the_spool_at_max_bytes_keeps_every_accepted_row(
        daemon_factory, workdir, pg, db):
    """PostgreSQL down, the spool at spool.max_bytes and the queue full: SIGTERM writes what is
    in memory to the spool past max_bytes (the cap is backpressure for a running daemon) and
    exits 0; the next start replays every accepted row."""
    user = make_users(pg, db, 1)[0]
    d = start(daemon_factory, workdir, pg, db, name="capped",
              ingest="  batch_rows: 200\n  batch_ms: 20\n  queue_rows: 2000\n"
                     "  spill_after_ms: 500\n  drain_timeout_s: 2\n",
              spool="  max_bytes: 1MiB\n  segment_bytes: 256KiB\n")
    pg.stop()
    try:
        with d.client() as c:
            accepted = fill_until_overloaded(c, user)
            s = c.call("stats")
        assert s["spool"]["bytes"] > 600 * 1024 and s["ingest"]["queue_rows"] > 0
        d.signal(signal.SIGTERM)
        assert d.wait_exit(timeout=30) == 0
        assert "could be kept neither" not in d.log_text()
    finally:
        pg.start()
    d.start()
    servers.wait_for(lambda: count(pg, db) >= len(accepted), 60, "the spool to be replayed")
    assert sorted(ids_in(pg, db)) == sorted(accepted)


@pytest.fixture
def small_disk(workdir):
    """A 2 MiB tmpfs for a spool, so that its disk fills for real (needs mount, i.e. root)."""
    path = os.path.join(workdir, f"smalldisk{time.monotonic_ns()}")
    os.makedirs(path)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", path],
                       capture_output=True, text=True)
    if r.returncode != 0:
        os.rmdir(path)
        pytest.skip(f"cannot mount a small tmpfs for a full disk ({r.stderr.strip()}): "
                    "run as root to test the full-disk edges")
    yield path
    subprocess.run(["umount", "-l", path], check=False)


def small_disk_config(workdir, pg, db, disk, ingest):
    cfg = re.sub(r'spool:\n  dir: "[^"]*"\n',
                 f'spool:\n  dir: "{disk}/spool"\n  max_bytes: 1GiB\n  segment_bytes: 256KiB\n',
                 base_config(workdir, pg=pg, dbname=db))
    return cfg + "ingest:\n" + ingest


def test_a_durable_request_on_a_full_disk_is_refused_at_once_and_nothing_of_it_kept(
        daemon_factory, workdir, pg, db, small_disk):
    """PostgreSQL down, the spool's disk full (a 2 MiB tmpfs): a durable request can be kept
    neither in PostgreSQL nor on disk, so it gets overloaded with retry_after_ms at once (it used
    to wait without an answer), and nothing of it is stored later."""
    user = make_users(pg, db, 1)[0]
    d = daemon_factory(small_disk_config(workdir, pg, db, small_disk,
                                         "  batch_rows: 50\n  batch_ms: 5\n"))
    pg.stop()
    try:
        with d.client(timeout=30) as c:
            acked = []
            for i in range(200):  # queued requests of 50 KB until the 2 MiB disk is full
                batch = [big_event(user, i * 50 + j) for j in range(50)]
                assert c.call("log_usage", batch) == {"accepted": 50}
                acked.extend(e["id"] for e in batch)
                if c.call("stats")["spool"]["state"] == "disk_full":
                    break
            else:
                raise AssertionError("the disk never filled")
            refused = [big_event(user, 10**6 + j) for j in range(5)]
            t0 = time.monotonic()
            err = c.call_err("log_usage", [refused, {"ack": "durable"}])
            assert err["code"] == "overloaded" and err["retry_after_ms"] > 0, err
            assert time.monotonic() - t0 < 5
            assert c.call("stats")["ingest"]["requests_overloaded"] >= 1
    finally:
        pg.start()
    servers.wait_for(lambda: count(pg, db) >= len(acked), 60, "the accepted rows to land")
    got = set(ids_in(pg, db))
    assert set(acked) == got
    assert not got & {e["id"] for e in refused}


def test_a_stop_that_the_disk_cannot_take_says_how_many_rows_are_lost_and_exits_non_zero(
        daemon_factory, workdir, pg, db, small_disk):
    """Only a disk that is really full stops the stop's spilling: then one log line says how
    many rows could not be kept, and the exit code is not 0."""
    user = make_users(pg, db, 1)[0]
    d = daemon_factory(small_disk_config(
        workdir, pg, db, small_disk,
        "  batch_rows: 100000\n  batch_ms: 60000\n  queue_rows: 200000\n  drain_timeout_s: 1\n"))
    pg.stop()
    try:
        with d.client() as c:
            sent = 0
            for i in range(6):  # 3 MB queued in memory, more than the 2 MiB disk holds
                assert c.call("log_usage", [big_event(user, i * 500 + j) for j in range(500)]) \
                    == {"accepted": 500}
                sent += 500
        d.signal(signal.SIGTERM)
        assert d.wait_exit(timeout=30) != 0
        lines = [l for l in d.log_text().splitlines() if "could be kept neither" in l]
        assert len(lines) == 1, lines
        lost = int(lines[0].split("ingest: ")[1].split(" ")[0])
        assert 0 < lost <= sent
    finally:
        pg.start()


def test_durable_acks_after_the_spool_directory_is_removed_are_in_files_a_restart_finds(
        daemon_factory, workdir, pg, db):
    """rm -rf of the spool directory under durable acks: the daemon finds the segment it writes
    unlinked, makes the directory and a new segment again and writes there before it acks, so a
    SIGKILL and a restart lose none of the acks given after the removal."""
    user = make_users(pg, db, 1)[0]
    d = start(daemon_factory, workdir, pg, db, name="unlinked")
    pg.stop()
    after = []
    try:
        with d.client() as c:
            for i in range(5):
                assert c.call("log_usage", [event(user, i)], {"ack": "durable"}) == \
                    {"accepted": 1}
            shutil.rmtree(spool_dir(d))
            for i in range(5):
                batch = [event(user, 100 + i)]
                assert c.call("log_usage", batch, {"ack": "durable"}) == {"accepted": 1}
                after.extend(e["id"] for e in batch)
            s = c.call("stats")["spool"]
            assert s["segments_remade"] >= 1 and s["state"] == "ok", s
        assert glob.glob(os.path.join(spool_dir(d), "api_usage_logs", "*.seg"))
        d.kill()
        d.start()
    finally:
        pg.start()
    servers.wait_for(lambda: set(after) <= set(ids_in(pg, db)), 60,
                     "the acks given after the removal to be replayed")


def test_a_spool_directory_made_again_is_locked_again(daemon_factory, workdir, pg, db):
    """The lock file goes with a removed spool directory: the daemon that makes the directory
    again takes its lock again, so a second daemon on it still refuses to start."""
    user = make_users(pg, db, 1)[0]
    d = start(daemon_factory, workdir, pg, db, name="relock")
    pg.stop()
    try:
        with d.client() as c:
            assert c.call("log_usage", [event(user, 0)], {"ack": "durable"}) == {"accepted": 1}
            shutil.rmtree(spool_dir(d))
            assert c.call("log_usage", [event(user, 1)], {"ack": "durable"}) == {"accepted": 1}
            assert c.call("stats")["spool"]["segments_remade"] >= 1
        assert os.path.exists(os.path.join(spool_dir(d), "lock"))
        assert_a_second_daemon_refuses(daemon_factory, d, "relock-intruder")
    finally:
        pg.start()


def test_a_daemon_whose_remade_spool_another_daemon_locked_stops_writing_to_it(
        daemon_factory, workdir, pg, db):
    """A second daemon started on a removed spool directory takes the new lock first: the first
    one, finding its segment gone, does not write beside it (the two would collide); its
    durable requests are refused as unavailable, the one in flight waits in memory and lands
    once PostgreSQL is back."""
    user = make_users(pg, db, 1)[0]
    d = start(daemon_factory, workdir, pg, db, name="ousted")
    text = open(d.config).read().replace(d.socket, d.socket + ".2")
    pg.stop()
    other = None
    try:
        with d.client(timeout=30) as c:
            assert c.call("log_usage", [event(user, 0)], {"ack": "durable"}) == {"accepted": 1}
            shutil.rmtree(spool_dir(d))
            other = daemon_factory(text, start=False, name="taker")
            other.socket = d.socket + ".2"
            other.start()  # starts: the directory is free
            segments = glob.glob(os.path.join(spool_dir(d), "*", "*.seg"))
            waiting = [event(user, 1)]
            msgid = c.send_request("log_usage", [waiting, {"ack": "durable"}])
            servers.wait_for(lambda: d.client().call("stats")["spool"]["state"] == "error", 10,
                             "the spool to say it cannot write")
            assert "another usaged holds its lock" in d.client().call("stats")["spool"]["error"]
            refused = [event(user, 2)]
            err = c.call_err("log_usage", [refused, {"ack": "durable"}])
            assert err["code"] == "unavailable", err
            assert glob.glob(os.path.join(spool_dir(d), "*", "*.seg")) == segments
            other.kill()
            pg.start()
            err, result = c.wait(msgid)
            assert err is None and result == {"accepted": 1}
    finally:
        if pg.pid is None:
            pg.start()
    ids = set(ids_in(pg, db))
    assert waiting[0]["id"] in ids and refused[0]["id"] not in ids


def test_a_spool_directory_that_cannot_be_made_again_refuses_durable_requests_as_unavailable(
        daemon_factory, workdir, pg, db):
    """When the spool directory is gone and a file stands in its way, nothing can be written:
    the request whose write failed waits in memory (for PostgreSQL), and a new durable request
    is refused at once with unavailable, nothing of it kept."""
    user = make_users(pg, db, 1)[0]
    d = start(daemon_factory, workdir, pg, db, name="blocked")
    pg.stop()
    try:
        with d.client(timeout=30) as c:
            assert c.call("log_usage", [event(user, 0)], {"ack": "durable"}) == {"accepted": 1}
            shutil.rmtree(spool_dir(d))
            with open(spool_dir(d), "w") as f:
                f.write("in the way")
            waiting = [event(user, 1)]
            msgid = c.send_request("log_usage", [waiting, {"ack": "durable"}])
            servers.wait_for(lambda: d.client().call("stats")["spool"]["state"] == "error", 10,
                             "the spool to say it cannot write")
            refused = [event(user, 2)]
            err = c.call_err("log_usage", [refused, {"ack": "durable"}])
            assert err["code"] == "unavailable" and err["retry_after_ms"] > 0, err
            os.unlink(spool_dir(d))
            pg.start()
            err, result = c.wait(msgid)  # kept in memory, written once PostgreSQL is back
            assert err is None and result == {"accepted": 1}
    finally:
        if pg.pid is None:
            pg.start()
    ids = set(ids_in(pg, db))
    assert waiting[0]["id"] in ids and refused[0]["id"] not in ids
