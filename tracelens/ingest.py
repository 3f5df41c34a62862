"""Import trace files into the store: one transaction per file, so a bad file leaves no trace.

Large files of a format that can be split (Jaeger JSON's ``{"data":[…]}``) are parsed and
flattened by worker processes while this one writes to DuckDB: the two halves of an import cost
about the same CPU, and Python parses on one core at a time.
"""

from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracelens.errors import InputFormatError

if TYPE_CHECKING:
    import pyarrow as pa

    from tracelens.importers.sources import Source
    from tracelens.store import Store

PARALLEL_BYTES = 32 << 20  # smaller files are done before worker processes would have started
MAX_WORKERS = 4  # the writer takes about a third of the CPU: more workers only wait for it
CLOSE_TIMEOUT_S = 30.0


@dataclass
class FileResult:
    source: str
    spans: int  # rows read from the file
    inserted: int  # rows new to the store
    error: str | None = None


@dataclass
class ImportReport:
    files: list[FileResult] = field(default_factory=list)

    @property
    def spans(self) -> int:
        return sum(f.spans for f in self.files)

    @property
    def inserted(self) -> int:
        return sum(f.inserted for f in self.files)

    @property
    def failed(self) -> list[FileResult]:
        return [f for f in self.files if f.error]


def default_workers() -> int:
    """Parsing processes for large files: one per CPU (none on one CPU), at most MAX_WORKERS."""
    cpus = os.cpu_count() or 1
    return min(cpus, MAX_WORKERS) if cpus > 1 else 0


