"""usaged --migrate: applies the embedded migrations once, from any directory; the daemon refuses
to start against a database that is behind."""

import glob
import os
import subprocess

import servers
from conftest import SQL_DIR, base_config, sql
from usaged_client import USAGED_BIN


def migrate(workdir, pg, db, cwd="/"):
    cfg = os.path.join(workdir, f"migrate-{db}.yaml")
    with open(cfg, "w") as f:
        f.write(base_config(workdir, pg=pg, dbname=db).replace("@SOCKET@", "/tmp/unused"))
    return subprocess.run([USAGED_BIN, "--migrate", "-c", cfg], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_migrate_applies_every_migration_in_order_then_is_a_no_op(workdir, pg, fresh_db):
    files = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(SQL_DIR, "*.sql")))
    first = migrate(workdir, pg, fresh_db)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == [w for name in files for w in ("applied", name)]
    rows = sql(pg, fresh_db, "SELECT version, name FROM usaged_meta.schema_migrations ORDER BY 1")
    assert [r[1] for r in rows] == files
    assert [r[0] for r in rows] == list(range(1, len(files) + 1))
    again = migrate(workdir, pg, fresh_db)
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout
    assert len(sql(pg, fresh_db, "SELECT 1 FROM usaged_meta.schema_migrations")) == len(files)


def test_the_daemon_role_can_read_the_bookkeeping(workdir, pg, fresh_db):
    assert migrate(workdir, pg, fresh_db).returncode == 0
    r = subprocess.run([servers.PSQL, "-X", "-At", "-d",
                        pg.dsn(fresh_db, user="usaged"), "-c",
                        "SELECT count(*) FROM usaged_meta.schema_migrations"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) > 0


def test_a_failing_migration_is_rolled_back_and_reported(workdir, pg, fresh_db):
    # A table in the way of the first CREATE TABLE of 0002 makes that migration fail.
    pg.psql("CREATE SCHEMA usaged; CREATE TABLE usaged.rejects (x int)", fresh_db, pg.migrator)
    r = migrate(workdir, pg, fresh_db)
    assert r.returncode == 1
    assert "migration 0002_core" in r.stderr and "already exists" in r.stderr
    versions = [v for (v,) in sql(pg, fresh_db, "SELECT version FROM usaged_meta.schema_migrations")]
    assert versions == [1]


def _start(workdir, pg, db):
    cfg = os.path.join(workdir, f"start-{db}.yaml")
    with open(cfg, "w") as f:
        f.write(base_config(workdir, pg=pg, dbname=db).replace(
            "@SOCKET@", os.path.join(workdir, f"{db}.sock")))
    return subprocess.run([USAGED_BIN, "-c", cfg], capture_output=True, text=True, timeout=60)


def test_the_daemon_refuses_to_start_on_a_database_without_the_schema(workdir, pg, fresh_db):
    r = _start(workdir, pg, fresh_db)
    assert r.returncode == 1
    assert "run usaged --migrate" in r.stderr


def test_the_daemon_refuses_to_start_on_a_database_that_is_behind(workdir, pg, fresh_db):
    assert migrate(workdir, pg, fresh_db).returncode == 0
    sql(pg, fresh_db, "DELETE FROM usaged_meta.schema_migrations "
        "WHERE version = (SELECT max(version) FROM usaged_meta.schema_migrations)")
    r = _start(workdir, pg, fresh_db)
    assert r.returncode == 1
    assert "run usaged --migrate first" in r.stderr


def test_a_database_ahead_of_the_binary_is_said_so_and_the_daemon_starts(
        daemon_factory, workdir, pg, fresh_db):
    # A newer usaged migrated it (a rolling upgrade): the migrations only add, so this one runs,
    # and says to upgrade it; --migrate applies nothing and says why.
    assert migrate(workdir, pg, fresh_db).returncode == 0
    ahead = len(glob.glob(os.path.join(SQL_DIR, "*.sql"))) + 1
    sql(pg, fresh_db, "INSERT INTO usaged_meta.schema_migrations (version, name) "
        "VALUES (%s, 'from_the_future')", (ahead,))
    r = migrate(workdir, pg, fresh_db)
    assert r.returncode == 0, r.stderr
    assert f"nothing applied: the database is at migration {ahead}, newer than" in r.stdout
    assert "up to date" not in r.stdout
    d = daemon_factory(base_config(workdir, pg=pg, dbname=fresh_db))
    with d.client() as c:
        assert c.call("ping")["protocol"] == 1
    assert f"the database is at migration {ahead}, newer than this binary's" in d.log_text()


def test_the_bookkeeping_is_out_of_the_daemon_roles_reach(workdir, pg, fresh_db):
    """usaged owns schema usaged; the migrator runs as a superuser: nothing it reads or writes may
    be something usaged could replace."""
    assert migrate(workdir, pg, fresh_db).returncode == 0
    owner = sql(pg, fresh_db, "SELECT nspowner::regrole::text FROM pg_namespace "
                "WHERE nspname = 'usaged_meta'")[0][0]
    assert owner != "usaged"
    r = subprocess.run([servers.PSQL, "-X", "-At", "-d",
                        pg.dsn(fresh_db, user="usaged"), "-c",
                        "DROP TABLE usaged_meta.schema_migrations"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "must be owner" in r.stderr
