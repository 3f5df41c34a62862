"""Reading an HTTP request body with a size limit that holds after decompression.

The body is read in chunks and inflated incrementally with ``max_length``, so a gzip bomb
costs at most ``limit`` bytes of memory before it is refused: never the inflated size.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import BinaryIO

from tracelens.receiver.status import Condition, ExportFault

CHUNK = 256 * 1024
ENCODINGS = {"": None, "identity": None, "gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}


class BodyReader:
    """One request body: ``read()`` returns the (decompressed) bytes or raises ``ExportFault``.

    ``remaining`` tells how many wire bytes are still unread after a refusal, so the caller
    can decide between draining them (to keep the connection) and closing it.
    """

    def __init__(
        self, rfile: BinaryIO, content_length: int | None, chunked: bool, encoding: str, limit: int
    ) -> None:
        self.rfile = rfile
        self.remaining = content_length or 0
        self.chunked = chunked
        self.encoding = encoding
        self.limit = limit
        self.chunked_done = not chunked

    def read(self) -> bytes:
        if not self.chunked and self.remaining > self.limit:
            raise _too_large(self.limit, f"Content-Length {self.remaining}")
        wire = self._wire_chunks()
        if self.encoding is None:
            return _collect(wire, self.limit)
        return _inflate(wire, self.encoding, self.limit)

    def _wire_chunks(self) -> Iterator[bytes]:
        if self.chunked:
            yield from self._chunked()
            return
        while self.remaining > 0:
            data = self.rfile.read(min(CHUNK, self.remaining))
            if not data:
                raise ExportFault(Condition.UNDECODABLE, "request body ended early")
            self.remaining -= len(data)
            yield data

    def _chunked(self) -> Iterator[bytes]:
        """HTTP/1.1 chunked transfer coding (RFC 9112 §7.1); trailers are skipped."""
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ExportFault(Condition.UNDECODABLE, "bad chunked encoding") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                self.chunked_done = True
                return
            while size > 0:
                data = self.rfile.read(min(CHUNK, size))
                if not data:
                    raise ExportFault(Condition.UNDECODABLE, "request body ended early")
                size -= len(data)
                yield data
            self.rfile.readline(8)

    def discard(self, max_bytes: int) -> bool:
        """Read and drop the unread body (up to ``max_bytes``); True if the body is consumed."""
        if self.chunked and not self.chunked_done:
            return False
        if self.remaining > max_bytes:
            return False
        while self.remaining > 0:
            data = self.rfile.read(min(CHUNK, self.remaining))
            if not data:
                return False
            self.remaining -= len(data)
        return True


def _too_large(limit: int, what: str) -> ExportFault:
    return ExportFault(
        Condition.TOO_LARGE,
        f"request body over the {limit}-byte limit ({what}); send smaller batches",
    )


def _collect(chunks: Iterator[bytes], limit: int) -> bytes:
    parts, size = [], 0
    for data in chunks:
        size += len(data)
        if size > limit:
            raise _too_large(limit, "chunked body")
        parts.append(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _inflate(chunks: Iterator[bytes], encoding: str, limit: int) -> bytes:
    """Decompress with a hard cap on the output; concatenated gzip members are allowed."""
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    out = bytearray()
    seen = False
    try:
        for data in chunks:
            seen = True
            while data:
                room = limit - len(out)
                out += inflater.decompress(data, room + 1)
                if len(out) > limit:
                    raise _too_large(limit, "after decompression")
                data = inflater.unconsumed_tail
                if inflater.eof:
                    data = inflater.unused_data + data
                    if data:
                        inflater = zlib.decompressobj(wbits)
        if seen and not inflater.eof:
            raise ExportFault(Condition.UNDECODABLE, f"truncated {encoding} body")
    except zlib.error as exc:
        raise ExportFault(Condition.UNDECODABLE, f"bad {encoding} body: {exc}") from exc
    return bytes(out)
