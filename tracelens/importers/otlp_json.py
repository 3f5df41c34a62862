"""OTLP/JSON: ``TracesData`` / ``ExportTraceServiceRequest`` documents, one per file or per line.

Accepted shapes (all seen in published exports):

- ``{"resourceSpans": [...]}`` as the spec writes it; ``{"batches": [...]}`` (Tempo API v1);
  ``{"result": {...}}`` (Jaeger api_v3 over HTTP) and ``{"trace": {...}}`` (Tempo API v2).
- ``scopeSpans``/``scope`` and the pre-1.0 names ``instrumentationLibrarySpans`` and
  ``instrumentationLibrary``.
- Ids as hex of the exact width (any case) or as base64 of 16/8 bytes (gogo/protojson output from
  Tempo and Grafana). Enums as integers or names (``"SPAN_KIND_SERVER"``, ``"STATUS_CODE_ERROR"``).
- JSON Lines: one document per line, as the collector's file exporter writes; parent links may
  cross lines (they are plain ids, resolved later by the call tree).

Choices: a span with no timestamps is kept with ``start_ns = end_ns = 0`` (when only one of the two
is present, the other takes its value, so the span has zero duration at the known instant). A
resource without ``service.name`` becomes ``unknown_service`` (done by the builder). ``flags`` and
dropped counts are ignored. Invalid spans (ids of the wrong width or all zero, end before start,
an unknown kind or status code, an undecodable attribute) fail the file naming the JSON path, or,
for the receiver (``strict=False``), are skipped and reported one message each.

Streaming: JSON Lines are read line by line and yield a batch every ~20k spans. A single document
is read whole (OTLP documents are request-sized); its batches still come per 20k spans.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from typing import Any, BinaryIO

import orjson
import pyarrow as pa

from tracelens.errors import InputFormatError
from tracelens.ids import IdError, normalize
from tracelens.model import SpanBatchBuilder, gc_paused

NAME = "otlp-json"

BATCH_SPANS = 20_000
_TRACE_CACHE_MAX = 1 << 16
_ZERO_SPAN = "0" * 16
_ZERO_TRACE = "0" * 32
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1

_HEX16 = re.compile(r"[0-9a-fA-F]{16}").fullmatch
_HEX32 = re.compile(r"[0-9a-fA-F]{32}").fullmatch
_HEX = re.compile(r"[0-9a-fA-F]+").fullmatch

_KINDS = {
    "SPAN_KIND_UNSPECIFIED": 0,
    "SPAN_KIND_INTERNAL": 1,
    "SPAN_KIND_SERVER": 2,
    "SPAN_KIND_CLIENT": 3,
    "SPAN_KIND_PRODUCER": 4,
    "SPAN_KIND_CONSUMER": 5,
}
_STATUS_CODES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}
_WRAPPERS = ("result", "trace")  # Jaeger api_v3 GetTrace, Tempo API v2 TraceByIDResponse
_SNIFF_KEYS = (b'"resourceSpans"', b'"scopeSpans"', b'"instrumentationLibrarySpans"')


class _Bad(Exception):
    """One invalid span: ``field`` is the JSON path below the span, ``problem`` what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field
        self.problem = problem


# --- sniffing and reading files ---------------------------------------------------------------


