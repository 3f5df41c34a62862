"""The single group-committing writer: ack after commit, grouping, backpressure, isolation."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest
from receiver_support import FakeStore, decoded

from tracelens.receiver.status import Condition, ExportFault
from tracelens.receiver.writer import Writer
from tracelens.store import Store


def _batch(n: int, name: str = "op") -> list[pa.RecordBatch]:
    return decoded(n, name).batches


def _in_thread(writer: Writer, batches: list[pa.RecordBatch]) -> tuple[threading.Thread, list]:
    outcome: list = []

    def run() -> None:
        try:
            writer.consume(batches)
            outcome.append("ok")
        except ExportFault as fault:
            outcome.append(fault.condition)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def writer(store: FakeStore):
    w = Writer(store, max_pending_spans=1_000).start()  # type: ignore[arg-type]
    yield w
    store.gate.set()
    w.close(10)


def test_consume_returns_only_after_the_commit(store: FakeStore, writer: Writer) -> None:
    store.gate.clear()
    thread, outcome = _in_thread(writer, _batch(5))
    assert store.entered.wait(5)
    time.sleep(0.2)
    assert outcome == [] and store.commits == []
    store.gate.set()
    thread.join(5)
    assert outcome == ["ok"] and store.commits == [5]


def test_requests_arriving_during_a_commit_share_the_next_one(
    store: FakeStore, writer: Writer
) -> None:
    store.gate.clear()
    first, _ = _in_thread(writer, _batch(5))
    assert store.entered.wait(5)
    waiting = [_in_thread(writer, _batch(5)) for _ in range(10)]
    deadline = time.monotonic() + 5
    while writer.pending_spans < 55 and time.monotonic() < deadline:
        time.sleep(0.01)
    store.gate.set()
    for thread, _ in [(first, None), *waiting]:
        thread.join(5)
    assert all(outcome == ["ok"] for _, outcome in waiting)
    assert store.commits == [5, 50]
    assert writer.stats.commits == 2 and writer.stats.spans == 55


def test_full_queue_refuses_with_a_retryable_fault(store: FakeStore) -> None:
    writer = Writer(store, max_pending_spans=8).start()  # type: ignore[arg-type]
    try:
        store.gate.clear()
        thread, outcome = _in_thread(writer, _batch(5))
        assert store.entered.wait(5)
        with pytest.raises(ExportFault) as fault:
            writer.consume(_batch(5))
        assert fault.value.condition is Condition.OVERLOADED
        store.gate.set()
        thread.join(5)
        assert outcome == ["ok"]
    finally:
        store.gate.set()
        writer.close(10)


def test_a_request_larger_than_the_queue_is_admitted_alone(store: FakeStore) -> None:
    writer = Writer(store, max_pending_spans=3).start()  # type: ignore[arg-type]
    try:
        writer.consume(_batch(10))
        assert store.commits == [10]
    finally:
        writer.close(10)


def test_a_failing_request_does_not_fail_the_others_in_its_group(
    store: FakeStore, writer: Writer
) -> None:
    store.gate.clear()
    first, first_outcome = _in_thread(writer, _batch(2))
    assert store.entered.wait(5)
    store.poison = {"poison"}
    good, good_outcome = _in_thread(writer, _batch(3))
    bad, bad_outcome = _in_thread(writer, _batch(4, "poison"))
    time.sleep(0.3)
    store.gate.set()
    for thread in (first, good, bad):
        thread.join(5)
    assert first_outcome == good_outcome == ["ok"]
    assert bad_outcome == [Condition.COMMIT_FAILED]
    assert store.commits == [2, 3]


def test_close_commits_what_is_queued_then_refuses(store: FakeStore) -> None:
    writer = Writer(store).start()  # type: ignore[arg-type]
    store.gate.clear()
    threads = [_in_thread(writer, _batch(3)) for _ in range(4)]
    assert store.entered.wait(5)
    closer = threading.Thread(target=writer.close)
    closer.start()
    time.sleep(0.2)
    with pytest.raises(ExportFault) as fault:
        writer.consume(_batch(1))
    assert fault.value.condition is Condition.SHUTTING_DOWN
    store.gate.set()
    closer.join(10)
    for thread, outcome in threads:
        thread.join(5)
        assert outcome == ["ok"]
    assert sum(store.commits) == 12


def test_commit_that_takes_too_long_is_answered_retryable(store: FakeStore) -> None:
    writer = Writer(store, ack_timeout_s=0.2).start()  # type: ignore[arg-type]
    try:
        store.gate.clear()
        with pytest.raises(ExportFault) as fault:
            writer.consume(_batch(2))
        assert fault.value.condition is Condition.OVERLOADED
    finally:
        store.gate.set()
        writer.close(10)


def test_duplicates_are_stored_once_within_and_across_commits(tmp_path: Path) -> None:
    with Store(tmp_path / "w.duckdb") as real:
        writer = Writer(real).start()
        batches = _batch(20)
        writer.consume(batches + batches)  # one commit holding every span twice
        threads = [_in_thread(writer, batches) for _ in range(4)]  # client retries
        for thread, outcome in threads:
            thread.join(10)
            assert outcome == ["ok"]
        writer.close(10)
        assert real.count_spans() == 20
        assert writer.stats.spans == 120 and writer.stats.inserted == 20


# --- decoder blocks, lingering, the convert/commit pipeline, the event-loop side ------------


def _blocks(n: int, name: str = "op") -> list:
    return decoded(n, name).blocks


def test_decoder_blocks_are_stored_like_batches(tmp_path: Path) -> None:
    with Store(tmp_path / "blocks.duckdb") as real:
        writer = Writer(real).start()
        blocks = _blocks(12)
        writer.consume(blocks)
        writer.close(10)
        stored = real.scan(ordered=False).sort_by([("span_id", "ascending")])
        expected = pa.Table.from_batches([b.to_batch() for b in blocks])
        assert stored.to_pylist() == expected.sort_by([("span_id", "ascending")]).to_pylist()


def test_a_lone_request_waits_at_most_the_linger(store: FakeStore) -> None:
    writer = Writer(store, linger_s=0.3, min_commit_spans=1_000).start()  # type: ignore[arg-type]
    try:
        first, first_outcome = _in_thread(writer, _batch(2))
        time.sleep(0.1)
        second, second_outcome = _in_thread(writer, _batch(3))
        started = time.monotonic()
        for thread in (first, second):
            thread.join(5)
        assert first_outcome == second_outcome == ["ok"]
        assert store.commits == [5]  # the second arrived within the first's linger
        assert time.monotonic() - started < 2
    finally:
        writer.close(10)


def test_enough_queued_spans_commit_without_lingering(store: FakeStore) -> None:
    writer = Writer(store, linger_s=30, min_commit_spans=4).start()  # type: ignore[arg-type]
    try:
        thread, outcome = _in_thread(writer, _batch(5))
        thread.join(5)
        assert outcome == ["ok"] and store.commits == [5]
    finally:
        writer.close(10)


def test_the_next_group_is_converted_while_a_commit_runs(store: FakeStore) -> None:
    writer = Writer(store, min_commit_spans=10).start()  # type: ignore[arg-type]
    try:
        store.gate.clear()
        first, _ = _in_thread(writer, _blocks(5))
        assert store.entered.wait(5)
        waiting = [_in_thread(writer, _blocks(5)) for _ in range(2)]
        deadline = time.monotonic() + 5
        while writer.stats.convert_seconds == 0 or writer._handoff is None:
            assert time.monotonic() < deadline, "the queued group was not converted"
            time.sleep(0.01)
        assert store.commits == []  # converted while the first commit is still held
        store.gate.set()
        for thread, _ in [(first, None), *waiting]:
            thread.join(5)
        assert all(outcome == ["ok"] for _, outcome in waiting)
        assert store.commits == [5, 10]
    finally:
        store.gate.set()
        writer.close(10)


def test_consume_async_acknowledges_after_the_commit(store: FakeStore) -> None:
    import asyncio

    writer = Writer(store, linger_s=0).start()  # type: ignore[arg-type]
    try:
        asyncio.run(writer.consume_async(_blocks(4)))
        assert store.commits == [4]
        store.poison = {"bad"}
        with pytest.raises(ExportFault) as fault:
            asyncio.run(writer.consume_async(_blocks(3, "bad")))
        assert fault.value.condition is Condition.COMMIT_FAILED
    finally:
        writer.close(10)


def test_consume_async_that_waits_too_long_is_answered_retryable(store: FakeStore) -> None:
    import asyncio

    writer = Writer(store, ack_timeout_s=0.2).start()  # type: ignore[arg-type]
    try:
        store.gate.clear()
        with pytest.raises(ExportFault) as fault:
            asyncio.run(writer.consume_async(_blocks(2)))
        assert fault.value.condition is Condition.OVERLOADED
    finally:
        store.gate.set()
        writer.close(10)
