"""knobflow's records: files in the home by default, one PostgreSQL table every host shares when
``KNOBFLOW_RECORDS_URL`` is set; the lock holds across processes (and so hosts)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from targets.common.errors import EnvironmentFault, KnobflowError
from targets.common.records import FileRecords, PgRecords, records, shown_url


def _pg(env: dict[str, str]) -> PgRecords:
    return PgRecords(env["KNOBFLOW_RECORDS_URL"], Path(env["KNOBFLOW_SECRET_FILE"]))


def test_files_in_the_home_by_default(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KNOBFLOW_RECORDS_URL", raising=False)
    store = records(home=home)
    assert isinstance(store, FileRecords) and not store.shared
    store.write("tables/s/a.parquet", b"one")
    store.write("rules/s.learned.yaml", b"two")
    assert (home / "tables" / "s" / "a.parquet").read_bytes() == b"one"  # the layout as it was
    assert store.read("rules/s.learned.yaml") == b"two" and store.read("nothing") is None
    assert store.keys("tables/s/") == ["tables/s/a.parquet"]
    with store.lock("champion:x"), pytest.raises(TimeoutError), \
            records(home=home).lock("champion:x", timeout=0):
        pass
    for bad in ("/etc/passwd", "../x", "a/../../b", ""):
        with pytest.raises(KnobflowError, match="relative path"):
            store.write(bad, b"")


def test_shared_records_read_write_keys_and_upsert(records_db: dict[str, str], home: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in records_db.items():
        monkeypatch.setenv(key, value)
    store = records(home=home)
    assert isinstance(store, PgRecords) and store.shared
    assert "knobflow@127.0.0.1" in store.where
    prefix = f"tables/{home.name}-svc/"
    store.write(prefix + "s1.parquet", b"\x00first")
    store.write(prefix + "s1.parquet", b"\x00second")  # an upsert: the last write wins
    store.write(prefix + "s2.parquet", b"x" * 100_000)
    assert store.read(prefix + "s1.parquet") == b"\x00second"
    assert store.keys(prefix) == [prefix + "s1.parquet", prefix + "s2.parquet"]
    assert store.keys(prefix + "s2") == [prefix + "s2.parquet"]
    assert store.read(prefix + "none") is None
    assert not (home / "tables").exists()  # nothing went to the home


def test_the_shared_lock_holds_across_processes(records_db: dict[str, str]) -> None:
    """Another process (its own database session, as another host's) holds the lock: this one
    waits, and goes on when it is released; a process that dies releases it."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from targets.common.records import PgRecords
        store = PgRecords({records_db['KNOBFLOW_RECORDS_URL']!r},
                          Path({records_db['KNOBFLOW_SECRET_FILE']!r}))
        with store.lock("champion:test-lock"):
            print("held", flush=True)
            sys.stdin.readline()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        store = _pg(records_db)
        with pytest.raises(TimeoutError, match="champion:test-lock"), \
                store.lock("champion:test-lock", timeout=0.5):
            pass
        with store.lock("champion:another", timeout=0.5):
            pass  # another name: not held
        holder.kill()  # dies holding it: its session ends, the lock with it
        holder.wait(10)
        started = time.monotonic()
        with store.lock("champion:test-lock", timeout=10):
            pass
        assert time.monotonic() - started < 10
    finally:
        holder.kill()
        holder.wait(10)


def test_a_database_that_does_not_answer_is_named_without_its_password(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret-pass\n")
    secret.chmod(0o600)
    store = PgRecords("postgresql+psycopg2://knobflow@127.0.0.1:9/knobflow", secret)
    with pytest.raises(EnvironmentFault) as caught:
        store.read("rules/x.learned.yaml")
    text = str(caught.value)
    assert "postgresql+psycopg2://knobflow@127.0.0.1:9/knobflow" in text
    assert "does not answer" in text and "s3cret" not in text
    with pytest.raises(KnobflowError, match="secret file"):
        PgRecords("postgresql://knobflow@127.0.0.1:9/k", tmp_path / "missing").read("a")
    with pytest.raises(KnobflowError, match="PostgreSQL"):
        PgRecords("sqlite:///x.db")
    assert shown_url("postgresql://knobflow:pw@h:5/db") == "postgresql://knobflow@h:5/db"