def sniff(head: bytes, filename: str) -> bool:
    """A JSON object whose head names OTLP's resource/scope span arrays."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not text.startswith(b"{"):
        return False
    return any(key in text for key in _SNIFF_KEYS)


def read(stream: BinaryIO, source: str) -> Iterator[pa.RecordBatch]:
    """Batches of spans from an OTLP/JSON file or JSON Lines stream; all or nothing on errors."""
    builder = SpanBatchBuilder(BATCH_SPANS)
    cache: dict[str, str] = {}
    steps = _steps(stream, source, builder, cache)
    while True:
        # The GC is paused while parsing and converting, not while the consumer holds a batch.
        with gc_paused():
            more = next(steps, False)
        if len(builder) >= BATCH_SPANS or (not more and len(builder)):
            yield builder.flush()  # type: ignore[misc]
        if not more:
            return


def _steps(
    stream: BinaryIO, source: str, builder: SpanBatchBuilder, cache: dict[str, str]
) -> Iterator[bool]:
    for where, doc in _documents(stream, source):
        for _ in _walk(doc, source, builder, True, where, [], cache):
            yield True


def _documents(stream: BinaryIO, source: str) -> Iterator[tuple[str | None, Any]]:
    """(place prefix, decoded document): one for a JSON file, one per line for JSON Lines."""
    skipped, first, first_no = _next_line(stream, 0)
    if first is None:
        raise InputFormatError(source, "empty input: no JSON document")
    try:
        doc = orjson.loads(first)
    except orjson.JSONDecodeError:
        # Not a complete document on one line: a (pretty-printed) single document.
        yield None, parse_bytes(skipped + stream.read(), source)
        return
    _, second, line_no = _next_line(stream, first_no)
    if second is None:
        yield None, doc
        return
    yield f"line {first_no}", doc
    while second is not None:
        yield f"line {line_no}", parse_bytes(second, source, line=line_no)
        _, second, line_no = _next_line(stream, line_no)


def _next_line(stream: BinaryIO, line_no: int) -> tuple[bytes, bytes | None, int]:
    """The next non-blank line: (all bytes read including blank lines, the line, its number)."""
    skipped = b""
    while True:
        line = stream.readline()
        if not line:
            return skipped, None, line_no
        line_no += 1
        skipped += line
        if line.strip():
            return skipped, line, line_no


def parse_bytes(data: bytes, source: str, *, line: int = 1) -> dict:
    """Decode one JSON document; errors name the line and column (``line`` numbers the first)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        where, problem = _decode_error(data, exc, line)
        raise InputFormatError(source, f"invalid JSON: {problem}", where) from exc
    if not isinstance(doc, dict):
        where = f"line {line}" if line != 1 else None
        raise InputFormatError(
            source, f"expected a JSON object (OTLP TracesData), got {_json_type(doc)}", where
        )
    return doc


def _decode_error(data: bytes, exc: orjson.JSONDecodeError, first_line: int) -> tuple[str, str]:
    try:
        text = data.decode("utf-8")
        pos = min(exc.pos, len(text))
    except UnicodeDecodeError as bad:
        # orjson reports position 0 for bad UTF-8; find the byte ourselves.
        text = data[: bad.start].decode("utf-8")
        pos = len(text)
        return _line_col(text, pos, first_line), f"invalid UTF-8 byte 0x{data[bad.start]:02x}"
    return _line_col(text, pos, first_line), exc.msg


def _line_col(text: str, pos: int, first_line: int) -> str:
    line = text.count("\n", 0, pos) + first_line
    col = pos - text.rfind("\n", 0, pos)
    return f"line {line}, column {col}"


_JSON_TYPES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


# --- walking a document -----------------------------------------------------------------------


def convert_document(
    doc: dict, source: str, builder: SpanBatchBuilder, *, strict: bool = True
) -> list[str]:
    """Add one decoded TracesData/ExportTraceServiceRequest to ``builder``.

    ``strict`` raises :class:`InputFormatError` on the first invalid span; otherwise invalid spans
    are skipped and one message per rejected span is returned (for OTLP ``partial_success``).
    Documents that are structurally wrong (not an object, ``resourceSpans`` not an array…)
    always raise.
    """
    rejected: list[str] = []
    with gc_paused():
        for _ in _walk(doc, source, builder, strict, None, rejected, {}):
            pass
    return rejected


def _walk(
    doc: Any,
    source: str,
    builder: SpanBatchBuilder,
    strict: bool,
    prefix: str | None,
    rejected: list[str],
    cache: dict[str, str],
) -> Iterator[None]:
    """Convert ``doc`` span by span; yields after each scope block so callers can flush."""
    doc, path = _unwrap(doc, source, prefix)
    key = "resourceSpans" if "resourceSpans" in doc else "batches"
    resource_spans = _array(doc.get(key), source, _join(prefix, path + key))
    add = builder.add
    for i, rs in enumerate(resource_spans):
        rs_path = f"{path}{key}[{i}]"
        _object(rs, source, _join(prefix, rs_path))
        resource = _resource(rs.get("resource"), source, _join(prefix, rs_path + ".resource"))
        scopes_key = "instrumentationLibrarySpans"
        if "scopeSpans" in rs or scopes_key not in rs:
            scopes_key = "scopeSpans"
        scope_blocks = _array(rs.get(scopes_key), source, _join(prefix, f"{rs_path}.{scopes_key}"))
        for j, ss in enumerate(scope_blocks):
            ss_path = f"{rs_path}.{scopes_key}[{j}]"
            _object(ss, source, _join(prefix, ss_path))
            scope_name, scope_version = _scope(ss, source, _join(prefix, ss_path))
            spans = _array(ss.get("spans"), source, _join(prefix, ss_path + ".spans"))
            for k, span in enumerate(spans):
                try:
                    _add_span(add, span, resource, scope_name, scope_version, cache)
                except _Bad as bad:
                    where = f"{ss_path}.spans[{k}]" + (f".{bad.field}" if bad.field else "")
                    if strict:
                        raise InputFormatError(source, bad.problem, _join(prefix, where)) from None
                    rejected.append(f"{_join(prefix, where)}: {bad.problem}")
            yield


