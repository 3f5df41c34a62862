"""The write-ahead journal: append, rotate, release, and replay after a crash."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest
from receiver_support import decoded

from tracelens import journal as journal_module
from tracelens.errors import StoreError
from tracelens.journal import Journal, journal_dir, pending_files, recover
from tracelens.store import Store


def _batch(n: int, service: str = "shop") -> pa.RecordBatch:
    return pa.concat_batches(decoded(n, service=service).batches)


def _ids(store: Store) -> list[tuple[str, str]]:
    table = store.scan(["trace_id", "span_id"], ordered=False)
    return sorted(zip(table["trace_id"].to_pylist(), table["span_id"].to_pylist(), strict=True))


def _pairs(batch: pa.RecordBatch) -> list[tuple[str, str]]:
    return sorted(zip(batch["trace_id"].to_pylist(), batch["span_id"].to_pylist(), strict=True))


def test_append_rotate_release_and_close(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 1)  # every append fills a file
    db = tmp_path / "j.duckdb"
    journal = Journal(db)
    seqs = [journal.append(_batch(5)) for _ in range(3)]
    assert seqs == [1, 2, 3]
    assert [p.name for p in pending_files(db)] == [f"{g:08d}.duckdb" for g in (1, 2, 3, 4)]
    journal.release(2)  # entries 1 and 2 stored: their files go, the rest stay
    assert [p.name for p in pending_files(db)] == ["00000003.duckdb", "00000004.duckdb"]
    journal.close(stored_seq=2)  # entry 3 is not stored: its file is kept for a replay
    assert [p.name for p in pending_files(db)] == ["00000003.duckdb"]


def test_close_after_everything_is_stored_leaves_nothing(tmp_path: Path) -> None:
    db = tmp_path / "j.duckdb"
    journal = Journal(db)
    seq = journal.append(_batch(5))
    journal.close(stored_seq=seq)
    assert not journal_dir(db).exists()


def test_a_journal_left_behind_must_be_replayed_first(tmp_path: Path) -> None:
    db = tmp_path / "j.duckdb"
    journal = Journal(db)
    journal.append(_batch(5))
    journal.close(stored_seq=0)
    with pytest.raises(StoreError, match="not replayed"):
        Journal(db)


def _crash_after_appending(db: Path, batches: int) -> None:
    """A process that journals ``batches`` requests, then dies without closing anything."""
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_journal import _batch
        from tracelens.journal import Journal
        journal = Journal({str(db)!r})
        for i in range({batches}):
            journal.append(_batch(10, service=f"s{{i}}"))
        os._exit(9)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert done.returncode == 9, done.stderr.decode()


@pytest.mark.parametrize("read_only", [False, True])
def test_opening_the_store_replays_a_crashed_journal(tmp_path: Path, read_only: bool) -> None:
    db = tmp_path / "crash.duckdb"
    Store(db).close()
    _crash_after_appending(db, 3)
    assert pending_files(db)
    with Store(db, read_only=read_only) as store:
        assert store.count_spans() == 30
        assert store.count_traces() == 30 // 5  # sdk_spans: a root and 4 children a trace
    assert not journal_dir(db).exists()


def test_replaying_what_the_store_holds_stores_nothing_twice(tmp_path: Path) -> None:
    db = tmp_path / "twice.duckdb"
    batch = _batch(10)
    with Store(db) as store:
        store.write([batch])
    journal = Journal(db)
    journal.append(batch)  # acknowledged and stored, then the server died before releasing
    journal.append(batch)
    journal.close(stored_seq=0)
    with Store(db) as store:
        assert _ids(store) == _pairs(batch)


def test_an_unreadable_journal_file_is_named_and_kept(tmp_path: Path) -> None:
    db = tmp_path / "bad.duckdb"
    with Store(db) as store:
        store.write([_batch(5)])
    journal_dir(db).mkdir()
    bad = journal_dir(db) / "00000001.duckdb"
    bad.write_bytes(b"not a duckdb file" * 100)
    with pytest.raises(StoreError, match="00000001.duckdb"):
        Store(db)
    assert bad.exists()
    with _open_ignoring_journal(db) as store:
        assert store.count_spans() == 5  # what was stored is untouched


def _open_ignoring_journal(db: Path) -> Store:
    # The store beside the bad journal is still intact: move the journal away and look.
    journal_dir(db).rename(db.with_suffix(".quarantine"))
    return Store(db, read_only=True)


def test_a_half_created_journal_file_is_discarded(tmp_path: Path) -> None:
    db = tmp_path / "half.duckdb"
    Store(db).close()
    journal_dir(db).mkdir()
    (journal_dir(db) / "00000001.duckdb.new").write_bytes(b"")  # a crash while creating it
    assert not pending_files(db)
    journal = Journal(db)
    journal.append(_batch(5))
    journal.close(stored_seq=0)
    with Store(db) as store:
        assert recover(store) == 0  # already replayed when the store opened
        assert store.count_spans() == 5
    assert not journal_dir(db).exists()
