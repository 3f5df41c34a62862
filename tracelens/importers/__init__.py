"""File importers: one module per format behind a small registry with content sniffing.

Each importer module defines::

    NAME: str                                   # the --format name
    def sniff(head: bytes, filename: str) -> bool   # head = first 64 KiB, decompressed
    def read(stream: BinaryIO, source: str) -> Iterator[pa.RecordBatch]

``read`` yields ``model.SPAN_SCHEMA`` batches and raises ``InputFormatError(source, problem,
where)`` on bad input. It should stream (bounded memory) where the format allows.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, BinaryIO

from tracelens.errors import UnknownFormatError

if TYPE_CHECKING:
    import pyarrow as pa

# Sniffing order matters: the most specific shapes first, binary protobuf last.
IMPORTER_MODULES = (
    "xray",
    "jaeger_proto_json",
    "jaeger_json",
    "zipkin",
    "otlp_json",
    "otlp_proto",
    "otlp_proto_stream",  # after plain protobuf: its frames start with a length, not a tag
)


def _load(module: str) -> ModuleType:
    return importlib.import_module(f"tracelens.importers.{module}")


def importers() -> list[ModuleType]:
    return [_load(m) for m in IMPORTER_MODULES]


def names() -> list[str]:
    return [m.NAME for m in importers()]


def get(name: str) -> ModuleType:
    """The importer called ``name``; unknown names fail with "did you mean"."""
    by_name = {m.NAME: m for m in importers()}
    if name in by_name:
        return by_name[name]
    close = difflib.get_close_matches(name, list(by_name), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UnknownFormatError(
        "--format", f"unknown format {name!r}{hint} (known: {', '.join(sorted(by_name))})"
    )


def detect(head: bytes, filename: str) -> ModuleType:
    """The first importer whose sniff accepts the content."""
    for module in importers():
        if module.sniff(head, filename):
            return module
    raise UnknownFormatError(
        filename, "not a trace format tracelens knows (use --format to choose one)"
    )


def read(stream: BinaryIO, source: str, fmt: str | None = None) -> Iterator[pa.RecordBatch]:
    """Batches from one open stream, sniffing its format unless ``fmt`` is given."""
    from tracelens.importers.sources import peek

    head = peek(stream)
    module = get(fmt) if fmt else detect(head, source)
    yield from module.read(stream, source)