def _unwrap(doc: Any, source: str, prefix: str | None) -> tuple[dict, str]:
    """The TracesData inside an API response wrapper, and the path prefix that leads to it."""
    if not isinstance(doc, dict):
        problem = f"expected a JSON object (OTLP TracesData), got {_json_type(doc)}"
        raise InputFormatError(source, problem, prefix)
    if "resourceSpans" in doc or "batches" in doc:
        return doc, ""
    for wrapper in _WRAPPERS:
        inner = doc.get(wrapper)
        if isinstance(inner, dict) and (
            "resourceSpans" in inner or "batches" in inner or not inner
        ):
            return inner, wrapper + "."
    if isinstance(doc.get("error"), dict):  # a Jaeger api_v3 error response saved to a file
        message = doc["error"].get("message") or doc["error"]
        raise InputFormatError(source, f"the document is an error response: {message}", prefix)
    if doc:
        keys = ", ".join(sorted(map(str, doc))[:5])
        problem = f"not OTLP TracesData: no 'resourceSpans' array (keys: {keys})"
        raise InputFormatError(source, problem, prefix)
    return doc, ""  # {} is an empty export request


def _join(prefix: str | None, path: str) -> str:
    return f"{prefix}, {path}" if prefix else path


def _array(value: Any, source: str, where: str) -> list:
    if value is None:
        return []
    if value.__class__ is not list:
        raise InputFormatError(source, f"expected an array, got {_json_type(value)}", where)
    return value


def _object(value: Any, source: str, where: str) -> None:
    if value.__class__ is not dict:
        raise InputFormatError(source, f"expected an object, got {_json_type(value)}", where)


