"""The writer's store: acknowledged at the journal commit, stored in large groups behind it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest
from receiver_support import FakeStore, decoded

from tracelens.errors import StoreError
from tracelens.journal import Journal, journal_dir, pending_files
from tracelens.receiver import journaled as journaled_module
from tracelens.receiver.journaled import JournaledStore
from tracelens.store import Store


def _batch(n: int, name: str = "op") -> pa.RecordBatch:
    return pa.concat_batches(decoded(n, name).batches)


def _journaled(tmp_path: Path, store: FakeStore | Store | None = None, **kw) -> JournaledStore:
    target = store if store is not None else FakeStore()
    return JournaledStore(target, Journal(tmp_path / "x.duckdb"), **kw)  # type: ignore[arg-type]


def test_write_returns_at_the_journal_commit_and_settle_waits_for_the_store(
    tmp_path: Path,
) -> None:
    store = FakeStore()
    store.gate.clear()  # the store cannot commit yet
    journaled = _journaled(tmp_path, store, min_spans=1, linger_s=0)
    try:
        assert journaled.write([_batch(5)]).received == 5  # durable in the journal
        assert [p.name for p in pending_files(tmp_path / "x.duckdb")] == ["00000001.duckdb"]
        assert store.entered.wait(5) and store.commits == []
        assert not journaled.settle(0.2)  # the store has not caught up
        store.gate.set()
        assert journaled.settle(5)
        assert store.commits == [5]
    finally:
        store.gate.set()
        assert journaled.close()
    assert not journal_dir(tmp_path / "x.duckdb").exists()


def test_the_store_gets_large_groups_and_a_reader_makes_it_commit_at_once(
    tmp_path: Path,
) -> None:
    store = FakeStore()
    journaled = _journaled(tmp_path, store, min_spans=1_000, linger_s=60)
    try:
        for _ in range(4):
            journaled.write([_batch(5)])
        time.sleep(0.2)
        assert store.commits == []  # lingering for a larger group
        assert journaled.settle(5)  # a reader arrives
        assert store.commits == [20]
        assert journaled.stats.commits == 1 and journaled.stats.spans == 20
    finally:
        assert journaled.close()


def test_close_stores_everything_journaled(tmp_path: Path) -> None:
    with Store(tmp_path / "x.duckdb") as store:
        journaled = _journaled(tmp_path, store, min_spans=10**6, linger_s=60)
        batches = [_batch(5) for _ in range(3)]
        for batch in batches:
            journaled.write([batch])
        journaled.write([batches[0]])  # a client's retry: stored once
        assert journaled.close()
        assert store.count_spans() == 15
        assert journaled.stats.spans == 20 and journaled.stats.inserted == 15
    assert not journal_dir(tmp_path / "x.duckdb").exists()


def test_a_store_failure_keeps_the_journal_and_refuses_further_writes(tmp_path: Path) -> None:
    store = FakeStore()
    store.poison = {"bad"}
    journaled = _journaled(tmp_path, store, min_spans=1, linger_s=0)
    journaled.write([_batch(3, "bad")])  # acknowledged: it is in the journal
    assert not journaled.settle(5)
    with pytest.raises(StoreError, match="stay in .*journal"):
        journaled.write([_batch(2)])
    assert not journaled.close()
    assert pending_files(tmp_path / "x.duckdb"), "the unstored spans must stay journaled"


def test_write_waits_while_the_store_is_too_far_behind(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(journaled_module, "BEHIND_WAIT_S", 0.3)
    store = FakeStore()
    store.gate.clear()
    journaled = _journaled(tmp_path, store, min_spans=1, linger_s=0, max_behind=8)
    try:
        journaled.write([_batch(5)])
        with pytest.raises(StoreError, match="too far behind"):
            journaled.write([_batch(5)])
        waiting: list[str] = []
        thread = threading.Thread(
            target=lambda: waiting.append(str(journaled.write([_batch(5)]).received))
        )
        thread.start()
        time.sleep(0.1)
        store.gate.set()  # the store catches up: the waiting write goes through
        thread.join(5)
        assert waiting == ["5"]
    finally:
        store.gate.set()
        assert journaled.close()
    assert sum(store.commits) == 10


def test_a_journal_file_that_cannot_be_deleted_does_not_stop_the_store(tmp_path: Path) -> None:
    store = FakeStore()
    journaled = _journaled(tmp_path, store, min_spans=1, linger_s=0)
    real_release = journaled.journal.release
    calls: list[int] = []

    def release(stored_seq: int) -> None:
        calls.append(stored_seq)
        if len(calls) == 1:
            raise PermissionError("read-only directory")
        real_release(stored_seq)

    journaled.journal.release = release  # type: ignore[method-assign]
    try:
        journaled.write([_batch(2)])
        assert journaled.settle(5)
        journaled.write([_batch(3)])  # the store thread is still alive and storing
        assert journaled.settle(5)
        assert store.commits == [2, 3] and calls == [1, 2]
    finally:
        assert journaled.close()


def test_an_unexpected_failure_of_the_store_thread_refuses_writes(tmp_path: Path) -> None:
    class _Exits(FakeStore):
        def write(self, batches):  # noqa: ANN001, ANN202
            raise SystemExit("not an Exception")

    journaled = _journaled(tmp_path, _Exits(), min_spans=1, linger_s=0)
    journaled.write([_batch(2)])
    assert not journaled.settle(5)
    with pytest.raises(StoreError, match="not an Exception"):
        journaled.write([_batch(2)])
    assert not journaled.close()
