"""Stream the elements of one big JSON array without parsing the whole document at once.

A Jaeger export is ``{"data":[trace, trace, …], …}``; one ``orjson.loads`` of a 500 MB export
holds ~8x the file size in Python objects. :class:`ArrayStream` reads the stream in chunks and
yields the array's elements parsed a batch at a time, so memory stays at a chunk plus a batch.

Finding where elements end, exactly, at C speed and without a byte-by-byte scan in Python:

* **Probe** (always correct): ``orjson.loads`` of a window starting at an element fails with
  "content after document" at the first byte after that element, because its parser stops at the
  end of the first value. The failed parse builds no Python objects, so it is cheap, but not free
  (about a third of a real parse).
* **Signature** (fast path): elements of one array look alike. From the first element we take its
  leading keys (a Jaeger trace starts ``{"traceID":"…","spans":``) and ``bytes.rfind`` the last
  element start within ~64 KB (batches that small stay in the CPU cache: about 1.5x faster than
  1 MB batches here), or ``find`` the first one beyond. A candidate is only a guess; it is
  accepted when ``"[" + slice + "]"`` parses. A slice that starts at an element and parses as
  an array must end exactly at an element boundary (JSON values are prefix-free: a value parsed
  from its first byte cannot end anywhere else), so strings containing braces, quotes or
  backslashes cannot fool it. A failed guess falls back to the probe; repeated failures switch
  the signature off.

Separators (whitespace, one comma) and everything after the array are checked too, so a malformed
file raises ``InputFormatError`` naming the byte offset.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, BinaryIO

import orjson

from tracelens.errors import InputFormatError

CHUNK_BYTES = 8 << 20  # read size
BATCH_BYTES = 64 << 10  # elements parsed per orjson call on the fast path (cache-sized)
_WS = b" \t\r\n"
_BOM = b"\xef\xbb\xbf"  # a byte order mark before the document (RFC 8259 lets parsers skip it)
_MIN_WINDOW = 16 << 10
_MAX_GUESS_FAILURES = 3
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.$@-]{1,64}")


class ArrayStream:
    """Yields ``(index, value)`` for each element of the JSON array that ``prefix`` opens.

    ``prefix`` is the document up to and including the array's ``[`` and is skipped in
    ``stream``. After the last element the rest of the document is read and
    ``prefix + "]" + rest`` must parse (that catches truncation and trailing garbage); ``tail``
    then holds that outer value with the array emptied. Elements must be objects or arrays.
    """

    def __init__(
        self,
        stream: BinaryIO,
        source: str,
        prefix: bytes,
        *,
        chunk_bytes: int = CHUNK_BYTES,
        batch_bytes: int = BATCH_BYTES,
        guess: bool = True,
    ) -> None:
        self.stream = stream
        self.source = source
        self.prefix = prefix
        self.chunk_bytes = max(1, chunk_bytes)
        self.batch_bytes = max(1, batch_bytes)
        self.tail: Any = None
        self._buf = b""
        self._base = 0  # absolute offset of _buf[0]
        self._eof = False
        self._window = _MIN_WINDOW
        self._signature: tuple[bytes, re.Pattern[bytes]] | None = None
        self._guess = guess
        self._failures = 0
        self._skip(len(prefix))

    # -- buffer ------------------------------------------------------------------------------

    def _skip(self, n: int) -> None:
        while n > 0:
            data = self.stream.read(n)
            if not data:
                raise self._error("unexpected end of file", 0)
            n -= len(data)
            self._base += len(data)

    def _fill(self, pos: int, need: int) -> int:
        """Make ``_buf[pos:]`` hold at least ``need`` bytes unless EOF; returns the new ``pos``."""
        if len(self._buf) - pos >= need or self._eof:
            return pos
        parts = [self._buf[pos:]]
        have = len(parts[0])
        while have < need and not self._eof:
            data = self.stream.read(max(self.chunk_bytes, need - have))
            if not data:
                self._eof = True
                break
            parts.append(data)
            have += len(data)
        self._base += pos
        self._buf = b"".join(parts)
        return 0

    def _error(self, problem: str, pos: int) -> InputFormatError:
        return InputFormatError(self.source, problem, f"byte {self._base + pos}")

    def _skip_ws(self, pos: int) -> tuple[int, int]:
        """``(pos, byte)`` of the next non-whitespace byte; byte is -1 at EOF."""
        while True:
            buf = self._buf
            n = len(buf)
            while pos < n and buf[pos] in _WS:
                pos += 1
            if pos < n or self._eof:
                return pos, (buf[pos] if pos < n else -1)
            pos = self._fill(pos, 1)

    # -- elements ----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        index = 0
        pos, c = self._skip_ws(0)
        if c == 0x5D:  # ] — an empty array
            self._finish(pos + 1)
            return
        while True:
            if c not in (0x7B, 0x5B):  # { or [
                raise self._error(f"expected an object in the array, found {_what(c)}", pos)
            batch = None
            if self._signature is not None:
                pos = self._fill(pos, self.batch_bytes + _MIN_WINDOW)
                batch = self._batch(pos)
            if batch is not None:
                end, values = batch
            else:
                pos, end = self._element_end(pos)
                values = [self._parse(pos, end)]
                if index == 0 and self._guess:
                    self._signature = _signature(values[0])
            for value in values:
                yield index, value
                index += 1
            pos, c = self._skip_ws(end)
            if c == 0x2C:  # ,
                pos, c = self._skip_ws(pos + 1)
            elif c == 0x5D:
                self._finish(pos + 1)
                return
            else:
                found = _what(c)
                raise self._error(f"expected ',' or ']' after an array element, found {found}", pos)

    def _batch(self, pos: int) -> tuple[int, list[Any]] | None:
        """Elements parsed together up to a signature match: the last one within
        ``batch_bytes`` (small batches stay in the CPU cache), else the first one further on."""
        near = min(len(self._buf), pos + self.batch_bytes)
        cut = self._last_cut(pos + 1, near)
        if cut is None:
            cut = self._first_cut(pos + 1, near, len(self._buf))
        if cut is None:
            return None
        view = memoryview(self._buf)[pos:cut]
        try:
            values = orjson.loads(b"".join((b"[", view, b"]")))
        except orjson.JSONDecodeError:
            self._failures += 1
            if self._failures >= _MAX_GUESS_FAILURES:
                self._signature = None
            return None
        finally:
            view.release()
        return cut, values

    def _last_cut(self, lo: int, hi: int) -> int | None:
        literal = self._signature[0]  # type: ignore[index]
        while (at := self._buf.rfind(literal, lo, hi)) >= 0:
            cut = self._cut_before(at, lo)
            if cut is not None:
                return cut
            hi = at
        return None

    def _first_cut(self, floor: int, lo: int, hi: int) -> int | None:
        literal = self._signature[0]  # type: ignore[index]
        while (at := self._buf.find(literal, lo, hi)) >= 0:
            cut = self._cut_before(at, floor)
            if cut is not None:
                return cut
            lo = at + 1
        return None

    def _cut_before(self, at: int, lo: int) -> int | None:
        """The ``,`` before an element that starts like the signature and whose key is at
        ``at``; None when the text there does not look like an element start."""
        literal, pattern = self._signature  # type: ignore[misc]
        buf = self._buf
        start = buf.rfind(b"{", max(lo, at - 1024), at)
        if start < 0 or not pattern.fullmatch(buf, start, at + len(literal)):
            return None
        comma = start - 1
        while comma >= lo and buf[comma] in _WS:
            comma -= 1
        return comma if comma >= lo and buf[comma] == 0x2C else None

    def _element_end(self, pos: int) -> tuple[int, int]:
        """``(start, end)`` in ``_buf`` of the value that starts at ``pos`` (found by a probe;
        a refill moves the start)."""
        while True:
            pos = self._fill(pos, self._window)
            buf = self._buf
            stop = min(len(buf), pos + self._window)
            truncated = stop < len(buf) or not self._eof
            if truncated:
                stop = _utf8_boundary(buf, stop)  # a cut character would fail the probe
            view = memoryview(buf)[pos:stop]
            try:
                orjson.loads(view)
            except orjson.JSONDecodeError as exc:
                if not exc.doc:  # not UTF-8: orjson gives no position
                    raise self._error(f"invalid JSON: {exc.msg}", pos) from exc
                at = _byte_pos(exc)
                if truncated and at >= len(view) - 1:
                    self._window *= 2  # the element is longer than the window
                    continue
                end = pos + at
                while end > pos and buf[end - 1] in _WS:
                    end -= 1
                self._window = max(_MIN_WINDOW, 2 * (end - pos))
                return pos, end
            finally:
                view.release()
            return pos, stop

    def _parse(self, pos: int, end: int) -> Any:
        view = memoryview(self._buf)[pos:end]
        try:
            return orjson.loads(view)
        except orjson.JSONDecodeError as exc:
            raise self._error(f"invalid JSON: {exc.msg}", pos + _byte_pos(exc)) from exc
        finally:
            view.release()

    def _finish(self, pos: int) -> None:
        """Everything after the array's ``]`` must complete the document."""
        rest = [self._buf[pos:]]
        self._base += pos
        self._buf = b""
        while not self._eof:
            data = self.stream.read(self.chunk_bytes)
            if not data:
                break
            rest.append(data)
        doc = self.prefix.removeprefix(_BOM) + b"]" + b"".join(rest)
        try:
            self.tail = orjson.loads(doc)
        except orjson.JSONDecodeError as exc:
            at = _byte_pos(exc) - len(self.prefix.removeprefix(_BOM)) - 1
            raise self._error(f"invalid JSON after the array: {exc.msg}", max(at, 0)) from exc


