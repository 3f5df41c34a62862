"""OTLP binary protobuf files: a ``TracesData`` (wire-identical to ``ExportTraceServiceRequest``).

The top level of the message is a run of ``resource_spans`` records (field 1), so the file is
read record by record and decoded in chunks of a few MiB: memory stays bounded however large
the file. Decoding is the receiver's (``tracelens.receiver.decode``), in strict mode: a span
that breaks the OTLP rules fails the file, naming the span.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import pyarrow as pa

from tracelens.errors import InputFormatError

NAME = "otlp-proto"

CHUNK_BYTES = 4 << 20  # decode this many bytes of resource_spans records at a time
_SUFFIXES = (".pb", ".binpb", ".protobuf", ".proto.bin", ".otlp")
_RESOURCE_SPANS_TAG = 0x0A  # field 1, wire type 2 (length-delimited)
_RESOURCE_SPANS_FIELDS = {0x0A, 0x12, 0x1A}  # resource, scope_spans, schema_url


# --- wire format helpers ------------------------------------------------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, next position); raises IndexError when ``buf`` ends inside the varint."""
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _skip(buf: bytes, pos: int, wire_type: int) -> int:
    """The position after one field value of ``wire_type`` starting at ``pos``."""
    if wire_type == 0:
        return _varint(buf, pos)[1]
    if wire_type == 1:
        return pos + 8
    if wire_type == 2:
        length, pos = _varint(buf, pos)
        return pos + length
    if wire_type == 5:
        return pos + 4
    raise ValueError(f"wire type {wire_type} is not used by OTLP")


def _well_formed(buf: bytes, *, complete: bool) -> bool:
    """Whether ``buf`` walks as a sequence of protobuf fields (the last may be cut off)."""
    pos = 0
    try:
        while pos < len(buf):
            tag, pos = _varint(buf, pos)
            if tag >> 3 == 0:
                return False
            pos = _skip(buf, pos, tag & 7)
    except IndexError:
        return not complete
    except ValueError:
        return False
    return pos == len(buf) or not complete


# --- sniff ---------------------------------------------------------------------------------------


def sniff(head: bytes, filename: str) -> bool:
    """A ``TracesData`` starts with a resource_spans record whose payload walks as fields."""
    if len(head) < 2 or head[0] != _RESOURCE_SPANS_TAG or _looks_like_json(head):
        return False
    try:
        length, pos = _varint(head, 1)
    except (IndexError, ValueError):
        return False
    payload = head[pos : pos + length]
    if payload and payload[0] not in _RESOURCE_SPANS_FIELDS:
        return False
    # ``head`` may be cut anywhere (it is at most 64 KiB, and may be less than the file).
    complete = pos + length <= len(head)
    if not _well_formed(payload, complete=complete) or not _well_formed(head, complete=False):
        return False
    return len(payload) > 2 or filename.lower().endswith(_SUFFIXES)


def _looks_like_json(head: bytes) -> bool:
    # "\n{" also starts with 0x0A; real protobuf (ids, fixed64 times) is rarely valid UTF-8.
    if head.lstrip()[:1] not in (b"{", b"["):
        return False
    try:
        head[:4096].decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= 4090  # only cut off inside a multi-byte character
    return True


# --- read ----------------------------------------------------------------------------------------


def _read_varint(stream: BinaryIO, source: str, offset: int) -> tuple[int | None, int]:
    """A varint from the stream: (value or None at a clean end of file, bytes consumed)."""
    value = shift = used = 0
    while True:
        byte = stream.read(1)
        if not byte:
            if used == 0:
                return None, 0
            raise InputFormatError(source, "file ends inside a field header", f"byte {offset}")
        used += 1
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value, used
        shift += 7
        if shift > 63:
            raise InputFormatError(source, "varint longer than 10 bytes", f"byte {offset}")


def _records(stream: BinaryIO, source: str) -> Iterator[bytes]:
    """The raw top-level fields of the message, each with its header (unknown ones skipped)."""
    offset = 0
    while True:
        tag, used = _read_varint(stream, source, offset)
        if tag is None:
            return
        field, wire_type = tag >> 3, tag & 7
        if wire_type != 2:
            fixed = {1: 8, 5: 4}.get(wire_type)
            if wire_type == 0:
                _, extra = _read_varint(stream, source, offset + used)
            elif fixed is not None:
                extra = len(stream.read(fixed))
            else:
                raise InputFormatError(
                    source, f"not OTLP protobuf: wire type {wire_type}", f"byte {offset}"
                )
            offset += used + extra
            continue
        length, used2 = _read_varint(stream, source, offset + used)
        if length is None:
            raise InputFormatError(source, "file ends inside a field header", f"byte {offset}")
        body = stream.read(length)
        if len(body) != length:
            raise InputFormatError(
                source, f"file ends inside a {length}-byte record (truncated?)", f"byte {offset}"
            )
        if field == 1:
            yield bytes([_RESOURCE_SPANS_TAG]) + _encode_varint(length) + body
        offset += used + used2 + length


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read(stream: BinaryIO, source: str) -> Iterator[pa.RecordBatch]:
    """Batches of ``SPAN_SCHEMA``; an invalid span raises ``InputFormatError`` naming it."""
    from tracelens.receiver.decode import decode

    chunk: list[bytes] = []
    size = first = count = 0
    for record in _records(stream, source):
        chunk.append(record)
        size += len(record)
        count += 1
        if size >= CHUNK_BYTES:
            yield from decode(b"".join(chunk), source, strict=True, first_resource=first).batches
            chunk, size, first = [], 0, count
    if chunk:
        yield from decode(b"".join(chunk), source, strict=True, first_resource=first).batches
