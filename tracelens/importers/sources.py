"""Where trace bytes come from: files, directories (recursively), ``.gz``, and ``-`` for stdin."""

from __future__ import annotations

import gzip
import io
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tracelens.errors import InputFormatError

HEAD_BYTES = 64 * 1024
SKIP_SUFFIXES = (".md", ".tsv", ".py", ".txt.orig")


@dataclass(frozen=True)
class Source:
    """One input: its display name, path (None for stdin) and size on disk (if known)."""

    name: str
    path: Path | None
    size: int | None


def expand(paths: list[str]) -> list[Source]:
    """Files as given, directories walked recursively in sorted order, ``-`` as stdin."""
    out: list[Source] = []
    for raw in paths:
        if raw == "-":
            out.append(Source("<stdin>", None, None))
            continue
        path = Path(raw)
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                if child.name.startswith(".") or child.name.endswith(SKIP_SUFFIXES):
                    continue
                out.append(Source(str(child), child, child.stat().st_size))
        elif path.is_file():
            out.append(Source(str(path), path, path.stat().st_size))
        else:
            raise InputFormatError(raw, "no such file or directory")
    return out


class CountingReader(io.RawIOBase):
    """Counts bytes read from the underlying (compressed) file, for progress bars."""

    def __init__(self, raw: BinaryIO, on_bytes: Callable[[int], None] | None) -> None:
        self._raw = raw
        self._on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        if n and self._on_bytes:
            self._on_bytes(n)
        return n or 0


@contextmanager
def open_source(
    source: Source, on_bytes: Callable[[int], None] | None = None
) -> Iterator[BinaryIO]:
    """A buffered, peekable binary stream of the source's decompressed bytes."""
    raw: BinaryIO
    if source.path is None:
        raw = sys.stdin.buffer
        close = False
    else:
        try:
            raw = open(source.path, "rb")  # noqa: SIM115 — closed below
        except OSError as exc:
            raise InputFormatError(source.name, exc.strerror or str(exc)) from exc
        close = True
    try:
        counted = io.BufferedReader(CountingReader(raw, on_bytes), buffer_size=1 << 20)
        magic = counted.peek(2)[:2]
        if magic == b"\x1f\x8b":
            stream: BinaryIO = io.BufferedReader(
                gzip.GzipFile(fileobj=counted, mode="rb"),
                buffer_size=1 << 20,  # type: ignore[arg-type]
            )
        else:
            stream = counted
        yield stream
    finally:
        if close:
            raw.close()


def peek(stream: BinaryIO, size: int = HEAD_BYTES) -> bytes:
    """Up to ``size`` leading bytes without consuming them (streams here are BufferedReaders)."""
    peekable = stream if hasattr(stream, "peek") else io.BufferedReader(stream)  # type: ignore[arg-type]
    head = peekable.peek(size)  # type: ignore[attr-defined]
    try:
        return head[:size]
    except gzip.BadGzipFile as exc:  # pragma: no cover - surfaced on first read instead
        raise InputFormatError("<stream>", f"bad gzip data: {exc}") from exc


def display_size(size: int | None) -> str:
    if size is None:
        return "?"
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size} B"
