"""Decoding OTLP/gRPC requests in worker processes, so the serving process keeps its GIL free.

The writer's DuckDB calls give the GIL up and take it back dozens of times a commit; when a
thread of the same process decodes (pure Python), every take waits. Measured here: a commit
loop that stores 75k spans/s alone stored 23-35k/s beside a decoding thread and 30-48k/s
beside a busy separate process. So requests are decoded by ``python -m
tracelens.receiver.pool`` children; the server forwards the bytes and gets Arrow IPC back.

Frames on the pipes are a 4-byte big-endian length and a payload. Request: source (UTF-8),
then body. Reply: ``O`` + JSON {spans, rejected} then the Arrow IPC stream; or ``E`` + JSON
{problem, where} for an undecodable request; or ``B`` + a message for a bug. A worker that
dies fails its request (internal error, logged) and is started again; a worker whose server
died sees its stdin close and exits.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import IO, Any

import orjson
import pyarrow as pa

from tracelens.errors import InputFormatError

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
WORKER_COMMAND = [sys.executable, "-m", "tracelens.receiver.pool"]
_STOP: Any = None  # the job that ends a dispatcher


@dataclass(frozen=True)
class PoolResult:
    batches: list[pa.RecordBatch]
    accepted: int
    rejected: list[str]


class WorkerDied(RuntimeError):
    """The worker process exited while decoding a request."""


class DecodePool:
    """``workers`` decoding processes, each fed by one dispatcher thread."""

    def __init__(self, workers: int) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._workers: dict[int, subprocess.Popen] = {}  # dispatcher index → its process
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
        return [worker.pid for worker in self._workers.values() if worker.poll() is None]

    def close(self, timeout_s: float = 10.0) -> None:
        for _ in self._threads:
            self._jobs.put(_STOP)
        for thread in self._threads:
            thread.join(timeout_s)

    # -- the dispatcher threads ---------------------------------------------------------------

    def _dispatch(self, index: int) -> None:
        worker: subprocess.Popen | None = self._start(index)  # warm before the first request
        try:
            while True:
                job = self._jobs.get()
                if job is _STOP:
                    return
                body, source, loop, future = job
                if worker is None or worker.poll() is not None:
                    worker = self._start(index)
                try:
                    outcome: Any = _exchange(worker, body, source)
                except Exception as exc:  # noqa: BLE001 — the request is answered, not lost
                    log.error("decode worker %s failed on %s: %s", worker.pid, source, exc)
                    _stop_worker(worker)
                    worker = None
                    outcome = WorkerDied(f"the decoding process failed ({exc})")
                try:
                    loop.call_soon_threadsafe(_settle, future, outcome)
                except RuntimeError:  # the event loop is closed: nobody waits any more
                    pass
        finally:
            if worker is not None:
                _stop_worker(worker)

    def _start(self, index: int) -> subprocess.Popen:
        worker = subprocess.Popen(
            WORKER_COMMAND,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._workers[index] = worker
        return worker


def _stop_worker(worker: subprocess.Popen) -> None:
    try:
        worker.stdin.close()  # type: ignore[union-attr]
        worker.wait(5)
    except (OSError, subprocess.TimeoutExpired):
        worker.kill()
        worker.wait(5)


def _exchange(worker: subprocess.Popen, body: bytes, source: str) -> PoolResult | Exception:
    """One request to the worker and its answer (an exception is returned, not raised)."""
    _write_frame(worker.stdin, source.encode())  # type: ignore[arg-type]
    _write_frame(worker.stdin, body)  # type: ignore[arg-type]
    worker.stdin.flush()  # type: ignore[union-attr]
    reply = _read_frame(worker.stdout)  # type: ignore[arg-type]
    kind, payload = reply[:1], reply[1:]
    if kind == b"O":
        header = orjson.loads(payload)
        ipc = _read_frame(worker.stdout)  # type: ignore[arg-type]
        batches = pa.ipc.open_stream(ipc).read_all().to_batches() if ipc else []
        rejected = header["rejected"]
        return PoolResult(batches, header["spans"] - len(rejected), rejected)
    if kind == b"E":
        error = orjson.loads(payload)
        return InputFormatError(source, error["problem"], error["where"])
    return RuntimeError(f"decoding {source} failed in the worker: {payload.decode()}")


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
