"""The OpenTelemetry Collector file exporter's ``format: proto`` output: framed ``TracesData``.

The exporter writes each batch it receives as a 4-byte big-endian length followed by that many
bytes of ``TracesData`` (wire-identical to ``ExportTraceServiceRequest``), one after another,
so a file grows by appending. Each message is read and decoded on its own (memory stays
bounded by the largest message), with the strict decoding of :mod:`otlp_proto`; errors name
the message and its byte offset. Files the exporter compressed (``compression: zstd``) are not
read: zstd is not in the standard library.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import BinaryIO

import pyarrow as pa

from tracelens.errors import InputFormatError
from tracelens.importers import otlp_proto

NAME = "otlp-proto-stream"

_FRAME = 4  # bytes of the big-endian length before each message
_MAX_MESSAGE = 1 << 31  # a larger length is not a frame of this format (and not memory to ask for)


def sniff(head: bytes, filename: str) -> bool:
    """A length whose message starts like a ``TracesData`` and, if it ends within ``head``, is
    followed by another frame or by the end of the file."""
    if len(head) < _FRAME + 2:
        return False
    length = int.from_bytes(head[:_FRAME], "big")
    if not 2 <= length < _MAX_MESSAGE:
        return False
    # otlp_proto.sniff accepts a message cut off by the end of ``head``.
    if not otlp_proto.sniff(head[_FRAME : _FRAME + length], filename):
        return False
    rest = head[_FRAME + length :]
    if not rest:
        return True
    return len(rest) < _FRAME or 2 <= int.from_bytes(rest[:_FRAME], "big") < _MAX_MESSAGE


def read(stream: BinaryIO, source: str) -> Iterator[pa.RecordBatch]:
    """Batches of ``SPAN_SCHEMA``, message by message; a bad message fails the file."""
    offset = index = 0
    while True:
        header = stream.read(_FRAME)
        if not header:
            return
        if len(header) < _FRAME:
            raise InputFormatError(source, "file ends inside a message length", f"byte {offset}")
        length = int.from_bytes(header, "big")
        body = stream.read(length)
        if len(body) != length:
            raise InputFormatError(
                source,
                f"file ends inside message {index} ({len(body)} of its {length} bytes; truncated?)",
                f"byte {offset}",
            )
        try:
            yield from otlp_proto.read(io.BytesIO(body), source)
        except InputFormatError as exc:
            where = f"message {index} (byte {offset})" + (f", {exc.where}" if exc.where else "")
            raise InputFormatError(source, exc.problem, where) from None
        offset += _FRAME + length
        index += 1
