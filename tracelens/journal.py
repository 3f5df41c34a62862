"""The write-ahead journal: spans committed durably before they reach the ``spans`` table.

``tracelens serve`` acknowledges a request once its spans are committed to a journal, a small
DuckDB database of its own beside the store (``<db>.journal/<generation>.duckdb``, one row per
group commit: the spans as LZ4-compressed Arrow IPC). The ``spans`` table then receives them
in large commits behind the acknowledgements (``receiver.journaled``). The journal is a
separate database because a DuckDB checkpoint blocks every commit on its database while it
runs (0.25-0.4 s per 120k spans here): in the store it held every client's acknowledgement
for that long, in the journal it blocks nothing, since the journal never checkpoints.

A journal file is rotated once it holds ``ROTATE_BYTES`` and deleted once everything in it is
in the store. A server killed in between leaves files behind; whoever opens the store next
for writing (a restarted ``serve``, an ``import``, or a reader, which opens it for writing
once) replays them into ``spans`` in order and deletes them. Replaying twice stores nothing
twice: the store skips ``(trace_id, span_id)`` pairs it holds.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tracelens.errors import StoreError

if TYPE_CHECKING:
    import pyarrow as pa

    from tracelens.store import Store

ROTATE_BYTES = 64 << 20  # compressed IPC per journal file before the next one starts
_SUFFIX = ".duckdb"
_NEW = ".new"  # a file being created: never acknowledged anything, safe to delete
_DDL = (
    "CREATE TABLE IF NOT EXISTS entries "
    "(seq BIGINT NOT NULL, spans INTEGER NOT NULL, ipc BLOB NOT NULL)"
)
# The journal never checkpoints: its WAL is the durable copy, and the file is deleted unread.
_CONFIG = {"checkpoint_threshold": "1TB"}


def journal_dir(db_path: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(db_path)}.journal")


def pending_files(db_path: str | os.PathLike[str]) -> list[Path]:
    """The journal files left behind, oldest first (one ``stat`` when there are none)."""
    directory = journal_dir(db_path)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    files = [directory / n for n in names if n.endswith(_SUFFIX) and n[: -len(_SUFFIX)].isdigit()]
    return sorted(files, key=lambda p: int(p.name[: -len(_SUFFIX)]))


@functools.cache
def _ipc_options():  # noqa: ANN202 — pyarrow's IpcWriteOptions, imported lazily
    import pyarrow as pa

    return pa.ipc.IpcWriteOptions(compression="lz4" if pa.Codec.is_available("lz4") else None)


def _ipc(batch: pa.RecordBatch) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema, options=_ipc_options()) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _batches(data: bytes) -> list[pa.RecordBatch]:
    import pyarrow as pa

    return list(pa.ipc.open_stream(data))


def _discard_new(directory: Path) -> None:
    """Delete files a crash left half-created: they never acknowledged anything."""
    for stale in directory.glob(f"*{_NEW}*"):
        stale.unlink()


def _remove(path: Path) -> None:
    for p in (path, Path(f"{path}.wal")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _connect(path: Path):  # noqa: ANN202 — a DuckDB connection
    from tracelens.store import _duckdb

    return _duckdb().connect(str(path), config=dict(_CONFIG))


def _close_unflushed(con) -> None:  # noqa: ANN001
    # The file is about to be deleted: skip the checkpoint DuckDB does at close.
    with contextlib.suppress(Exception):
        con.execute("PRAGMA disable_checkpoint_on_shutdown")
    con.close()


@dataclass
class _File:
    path: Path
    con: object  # a DuckDB connection
    bytes: int = 0
    last_seq: int = 0


class Journal:
    """Appends span batches durably; :meth:`release` drops what the store holds.

    ``append`` is called by one thread, ``release`` by another; a lock guards the file list.
    """

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self.directory = journal_dir(db_path)
        self.directory.mkdir(exist_ok=True)
        if pending_files(db_path):
            raise StoreError(f"{self.directory}: not replayed into the store yet")
        _discard_new(self.directory)
        self._lock = threading.Lock()
        self._files: list[_File] = []
        self._generation = 0
        self._seq = 0
        self._files.append(self._create())

    def _create(self) -> _File:
        """A new journal file; made under a temporary name so a crash cannot leave half of one."""
        self._generation += 1
        path = self.directory / f"{self._generation:08d}{_SUFFIX}"
        new = Path(f"{path}{_NEW}")
        _remove(new)
        con = _connect(new)
        con.execute(_DDL)
        con.execute("CHECKPOINT")
        con.close()
        os.replace(new, path)
        _fsync_dir(self.directory)
        return _File(path, _connect(path))

    def append(self, batch: pa.RecordBatch) -> int:
        """Commit ``batch`` to the journal; returns its sequence number."""
        data = _ipc(batch)
        with self._lock:
            current = self._files[-1]
            self._seq += 1
            seq = self._seq
        try:
            current.con.execute(  # type: ignore[attr-defined]
                "INSERT INTO entries VALUES (?, ?, ?)", [seq, batch.num_rows, data]
            )
        except Exception as exc:
            raise StoreError(f"{current.path}: journal write failed: {exc}") from exc
        current.bytes += len(data)
        current.last_seq = seq
        if current.bytes >= ROTATE_BYTES:
            fresh = self._create()
            with self._lock:
                self._files.append(fresh)
        return seq

    def release(self, stored_seq: int) -> None:
        """Delete the files (but the one being written) whose entries are all in the store."""
        with self._lock:
            done = [f for f in self._files[:-1] if f.last_seq <= stored_seq]
            self._files = [f for f in self._files if f not in done]
        for f in done:
            _close_unflushed(f.con)
            _remove(f.path)

    def close(self, *, stored_seq: int) -> None:
        """Close every file; delete those whose entries are all stored, keep the rest."""
        with self._lock:
            files, self._files = self._files, []
        for f in files:
            _close_unflushed(f.con)
            if f.last_seq <= stored_seq:
                _remove(f.path)
        with contextlib.suppress(OSError):
            self.directory.rmdir()  # only when empty


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- replay ---------------------------------------------------------------------------------------


def _entries(path: Path) -> Iterator[pa.RecordBatch]:
    try:
        con = _connect(path)
    except Exception as exc:
        raise StoreError(f"{path}: cannot open the journal file: {exc}") from exc
    try:
        cursor = con.execute("SELECT seq, ipc FROM entries ORDER BY seq")
        while rows := cursor.fetchmany(64):
            for seq, data in rows:
                try:
                    yield from _batches(data)
                except Exception as exc:
                    raise StoreError(f"{path}: journal entry {seq} is unreadable: {exc}") from exc
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"{path}: cannot read the journal file: {exc}") from exc
    finally:
        _close_unflushed(con)


def recover(store: Store) -> int:
    """Replay the journal files beside ``store`` into it, oldest first; returns the rows offered.

    Each file is written in one store transaction and deleted after it commits, so a failure
    (or a crash) leaves that file and the later ones in place for the next attempt.
    """
    offered = 0
    for path in pending_files(store.path):
        stats = store.write(_entries(path))  # it gathers them into large inserts itself
        offered += stats.received
        _remove(path)
    directory = journal_dir(store.path)
    if directory.exists():
        _discard_new(directory)
        with contextlib.suppress(OSError):
            directory.rmdir()  # only when empty
    return offered
