"""The single writer: one thread group-commits the batches of many concurrent requests.

A request thread calls :meth:`Writer.consume` and blocks until the commit that holds its
spans returns, so a request is acknowledged only after its spans are durable. While one
commit runs, the next requests queue up and go into the next commit together: the commit
cost is shared, and DuckDB's single writer is never contended. The queue is bounded in
spans; when it is full the request is refused as retryable (OTLP backpressure).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tracelens.receiver.status import Condition, ExportFault

if TYPE_CHECKING:
    import pyarrow as pa

    from tracelens.store import Store

log = logging.getLogger(__name__)

MAX_PENDING_SPANS = 100_000  # queued + committing; beyond this requests get UNAVAILABLE
MAX_COMMIT_SPANS = 50_000  # spans per commit
ACK_TIMEOUT_S = 60.0


@dataclass
class _Pending:
    batches: list[pa.RecordBatch]
    spans: int
    done: threading.Event = field(default_factory=threading.Event)
    error: ExportFault | None = None


@dataclass
class WriterStats:
    commits: int = 0
    spans: int = 0  # spans committed (duplicates included)
    inserted: int = 0  # spans new to the store
    commit_seconds: float = 0.0


class Writer:
    """A ``SpanConsumer`` that commits to a :class:`~tracelens.store.Store` in groups."""

    def __init__(
        self,
        store: Store,
        *,
        max_pending_spans: int = MAX_PENDING_SPANS,
        max_commit_spans: int = MAX_COMMIT_SPANS,
        ack_timeout_s: float = ACK_TIMEOUT_S,
    ) -> None:
        self.store = store
        self.max_pending_spans = max_pending_spans
        self.max_commit_spans = max_commit_spans
        self.ack_timeout_s = ack_timeout_s
        self.stats = WriterStats()
        self._queue: deque[_Pending] = deque()
        self._pending_spans = 0
        self._cond = threading.Condition()
        self._closing = False
        self._broken: str | None = None
        self._thread = threading.Thread(target=self._run, name="tracelens-writer", daemon=True)

    def start(self) -> Writer:
        self._thread.start()
        return self

    @property
    def pending_spans(self) -> int:
        return self._pending_spans

    # -- the consumer side ---------------------------------------------------------------------

    def consume(self, batches: list[pa.RecordBatch]) -> None:
        spans = sum(b.num_rows for b in batches)
        if not spans:
            return
        item = _Pending(batches, spans)
        with self._cond:
            self._admit(spans)
            self._queue.append(item)
            self._pending_spans += spans
            self._cond.notify()
        if not item.done.wait(self.ack_timeout_s):
            # It may still commit; the client's retry is then deduplicated by the store.
            raise ExportFault(Condition.OVERLOADED, "the store did not commit in time; retry")
        if item.error is not None:
            raise item.error

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

    # -- the writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                group = self._next_group()
                if group is None:
                    return
                self._commit(group)
        except BaseException as exc:  # noqa: BLE001 — never leave a request waiting forever
            log.exception("writer thread failed")
            self._fail_all(f"the writer failed: {exc}")

    def _next_group(self) -> list[_Pending] | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None
            group, spans = [], 0
            while self._queue and (
                not group or spans + self._queue[0].spans <= self.max_commit_spans
            ):
                item = self._queue.popleft()
                group.append(item)
                spans += item.spans
            return group

    def _commit(self, group: list[_Pending]) -> None:
        error = self._write(group)
        if error is not None and len(group) > 1:
            # Isolate the request that cannot be stored; the others still commit.
            for item in group:
                self._commit([item])
            return
        fault = None
        if error is not None:
            fault = ExportFault(Condition.COMMIT_FAILED, f"could not store the spans: {error}")
        self._finish(group, fault)

    def _write(self, group: list[_Pending]) -> Exception | None:
        import pyarrow as pa

        batches = [b for item in group for b in item.batches]
        started = time.perf_counter()
        try:
            one = pa.concat_batches(batches) if len(batches) > 1 else batches[0]
            result = self.store.write([one])
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
        for item in group:
            item.error = error
            item.done.set()

    def _fail_all(self, message: str) -> None:
        with self._cond:
            self._broken = message
            group = list(self._queue)
            self._queue.clear()
        self._finish(group, ExportFault(Condition.COMMIT_FAILED, message))

    # -- shutdown -------------------------------------------------------------------------------

    def close(self, timeout_s: float = 60.0) -> bool:
        """Refuse new spans, commit everything queued, stop the thread. True when drained."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()
