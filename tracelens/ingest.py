"""Import trace files into the store: one transaction per file, so a bad file leaves no trace."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tracelens.errors import InputFormatError

if TYPE_CHECKING:
    from tracelens.importers.sources import Source
    from tracelens.store import Store


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


def import_source(
    store: Store,
    source: Source,
    fmt: str | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> FileResult:
    """Import one file (or stdin) in one transaction; raises InputFormatError on bad input."""
    from tracelens import importers
    from tracelens.importers.sources import open_source
    from tracelens.model import gc_paused

    with open_source(source, on_bytes) as stream, gc_paused():
        try:
            stats = store.write(importers.read(stream, source.name, fmt))
        except (OSError, EOFError) as exc:  # truncated gzip, unreadable file
            raise InputFormatError(source.name, f"cannot read: {exc}") from exc
    return FileResult(source.name, stats.received, stats.inserted)


def import_paths(
    store: Store,
    paths: list[str],
    fmt: str | None = None,
    *,
    keep_going: bool = False,
    on_bytes: Callable[[int], None] | None = None,
    on_file: Callable[[FileResult], None] | None = None,
) -> ImportReport:
    """Import files, directories (recursively), ``.gz`` and ``-`` (stdin).

    Each file is all-or-nothing. Without ``keep_going`` the first bad file stops the import
    (files before it stay imported); with it, bad files are reported and skipped.
    """
    from tracelens.importers.sources import expand

    report = ImportReport()
    for source in expand(paths):
        try:
            result = import_source(store, source, fmt, on_bytes)
        except InputFormatError as exc:
            if not keep_going:
                raise
            result = FileResult(source.name, 0, 0, str(exc))
        report.files.append(result)
        if on_file:
            on_file(result)
    return report
