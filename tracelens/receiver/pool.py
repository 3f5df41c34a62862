"""Decoding OTLP/gRPC requests in worker processes, so the serving process keeps its GIL free.

The writer's DuckDB calls give the GIL up and take it back dozens of times a commit; when a
thread of the same process decodes (pure Python), every take waits. Measured here: a commit
loop that stores 75k spans/s alone stored 23-35k/s beside a decoding thread and 30-48k/s
beside a busy separate process. So requests are decoded by ``python -m
tracelens.receiver.pool`` children; the server forwards the bytes and gets Arrow IPC back.

Frames on the pipes are a 4-byte big-endian length and a payload. Request: source (UTF-8),
then body. Reply: ``O`` + JSON {spans, rejected} then the Arrow IPC stream; or ``E`` + JSON
{problem, where} for an undecodable request; or ``B`` + a message for a bug. Replies come in
the order of the requests, up to ``PIPELINE_DEPTH`` of which are in a worker's pipe. A worker
that dies fails the requests it holds (internal error, logged) and is started again for the
next one; a worker whose server died sees its stdin close and exits.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import queue
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import orjson
import pyarrow as pa

from tracelens.errors import InputFormatError

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
WORKER_COMMAND = [sys.executable, "-m", "tracelens.receiver.pool"]
_STOP: Any = None  # the job that ends a dispatcher
PIPELINE_DEPTH = 2  # requests in a worker's pipe at once: one decoding, the next waiting
PIPE_BYTES = 1 << 20  # a request of 500 spans is ≈ 0.2 MB, its answer about as much


@dataclass(frozen=True)
class PoolResult:
    batches: list[pa.RecordBatch]
    accepted: int
    rejected: list[str]


class WorkerDied(RuntimeError):
    """The worker process exited while decoding a request."""


class DecodePool:
    """``workers`` decoding processes, each fed by one dispatcher thread.

    A worker has up to ``PIPELINE_DEPTH`` requests in its pipe: while it decodes one, the
    next is already there, and a thread of its own reads the answers, in order. With one
    request at a time the worker sat idle while the server, busy with everything else, read
    an answer and sent the next request: it decoded at half a core.
    """

    def __init__(self, workers: int) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._workers: dict[int, _Worker] = {}  # dispatcher index → its current worker
        self._threads = [
            threading.Thread(
                target=self._dispatch, args=(i,), name=f"tracelens-decode-{i}", daemon=True
            )
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    async def decode(self, body: bytes, source: str) -> PoolResult:
        """Decode in a worker; raises ``InputFormatError`` like the in-process decoder."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[PoolResult] = loop.create_future()
        self._jobs.put((body, source, loop, future))
        return await future

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers.values() if w.process.poll() is None]

    def close(self, timeout_s: float = 10.0) -> None:
        for _ in self._threads:
            self._jobs.put(_STOP)
        for thread in self._threads:
            thread.join(timeout_s)

    def _dispatch(self, index: int) -> None:
        worker = self._start(index)  # warm before the first request
        try:
            while True:
                job = self._jobs.get()
                if job is _STOP:
                    return
                if worker.send(*job):
                    continue
                worker.close()  # it died since the last request: one fresh try
                worker = self._start(index)
                if not worker.send(*job):
                    _answer(job[2], job[3], WorkerDied("the decoding process would not start"))
        finally:
            worker.close()

    def _start(self, index: int) -> _Worker:
        worker = self._workers[index] = _Worker()
        return worker


class _Worker:
    """One decoding process, the requests in its pipe and the thread reading its answers."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            WORKER_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        for pipe in (self.process.stdin, self.process.stdout):
            _widen(pipe)
        self._pending: deque[tuple[str, asyncio.AbstractEventLoop, asyncio.Future]] = deque()
        self._lock = threading.Lock()
        self._dead = False
        self._slots = threading.BoundedSemaphore(PIPELINE_DEPTH)
        self._reader = threading.Thread(
            target=self._read_answers, name=f"tracelens-decode-answers-{self.process.pid}",
            daemon=True,
        )  # fmt: skip
        self._reader.start()

    def send(self, body: bytes, source: str, loop: Any, future: asyncio.Future) -> bool:
        """Queue a request to this worker; False (nothing taken) when it has died."""
        self._slots.acquire()
        with self._lock:
            if self._dead or self.process.poll() is not None:
                self._slots.release()
                return False
            self._pending.append((source, loop, future))
        try:
            stdin = self.process.stdin
            _write_frame(stdin, source.encode())  # type: ignore[arg-type]
            _write_frame(stdin, body)  # type: ignore[arg-type]
            stdin.flush()  # type: ignore[union-attr]
        except OSError:
            self.process.kill()  # the reader sees the pipe close and fails what is pending
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Let the worker answer what it has, then end it (it exits when its input closes)."""
        try:
            self.process.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        self._reader.join(timeout_s)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout_s)
        self._reader.join(timeout_s)
        self.process.stdout.close()  # type: ignore[union-attr]

    def _read_answers(self) -> None:
        stdout = self.process.stdout
        while True:
            try:
                answer = _read_answer(stdout)  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 — the pending requests are answered, not lost
                self._fail_pending(exc)
                return
            with self._lock:
                asked = self._pending.popleft() if self._pending else None
            if asked is None:  # an answer to nothing: the worker is out of step
                self.process.kill()
                self._fail_pending(RuntimeError("the worker answered a request not sent"))
                return
            source, loop, future = asked
            self._slots.release()
            _answer(loop, future, answer(source))

    def _fail_pending(self, exc: Exception) -> None:
        with self._lock:
            self._dead = True
            failed = list(self._pending)
            self._pending.clear()
        if not failed:
            return  # closed or died idle
        log.error("decode worker %s failed on %s: %s", self.process.pid, failed[0][0], exc)
        self.process.kill()
        for _source, loop, future in failed:
            self._slots.release()
            _answer(loop, future, WorkerDied(f"the decoding process failed ({exc})"))


