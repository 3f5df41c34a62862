"""The single writer: group commits of the batches of many concurrent requests.

A request calls :meth:`Writer.consume` (or awaits :meth:`Writer.consume_async`) and returns
once the commit that holds its spans has returned, so a request is acknowledged only after
its spans are durable. In ``serve`` that commit goes to the write-ahead journal
(``receiver.journaled``), which moves the spans into the store behind it. While one commit
runs, the next requests queue up and go into the next commit together: the commit cost is
shared, and DuckDB's single writer is never contended. The queue is bounded in spans; when
it is full the request is refused as retryable (OTLP backpressure).

Two threads form a pipeline: one groups the queued requests and converts their spans to
one Arrow batch (Python, holds the GIL) while the other commits the previous group (DuckDB,
releases it). At most one converted group waits for the committer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tracelens.receiver.status import Condition, ExportFault

if TYPE_CHECKING:
    import pyarrow as pa

    from tracelens.store import Store

log = logging.getLogger(__name__)

MAX_PENDING_SPANS = 100_000  # queued + committing; beyond this requests get UNAVAILABLE
MAX_COMMIT_SPANS = 50_000  # spans per commit
ACK_TIMEOUT_S = 60.0
# A journal commit costs a few ms however small (a DuckDB transaction and its WAL sync), so
# the writer waits up to LINGER_S after the oldest queued request for MIN_COMMIT_SPANS to
# gather: fewer, larger commits for a bounded wait. At half rate, 20 ms gave an Export p50 of
# 35-45 ms and 5 ms one of 21-37 ms, but twice the journal commits (benchmarks/RESULTS.md).
LINGER_S = 0.01
MIN_COMMIT_SPANS = 10_000


@dataclass
class _Pending:
    batches: list[pa.RecordBatch]
    spans: int
    done: threading.Event = field(default_factory=threading.Event)
    error: ExportFault | None = None
    on_done: Callable[[ExportFault | None], None] | None = None  # called in the writer thread
    queued_at: float = field(default_factory=time.monotonic)


@dataclass
class _Converted:
    group: list[_Pending]
    batch: pa.RecordBatch | None  # None: conversion failed, the commit retries per request


_END: Any = object()  # handed to the committer when the writer stops


@dataclass
class WriterStats:
    commits: int = 0
    spans: int = 0  # spans committed (duplicates included)
    inserted: int = 0  # spans new to the store
    commit_seconds: float = 0.0  # in Store.write
    convert_seconds: float = 0.0  # decoder blocks → Arrow
    requests: int = 0  # answered
    wait_seconds: float = 0.0  # summed over requests: queued → answered


class Writer:
    """A ``SpanConsumer`` that commits to a :class:`~tracelens.store.Store` in groups."""

    takes_columns = True  # the decoder's blocks are converted to Arrow once per commit

    def __init__(
        self,
        store: Store,
        *,
        max_pending_spans: int = MAX_PENDING_SPANS,
        max_commit_spans: int = MAX_COMMIT_SPANS,
        ack_timeout_s: float = ACK_TIMEOUT_S,
        linger_s: float = LINGER_S,
        min_commit_spans: int = MIN_COMMIT_SPANS,
    ) -> None:
        self.store = store
        self.max_pending_spans = max_pending_spans
        self.max_commit_spans = max_commit_spans
        self.linger_s = linger_s
        self.min_commit_spans = min_commit_spans
        self.ack_timeout_s = ack_timeout_s
        self.stats = WriterStats()
        self._queue: deque[_Pending] = deque()
        self._pending_spans = 0  # queued, converting or committing
        self._queued_spans = 0
        self._committing = False
        self._cond = threading.Condition()
        self._closing = False
        self._broken: str | None = None
        self._handoff: _Converted | None = None  # converted, waiting for the committer
        self._threads = (
            threading.Thread(target=self._prepare, name="tracelens-writer-prep", daemon=True),
            threading.Thread(target=self._commit_all, name="tracelens-writer", daemon=True),
        )

    def start(self) -> Writer:
        for thread in self._threads:
            thread.start()
        return self

    @property
    def pending_spans(self) -> int:
        return self._pending_spans

    # -- the consumer side ---------------------------------------------------------------------

    def consume(self, batches: list[pa.RecordBatch]) -> None:
        """Return once the spans are committed (raises ``ExportFault`` when they are not)."""
        item = self._enqueue(batches)
        if item is None:
            return
        if not item.done.wait(self.ack_timeout_s):
            raise _late()
        if item.error is not None:
            raise item.error

    async def consume_async(self, batches: list[pa.RecordBatch]) -> None:
        """:meth:`consume` for an event loop: the request waits without holding a thread."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ExportFault | None] = loop.create_future()

        def done(error: ExportFault | None) -> None:
            loop.call_soon_threadsafe(_settle, future, error)

        if self._enqueue(batches, done) is None:
            return
        try:
            error = await asyncio.wait_for(future, self.ack_timeout_s)
        except TimeoutError:
            raise _late() from None
        if error is not None:
            raise error

    def _enqueue(
        self, batches: list[pa.RecordBatch], on_done: Callable | None = None
    ) -> _Pending | None:
        spans = sum(b.num_rows for b in batches)
        if not spans:
            return None
        item = _Pending(batches, spans, on_done=on_done)
        with self._cond:
            self._admit(spans)
            self._queue.append(item)
            self._pending_spans += spans
            self._queued_spans += spans
            self._cond.notify_all()
        return item

    def _admit(self, spans: int) -> None:
        if self._closing:
            raise ExportFault(Condition.SHUTTING_DOWN, "tracelens is shutting down; retry")
        if self._broken:
            raise ExportFault(Condition.COMMIT_FAILED, self._broken)
        # One request larger than the whole queue is still admitted into an empty queue.
        if self._pending_spans and self._pending_spans + spans > self.max_pending_spans:
            raise ExportFault(
                Condition.OVERLOADED,
                f"write queue full ({self._pending_spans} spans waiting); retry later",
            )

    # -- the writer threads --------------------------------------------------------------------

    def _prepare(self) -> None:
        """Group, convert, hand off; ends by handing off ``_END`` once closed and drained."""
        try:
            while True:
                with self._cond:
                    while self._handoff is not None:
                        self._cond.wait()
                group = self._next_group()
                converted = _END if group is None else self._convert(group)
                with self._cond:
                    self._handoff = converted
                    self._cond.notify_all()
                if group is None:
                    return
        except BaseException as exc:  # noqa: BLE001 — never leave a request waiting forever
            log.exception("writer thread failed")
            self._fail_all(f"the writer failed: {exc}", end=True)

    def _commit_all(self) -> None:
        try:
            while True:
                with self._cond:
                    while self._handoff is None:
                        self._cond.wait()
                    converted, self._handoff = self._handoff, None
                    self._committing = converted is not _END
                    self._cond.notify_all()
                if converted is _END:
                    return
                self._commit(converted.group, converted.batch)
                with self._cond:
                    self._committing = False
                    self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 — never leave a request waiting forever
            log.exception("writer thread failed")
            with self._cond:
                stranded, self._handoff = self._handoff, None
                self._committing = False
            if stranded is not None and stranded is not _END:
                self._finish(stranded.group, ExportFault(Condition.COMMIT_FAILED, str(exc)))
            self._fail_all(f"the writer failed: {exc}")

    def _convert(self, group: list[_Pending]) -> _Converted:
        started = time.perf_counter()
        try:
            batch = _one_batch([b for item in group for b in item.batches])
        except Exception as exc:  # noqa: BLE001 — the commit reports it per request
            log.warning("could not convert %d spans: %s", sum(i.spans for i in group), exc)
            batch = None
        self.stats.convert_seconds += time.perf_counter() - started
        return _Converted(group, batch)

    def _next_group(self) -> list[_Pending] | None:
        """The next requests to commit together, or None once closed and drained.

        A group is formed when the committer can take it next: at once if MIN_COMMIT_SPANS
        are queued (to convert while the committer is busy), else when the committer is idle
        and the oldest request has waited ``linger_s``.
        """
        with self._cond:
            while True:
                if self._broken:
                    return None
                if not self._queue:
                    if self._closing:
                        return None
                elif self._handoff is None:
                    if self._closing or self._queued_spans >= self.min_commit_spans:
                        break
                    if not self._committing:
                        left = self._queue[0].queued_at + self.linger_s - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                        continue
                self._cond.wait()
            group, spans = [], 0
            while self._queue and (
                not group or spans + self._queue[0].spans <= self.max_commit_spans
            ):
                item = self._queue.popleft()
                group.append(item)
                spans += item.spans
            self._queued_spans -= spans
            return group

    def _commit(self, group: list[_Pending], batch: pa.RecordBatch | None = None) -> None:
        error = self._write(group, batch)
        if error is not None and len(group) > 1:
            # Isolate the request that cannot be stored; the others still commit.
            for item in group:
                self._commit([item])
            return
        fault = None
        if error is not None:
            fault = ExportFault(Condition.COMMIT_FAILED, f"could not store the spans: {error}")
        self._finish(group, fault)

    def _write(self, group: list[_Pending], batch: pa.RecordBatch | None) -> Exception | None:
        try:
            if batch is None:
                batch = _one_batch([b for item in group for b in item.batches])
            started = time.perf_counter()
            result = self.store.write([batch])
        except Exception as exc:  # noqa: BLE001 — reported to the requests, not raised
            log.warning("commit of %d spans failed: %s", sum(i.spans for i in group), exc)
            return exc
        stats = self.stats
        stats.commits += 1
        stats.spans += result.received
        stats.inserted += result.inserted
        stats.commit_seconds += time.perf_counter() - started
        return None

    def _finish(self, group: list[_Pending], error: ExportFault | None) -> None:
        with self._cond:
            for item in group:
                self._pending_spans -= item.spans
        now = time.monotonic()
        self.stats.requests += len(group)
        self.stats.wait_seconds += sum(now - item.queued_at for item in group)
        for item in group:
            item.error = error
            item.done.set()
            if item.on_done is not None:
                item.on_done(error)

    def _fail_all(self, message: str, *, end: bool = False) -> None:
        """Refuse from now on and fail everything queued; ``end`` also stops the committer
        (after it has committed what was handed to it)."""
        with self._cond:
            self._broken = message
            group = list(self._queue)
            self._queue.clear()
            self._queued_spans = 0
            if end:
                while self._handoff is not None:
                    self._cond.wait()
                self._handoff = _END
                self._cond.notify_all()
        self._finish(group, ExportFault(Condition.COMMIT_FAILED, message))

    # -- shutdown -------------------------------------------------------------------------------

    def close(self, timeout_s: float = 60.0) -> bool:
        """Refuse new spans, commit everything queued, stop the threads. True when drained."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)


# DuckDB settings for a serving store (the store has no hook for them; see tune_store).
CHECKPOINT_THRESHOLD = "128MB"


def tune_store(store: Store) -> None:
    """Settings for the ``serve`` process's store, applied on its connection.

    - ``checkpoint_threshold``: DuckDB checkpoints (compresses the WAL into the file) inside
      the commit that crosses the threshold. At the default 16 MiB (≈16k spans here) each
      checkpoint recompresses the table's open row group again, ≈13 µs a span in all; at
      128 MiB a checkpoint covers a whole row group, ≈3 µs a span. The WAL (and RSS) may
      grow by that much before it is folded in.
    - ``threads``: one core is left to the Python side (decoding holds the GIL); DuckDB's
      threads competing with it on a 2-core machine cost more than they give.
    """
    threads = max(1, (os.cpu_count() or 2) - 1)
    store.con.execute(f"SET threads = {threads}")
    store.con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")


def _one_batch(items: list[Any]) -> pa.RecordBatch:
    """Record batches and decoder column blocks as one record batch, in order."""
    import pyarrow as pa

    from tracelens.receiver.columns import Columns

    batches: list[pa.RecordBatch] = []
    blocks: list[Columns] = []
    for item in items:
        if isinstance(item, Columns):
            blocks.append(item)
            continue
        if blocks:
            batches.append(Columns.concat(blocks).to_batch())
            blocks = []
        batches.append(item)
    if blocks:
        batches.append(Columns.concat(blocks).to_batch())
    return pa.concat_batches(batches) if len(batches) > 1 else batches[0]


def _late() -> ExportFault:
    # The spans may still commit; the client's retry is then deduplicated by the store.
    return ExportFault(Condition.OVERLOADED, "the store did not commit in time; retry")


def _settle(future: asyncio.Future, error: ExportFault | None) -> None:
    if not future.done():  # not cancelled by a timeout or a client that went away
        future.set_result(error)