class Workers:
    """Parsing processes, started on first use and shared by the files of one import.

    Each is a fresh ``python -c`` running :func:`serve_jobs` and fed by one thread here:
    ``(fn, args)`` goes down its stdin as a pickle, ``(ok, result)`` comes back on its stdout.
    Unlike ``multiprocessing`` this never re-imports the caller's ``__main__`` (a script
    without a ``__name__`` guard would import itself again) and never forks DuckDB's threads.
    ``submit`` returns a Future; a worker that dies fails its job, and when none is left the
    pool fails every job and refuses new ones (callers then read in order).
    """

    def __init__(self, count: int) -> None:
        self.count = count
        # Runs in flight (4 MB, ≈ 5k spans each). The store inserts 131k rows at a time, ≈ 0.7 s
        # in which it takes no result; with 2·count + 2 runs the workers ran dry in ≈ 0.4 s and
        # the machine sat 17% idle. 6·count + 2 covers an insert (≈ +50 MB of results waiting).
        self.ahead = 6 * count + 2
        self._jobs: queue.Queue[Any] = queue.Queue()
        self._procs: list[subprocess.Popen[bytes]] = []
        self._threads: list[threading.Thread] = []
        self._alive = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        with self._lock:
            if not self._procs:
                self._start()
            if not self._alive:
                raise RuntimeError("every import worker process has died")
        future: Future[Any] = Future()
        self._jobs.put((future, fn, args))
        return future

    def _start(self) -> None:
        env = dict(os.environ)  # this tracelens, wherever it was imported from
        here = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (here, env.get("PYTHONPATH"))))
        for i in range(self.count):
            proc = subprocess.Popen(
                [sys.executable, "-c", "from tracelens.ingest import serve_jobs; serve_jobs()"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
            )
            thread = threading.Thread(
                target=self._serve, args=(proc,), name=f"tracelens-worker-{i}", daemon=True
            )
            self._procs.append(proc)
            self._threads.append(thread)
            self._alive += 1
            thread.start()

    def _serve(self, proc: subprocess.Popen[bytes]) -> None:
        while (item := self._jobs.get()) is not None:
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                pickle.dump((fn, args), proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                proc.stdin.flush()  # type: ignore[union-attr]
                ok, value = pickle.load(proc.stdout)  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 — a dead worker, or a channel in an unknown state
                proc.kill()
                future.set_exception(RuntimeError(f"import worker died: {exc!r}"))
                self._died()
                return
            if ok:
                future.set_result(value)
            else:
                future.set_exception(RuntimeError(value))

    def _died(self) -> None:
        with self._lock:
            self._alive -= 1
            if self._alive:
                return
        while True:  # nobody is left to take queued jobs
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                return
            if item is not None and item[0].set_running_or_notify_cancel():
                item[0].set_exception(RuntimeError("every import worker process has died"))

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=CLOSE_TIMEOUT_S)
        for proc in self._procs:
            try:
                proc.stdin.close()  # type: ignore[union-attr]  # EOF: serve_jobs returns
            except OSError:  # a worker that died
                pass
            try:
                proc.wait(timeout=CLOSE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]
        self._procs, self._threads = [], []

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_jobs() -> None:
    """A worker process's loop: pickled ``(fn, args)`` in on stdin, ``(ok, result)`` out."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent
    # rolls back and closes our stdin, which ends this loop
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the channel
    while True:
        try:
            fn, args = pickle.load(stdin)
        except EOFError:
            return
        try:
            reply = (True, fn(*args))
        except Exception as exc:  # noqa: BLE001 — reported to the caller's Future
            reply = (False, f"{type(exc).__name__}: {exc}")
        pickle.dump(reply, stdout, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.flush()


def import_source(
    store: Store,
    source: Source,
    fmt: str | None = None,
    on_bytes: Callable[[int], None] | None = None,
    workers: Workers | None = None,
) -> FileResult:
    """Import one file (or stdin) in one transaction; raises InputFormatError on bad input."""
    from tracelens.importers.sources import open_source
    from tracelens.model import gc_paused

    with open_source(source, on_bytes) as stream, gc_paused():
        try:
            stats = store.write(_batches(stream, source, fmt, workers))
        except (OSError, EOFError) as exc:  # truncated gzip, unreadable file
            raise InputFormatError(source.name, f"cannot read: {exc}") from exc
    return FileResult(source.name, stats.received, stats.inserted)


def _batches(
    stream: Any, source: Source, fmt: str | None, workers: Workers | None
) -> Iterator[pa.RecordBatch]:
    from tracelens import importers
    from tracelens.importers.sources import peek

    module = importers.get(fmt) if fmt else importers.detect(peek(stream), source.name)
    split = getattr(module, "read_parallel", None)
    if workers is not None and split is not None and _input_bytes(source) >= PARALLEL_BYTES:
        yield from split(stream, source.name, workers.submit, ahead=workers.ahead)
    else:
        yield from module.read(stream, source.name)


def _input_bytes(source: Source) -> int:
    """The size to read: on disk, or for gzip what its trailer says (ISIZE: the size mod 2**32
    of the last member, a fair guess for choosing between one process and several)."""
    size = source.size or 0
    if source.path is None or size < 18:
        return size
    try:
        with open(source.path, "rb") as raw:
            if raw.read(2) != b"\x1f\x8b":
                return size
            raw.seek(-4, os.SEEK_END)
            return max(size, int.from_bytes(raw.read(4), "little"))
    except OSError:
        return size


def import_paths(
    store: Store,
    paths: list[str],
    fmt: str | None = None,
    *,
    keep_going: bool = False,
    on_bytes: Callable[[int], None] | None = None,
    on_file: Callable[[FileResult], None] | None = None,
    workers: int | None = None,
) -> ImportReport:
    """Import files, directories (recursively), ``.gz`` and ``-`` (stdin).

    Each file is all-or-nothing. Without ``keep_going`` the first bad file stops the import
    (files before it stay imported); with it, bad files are reported and skipped. ``workers``
    is the number of parsing processes for large files (default: :func:`default_workers`;
    0 parses everything in this process).
    """
    from tracelens.importers.sources import expand

    report = ImportReport()
    count = default_workers() if workers is None else workers
    with Workers(count) as pool:
        for source in expand(paths):
            try:
                result = import_source(store, source, fmt, on_bytes, pool if count > 0 else None)
            except InputFormatError as exc:
                if not keep_going:
                    raise
                result = FileResult(source.name, 0, 0, str(exc))
            report.files.append(result)
            if on_file:
                on_file(result)
    return report