def _resource(value: Any, source: str, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    _object(value, source, where)
    try:
        return _attributes(value.get("attributes"), "attributes")
    except _Bad as bad:
        raise InputFormatError(source, bad.problem, f"{where}.{bad.field}") from None


def _scope(block: dict, source: str, where: str) -> tuple[str | None, str | None]:
    key = "scope" if "scope" in block else "instrumentationLibrary"
    scope = block.get(key)
    if not scope:
        return None, None
    _object(scope, source, f"{where}.{key}")
    name, version = scope.get("name"), scope.get("version")
    for field, value in (("name", name), ("version", version)):
        if value is not None and value.__class__ is not str:
            problem = f"scope {field} must be a string, got {_json_type(value)}"
            raise InputFormatError(source, problem, f"{where}.{key}.{field}")
    return name or None, version or None


# --- one span: the hot path -------------------------------------------------------------------


def _add_span(
    add: Any,
    span: Any,
    resource: dict[str, Any],
    scope_name: str | None,
    scope_version: str | None,
    cache: dict[str, str],
) -> None:
    """Validate and convert one span, then hand it to the builder; raises ``_Bad``."""
    if span.__class__ is not dict:
        raise _Bad("", f"span must be an object, got {_json_type(span)}")
    raw = span.get("traceId")
    trace_id = cache.get(raw) if raw.__class__ is str else None
    if trace_id is None:
        trace_id = _id(raw, 16, "traceId")
        if len(cache) >= _TRACE_CACHE_MAX:
            cache.clear()
        cache[raw] = trace_id
    raw = span.get("spanId")
    span_id = raw.lower() if raw.__class__ is str and _HEX16(raw) else _id(raw, 8, "spanId")
    if span_id == _ZERO_SPAN:
        raise _Bad("spanId", "spanId is all zeros")
    raw = span.get("parentSpanId")
    parent = None
    if raw:
        parent = (
            raw.lower() if raw.__class__ is str and _HEX16(raw) else _id(raw, 8, "parentSpanId")
        )
        if parent == _ZERO_SPAN:  # an all-zero parent means "no parent"
            parent = None
    kind = span.get("kind") or 0
    if kind.__class__ is not int or not 0 <= kind <= 5:
        kind = _enum(kind, _KINDS, 5, "kind", "a span kind")
    start, end = _times(span.get("startTimeUnixNano"), span.get("endTimeUnixNano"))
    name = span.get("name") or ""
    if name.__class__ is not str:
        raise _Bad("name", f"name must be a string, got {_json_type(name)}")
    status = span.get("status")
    code, message = _status(status) if status else (0, None)
    trace_state = span.get("traceState") or None
    if trace_state is not None and trace_state.__class__ is not str:
        raise _Bad("traceState", f"traceState must be a string, got {_json_type(trace_state)}")
    raw = span.get("attributes")
    events = span.get("events")
    links = span.get("links")
    add(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent,
        name=name,
        kind=kind,
        start_ns=start,
        end_ns=end,
        attributes=_attributes(raw, "attributes") if raw else {},
        resource=resource,
        status_code=code,
        status_message=message,
        trace_state=trace_state,
        scope_name=scope_name,
        scope_version=scope_version,
        events=_events(events) if events else (),
        links=_links(links) if links else (),
    )


def _id(raw: Any, nbytes: int, field: str) -> str:
    """The slow path for ids: base64, odd case, and every error message."""
    if raw is None or raw == "":
        raise _Bad(field, f"{field} is missing")
    if raw.__class__ is not str:
        raise _Bad(field, f"{field} must be a string, got {_json_type(raw)}")
    try:
        value = normalize(raw, nbytes, exact=True)
    except IdError:
        text = raw.strip()
        if _HEX(text) and len(text) != 2 * nbytes:
            problem = f"{field} {raw!r} has {len(text)} hex digits, OTLP needs {2 * nbytes}"
        else:
            problem = f"{field} {raw!r} is neither hex nor base64 of {nbytes} bytes"
        raise _Bad(field, problem) from None
    if value == _ZERO_TRACE and field.endswith("traceId"):
        raise _Bad(field, f"{field} is all zeros")
    return value


def _enum(value: Any, names: dict[str, int], highest: int, field: str, what: str) -> int:
    if value.__class__ is str and value in names:
        return names[value]
    if value.__class__ is int and 0 <= value <= highest:
        return value
    raise _Bad(field, f"{field} {value!r} is not {what}")


def _times(start: Any, end: Any) -> tuple[int, int]:
    try:
        start_ns = int(start) if start else 0
    except (TypeError, ValueError):
        raise _Bad("startTimeUnixNano", f"startTimeUnixNano {start!r} is not an integer") from None
    try:
        end_ns = int(end) if end else start_ns
    except (TypeError, ValueError):
        raise _Bad("endTimeUnixNano", f"endTimeUnixNano {end!r} is not an integer") from None
    if not start:
        start_ns = end_ns
    if start_ns < 0:
        raise _Bad("startTimeUnixNano", f"startTimeUnixNano {start!r} is negative")
    if end_ns < start_ns:
        raise _Bad("endTimeUnixNano", f"end {end_ns} is before start {start_ns}")
    return start_ns, end_ns


def _status(status: Any) -> tuple[int, str | None]:
    if status.__class__ is not dict:
        raise _Bad("status", f"status must be an object, got {_json_type(status)}")
    code = status.get("code") or 0
    if code.__class__ is not int or not 0 <= code <= 2:
        code = _enum(code, _STATUS_CODES, 2, "status.code", "a status code")
    message = status.get("message") or None
    if message is not None and message.__class__ is not str:
        raise _Bad("status.message", f"status message must be a string, got {_json_type(message)}")
    return code, message


# --- attribute values -------------------------------------------------------------------------


def _attributes(kvs: Any, field: str) -> dict[str, Any]:
    """``[KeyValue]`` → dict with typed values; raises ``_Bad`` naming the entry.

    The loop handles the common shapes inline (string and int values are most attributes);
    anything unusual or wrong goes through :func:`_attributes_careful`.
    """
    out: dict[str, Any] = {}
    if not kvs:
        return out
    try:
        for kv in kvs:
            key = kv["key"]
            value = kv["value"]
            if key.__class__ is not str:  # orjson can only store string keys
                raise TypeError(key)
            if "stringValue" in value:
                out[key] = value["stringValue"]
            else:
                raw = value.get("intValue")
                # 18 characters always fit in int64; longer or numeric ones are checked in _any.
                out[key] = int(raw) if raw.__class__ is str and len(raw) < 19 else _any(value)
    except Exception:  # noqa: BLE001 — missing values are legal, errors need a place
        return _attributes_careful(kvs, field)
    return out


def _attributes_careful(kvs: Any, field: str) -> dict[str, Any]:
    if kvs.__class__ is not list:
        raise _Bad(field, f"{field} must be an array of key/value objects, got {_json_type(kvs)}")
    out: dict[str, Any] = {}
    for i, kv in enumerate(kvs):
        place = f"{field}[{i}]"
        if kv.__class__ is not dict or kv.get("key").__class__ is not str:
            raise _Bad(place, "attribute must be an object with a string 'key'")
        key, value = kv["key"], kv.get("value")
        if not value:  # absent, null or {}: an empty AnyValue
            out[key] = None
            continue
        if value.__class__ is not dict:
            raise _Bad(place + ".value", f"attribute {key!r}: value must be an object")
        try:
            out[key] = _any(value)
        except _Bad as bad:  # from a nested kvlistValue
            raise _Bad(f"{place}.value.{bad.field}", bad.problem) from None
        except Exception as exc:  # noqa: BLE001
            raise _Bad(place + ".value", f"attribute {key!r}: {exc}") from None
    return out


def _any(value: dict) -> Any:
    """A non-string ``AnyValue``; raises ValueError/TypeError/KeyError on malformed input."""
    if "intValue" in value:
        raw = value["intValue"]
        try:
            if raw.__class__ is bool or isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            number = int(raw)
        except (TypeError, ValueError):
            raise ValueError(f"intValue {raw!r} is not an integer") from None
        if not _INT64_MIN <= number <= _INT64_MAX:
            raise ValueError(f"intValue {raw!r} does not fit in 64 bits")
        return number
    if "boolValue" in value:
        if value["boolValue"].__class__ is not bool:
            raise ValueError(f"boolValue {value['boolValue']!r} is not true or false")
        return value["boolValue"]
    if "doubleValue" in value:
        raw = value["doubleValue"]
        try:
            if raw.__class__ is bool:
                raise ValueError
            return float(raw)  # also "NaN", "Infinity", "-Infinity" as protojson writes them
        except (TypeError, ValueError):
            raise ValueError(f"doubleValue {raw!r} is not a number") from None
    if "bytesValue" in value:
        return _bytes(value["bytesValue"])
    if "arrayValue" in value:
        items = (value["arrayValue"] or {}).get("values") or ()
        return [
            (_any(v) if v.get("stringValue") is None else v["stringValue"]) if v else None
            for v in items
        ]
    if "kvlistValue" in value:
        return _attributes((value["kvlistValue"] or {}).get("values"), "kvlistValue.values")
    # A null stringValue, or a value type from a newer OTLP (receivers ignore those).
    return value.get("stringValue")


def _bytes(text: Any) -> bytes:
    if text.__class__ is not str:
        raise ValueError(f"bytesValue must be a base64 string, got {_json_type(text)}")
    # protojson accepts standard and URL-safe alphabets, padded or not.
    std = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(std + "=" * (-len(std) % 4), validate=True)


# --- events and links -------------------------------------------------------------------------


def _events(events: Any) -> list[dict[str, Any]]:
    if events.__class__ is not list:
        raise _Bad("events", f"events must be an array, got {_json_type(events)}")
    out = []
    for i, event in enumerate(events):
        if event.__class__ is not dict:
            raise _Bad(f"events[{i}]", "event must be an object")
        raw = event.get("timeUnixNano")
        try:
            time_ns = int(raw) if raw else 0
        except (TypeError, ValueError):
            problem = f"timeUnixNano {raw!r} is not an integer"
            raise _Bad(f"events[{i}].timeUnixNano", problem) from None
        attrs = event.get("attributes")
        out.append(
            {
                "time_ns": time_ns,
                "name": event.get("name") or "",
                "attributes": _attributes(attrs, f"events[{i}].attributes") if attrs else {},
            }
        )
    return out


def _links(links: Any) -> list[dict[str, Any]]:
    if links.__class__ is not list:
        raise _Bad("links", f"links must be an array, got {_json_type(links)}")
    out = []
    for i, link in enumerate(links):
        if link.__class__ is not dict:
            raise _Bad(f"links[{i}]", "link must be an object")
        span_id = _id(link.get("spanId"), 8, f"links[{i}].spanId")
        if span_id == _ZERO_SPAN:
            raise _Bad(f"links[{i}].spanId", f"links[{i}].spanId is all zeros")
        attrs = link.get("attributes")
        out.append(
            {
                "trace_id": _id(link.get("traceId"), 16, f"links[{i}].traceId"),
                "span_id": span_id,
                "trace_state": link.get("traceState") or None,
                "attributes": _attributes(attrs, f"links[{i}].attributes") if attrs else {},
            }
        )
    return out