def _signature(first: Any) -> tuple[bytes, re.Pattern[bytes]] | None:
    """How elements like ``first`` start in the text: a literal to search and a pattern.

    The leading keys up to the first one whose value is not a scalar, at most three:
    ``{"traceID":"…","spans"`` for a Jaeger trace (spans start with traceID too, so "spans" is
    what tells a trace apart), ``{"traceId":"…","spanId":"…","operationName"`` for a jsonpb
    span (its references start with traceId, spanId as well). The last key is the literal.
    """
    if not isinstance(first, dict) or not first:
        return None
    keys: list[str] = []
    for key, val in first.items():
        keys.append(key)
        if len(keys) == 3 or not (val is None or isinstance(val, str | int | float | bool)):
            break
    if not all(_PLAIN_KEY.fullmatch(k) for k in keys):
        return None
    value = rb'(?:"[^"\\]*"|[-+.\w]+)'
    quoted = [re.escape(f'"{k}"'.encode()) for k in keys]
    pattern = rb"\{\s*" + b"".join(q + rb"\s*:\s*" + value + rb"\s*,\s*" for q in quoted[:-1])
    return f'"{keys[-1]}"'.encode(), re.compile(pattern + quoted[-1])


def _utf8_boundary(buf: bytes, stop: int) -> int:
    """``stop``, or the start of the UTF-8 sequence that ``buf[:stop]`` would cut short."""
    lead = stop - 1
    while lead >= max(0, stop - 4) and 0x80 <= buf[lead] < 0xC0:
        lead -= 1
    if lead < 0 or buf[lead] < 0xC0:
        return stop
    size = 2 if buf[lead] < 0xE0 else 3 if buf[lead] < 0xF0 else 4
    return lead if stop - lead < size else stop


def _what(c: int) -> str:
    return "end of file" if c < 0 else repr(chr(c))


def _byte_pos(exc: orjson.JSONDecodeError) -> int:
    """orjson reports a character position; turn it into a byte offset in the parsed input."""
    doc = exc.doc
    if not doc or doc.isascii():
        return exc.pos
    return len(doc[: exc.pos].encode("utf-8", "surrogatepass"))