def _widen(pipe: IO[bytes] | None) -> None:
    """A pipe buffer that holds a whole request or answer, so neither side waits on the other."""
    if pipe is None or not hasattr(fcntl, "F_SETPIPE_SZ"):
        return
    try:
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size: the default buffer works, only slower


def _read_answer(stream: IO[bytes]) -> Callable[[str], PoolResult | Exception]:
    """The worker's next answer, as a function of the request's source (for error messages)."""
    reply = _read_frame(stream)
    kind, payload = reply[:1], reply[1:]
    if kind == b"O":
        header = orjson.loads(payload)
        ipc = _read_frame(stream)
        batches = pa.ipc.open_stream(ipc).read_all().to_batches() if ipc else []
        rejected = header["rejected"]
        result = PoolResult(batches, header["spans"] - len(rejected), rejected)
        return lambda source: result
    if kind == b"E":
        error = orjson.loads(payload)
        return lambda source: InputFormatError(source, error["problem"], error["where"])
    return lambda source: RuntimeError(
        f"decoding {source} failed in the worker: {payload.decode()}"
    )


def _answer(loop: Any, future: asyncio.Future, outcome: PoolResult | Exception) -> None:
    try:
        loop.call_soon_threadsafe(_settle, future, outcome)
    except RuntimeError:  # the event loop is closed: nobody waits any more
        pass


def _settle(future: asyncio.Future, outcome: PoolResult | Exception) -> None:
    if future.done():  # the call was cancelled meanwhile
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _write_frame(stream: IO[bytes], payload: bytes | memoryview) -> None:
    stream.write(_LENGTH.pack(len(payload)))
    stream.write(payload)


def _read_frame(stream: IO[bytes]) -> bytes:
    head = stream.read(_LENGTH.size)
    if len(head) != _LENGTH.size:
        raise WorkerDied("the worker closed its output")
    (size,) = _LENGTH.unpack(head)
    payload = stream.read(size)
    if len(payload) != size:
        raise WorkerDied("the worker's answer was cut short")
    return payload


# --- the worker process --------------------------------------------------------------------------


def work(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """Decode requests from ``stdin`` until it closes."""
    import signal

    from tracelens.model import SPAN_SCHEMA
    from tracelens.receiver.decode import decode
    from tracelens.receiver.server import tune_runtime

    # Ctrl-C and a service manager's SIGTERM reach the whole process group; the server
    # drains through this worker, which ends when the server closes its stdin (or dies).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    tune_runtime()
    while True:
        try:
            source = _read_frame(stdin).decode()
            body = _read_frame(stdin)
        except WorkerDied:
            return  # the server closed the pipe (or died)
        try:
            decoded = decode(body, source)
            batches = decoded.batches
            header = {"spans": decoded.spans, "rejected": decoded.rejected}
            sink = pa.BufferOutputStream()
            if batches:
                with pa.ipc.new_stream(sink, SPAN_SCHEMA) as writer:
                    for batch in batches:
                        writer.write_batch(batch)
            _write_frame(stdout, b"O" + orjson.dumps(header))
            _write_frame(stdout, memoryview(sink.getvalue()))
        except InputFormatError as exc:
            _write_frame(stdout, b"E" + orjson.dumps({"problem": exc.problem, "where": exc.where}))
        except Exception as exc:  # noqa: BLE001 — reported to the server, which logs it
            _write_frame(stdout, b"B" + repr(exc).encode())
        stdout.flush()


if __name__ == "__main__":
    work(sys.stdin.buffer, sys.stdout.buffer)
