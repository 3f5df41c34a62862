"""Jaeger api_v2 ``model.proto`` as protobuf JSON (jsonpb), as in Jaeger's storage fixtures.

``{"spans":[{"traceId":<base64>,"spanId","operationName","references","startTime":<RFC 3339>,
"duration":<Go duration>,"tags":[{"key","vType","vStr"|"vInt64"|…}],"logs","process"}]}``.
jsonpb omits zero values, so a tag without ``vType`` is a string and a BOOL tag without
``vBool`` is false. ``vInt64`` may exceed double precision: orjson keeps JSON integers exact.
Times are parsed to integer nanoseconds without going through floats.

``{"spans":[…]}`` streams span by span (:mod:`jsonstream`); spans that name a ``processId``
instead of carrying a ``process`` wait for the ``processMap`` after the array.
"""

from __future__ import annotations

import base64
import calendar
import re
from collections.abc import Iterator
from typing import Any, BinaryIO

import pyarrow as pa

from tracelens import ids
from tracelens.errors import InputFormatError
from tracelens.importers import jaeger_model as jm
from tracelens.importers.jaeger_json import load_whole
from tracelens.importers.jsonstream import ArrayStream
from tracelens.importers.sources import peek
from tracelens.model import SpanBatchBuilder, gc_paused

NAME = "jaeger-proto-json"
BATCH_SPANS = 32_768

_SPANS_ARRAY = re.compile(rb'\A(?:\xef\xbb\xbf)?\s*\{\s*"spans"\s*:\s*\[')
_KEY = re.compile(rb'"(traceId|spanId|operationName|traceID|resourceSpans|scopeSpans)"\s*:')
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:([Zz])|([+-])(\d\d):?(\d\d))"
)
_DURATION_PART = re.compile(r"(\d*)(?:\.(\d*))?(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,
    "\u03bcs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_VTYPES = ("STRING", "BOOL", "INT64", "FLOAT64", "BINARY")  # enum numbers 0..4


def sniff(head: bytes, filename: str) -> bool:
    """jsonpb writes ``traceId``/``spanId`` (camel case, base64) beside Jaeger's
    ``operationName``; OTLP has no ``operationName`` and the UI model writes ``traceID``."""
    found = {m.group(1) for m in _KEY.finditer(head)}
    if found & {b"traceID", b"resourceSpans", b"scopeSpans"}:
        return False
    return {b"traceId", b"operationName"} <= found


def read(stream: BinaryIO, source: str) -> Iterator[pa.RecordBatch]:
    head = peek(stream)
    opening = _SPANS_ARRAY.match(head)
    with gc_paused():
        builder = SpanBatchBuilder(BATCH_SPANS)
        waiting: list[tuple[str, dict[str, Any]]] = []  # spans whose process is in processMap
        if opening:
            elements = ArrayStream(stream, source, opening.group(0))
            for i, span in elements:
                where = f"spans[{i}]"
                if isinstance(span, dict) and "process" not in span and "processId" in span:
                    waiting.append((where, span))
                    continue
                add_span(builder, span, {}, source, where)
                if len(builder) >= BATCH_SPANS:
                    yield builder.flush()  # type: ignore[misc]
            processes = _process_map(elements.tail, source)
        else:
            spans, processes, prefix = _whole_document(stream, source)
            waiting = [(f"{prefix}[{i}]", span) for i, span in enumerate(spans)]
        for where, span in waiting:
            add_span(builder, span, processes, source, where)
            if len(builder) >= BATCH_SPANS:
                yield builder.flush()  # type: ignore[misc]
        last = builder.flush()
        if last is not None:
            yield last


def _whole_document(stream: BinaryIO, source: str) -> tuple[list[Any], dict[str, Any], str]:
    """``(spans, processes, path)`` of ``{"spans"}``, ``{"result":{"spans"}}`` or ``[span…]``."""
    doc = load_whole(stream, source)
    path = "spans"
    if isinstance(doc, dict) and isinstance(doc.get("result"), dict):
        doc, path = doc["result"], "result.spans"
    if isinstance(doc, list):
        return doc, {}, ""
    if not isinstance(doc, dict) or not isinstance(doc.get("spans", []), list):
        raise InputFormatError(source, 'expected {"spans": [...]} (Jaeger model.proto as JSON)')
    return doc.get("spans") or [], _process_map(doc, source), path


def _process_map(doc: Any, source: str) -> dict[str, Any]:
    entries = doc.get("processMap") if isinstance(doc, dict) else None
    out = {}
    for i, entry in enumerate(entries or ()):
        try:
            out[entry["processId"]] = _resource(entry.get("process") or {})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputFormatError(source, f"bad process: {exc}", f"processMap[{i}]") from exc
    return out


# --- one span ---------------------------------------------------------------------------------


def add_span(
    builder: SpanBatchBuilder, span: Any, processes: dict[str, Any], source: str, where: str
) -> None:
    try:
        _add_span(builder, span, processes)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        problem = f"missing field {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
        raise InputFormatError(source, problem, where) from exc


def _add_span(builder: SpanBatchBuilder, span: dict[str, Any], processes: dict[str, Any]) -> None:
    tid = ids.trace_id(span["traceId"], lenient=True)
    triples = [
        (
            jm.ref_type(r.get("refType")),
            ids.trace_id(r.get("traceId") or span["traceId"], lenient=True),
            ids.span_id(r["spanId"], lenient=True),
        )
        for r in span.get("references") or ()
    ]
    parent, follows, links = jm.resolve_references(triples, tid)
    attrs = tag_dict(span.get("tags") or ())
    kind, status, message, scope, version = jm.pop_bookkeeping(attrs)
    process = span.get("process")
    if process is not None:
        res = _resource(process)
    else:
        res = processes.get(span.get("processId"), {})
    start = rfc3339_ns(span["startTime"])
    duration = span.get("duration")
    builder.add(
        trace_id=tid,
        span_id=ids.span_id(span["spanId"], lenient=True),
        parent_span_id=parent,
        name=span.get("operationName") or "",
        kind=kind,
        start_ns=start,
        end_ns=start + (go_duration_ns(duration) if duration else 0),
        attributes=attrs,
        resource=res,
        status_code=status,
        status_message=message,
        follows_from=follows,
        scope_name=scope,
        scope_version=version,
        events=[_event(log) for log in span.get("logs") or ()],
        links=links,
    )


def _resource(process: dict[str, Any]) -> dict[str, Any]:
    return jm.resource(process.get("serviceName"), tag_dict(process.get("tags") or ()))


def _event(log: dict[str, Any]) -> dict[str, Any]:
    attrs = tag_dict(log.get("fields") or ())
    name = attrs.pop("event", None)
    return {
        "time_ns": rfc3339_ns(log["timestamp"]),
        "name": str(name) if name is not None else "log",
        "attributes": attrs,
    }


def tag_dict(tags: Any) -> dict[str, Any]:
    """jsonpb ``KeyValue`` list → typed attributes (absent values are the type's zero)."""
    out: dict[str, Any] = {}
    for tag in tags:
        vtype = tag.get("vType")
        if isinstance(vtype, int):  # jsonpb with enums as numbers
            vtype = _VTYPES[vtype] if 0 <= vtype < len(_VTYPES) else str(vtype)
        elif vtype is not None:
            vtype = str(vtype).upper()
        out[tag["key"]] = _tag_value(tag, vtype)
    return out


def _tag_value(tag: dict[str, Any], vtype: str | None) -> Any:
    if vtype is None:  # STRING is the enum's zero, so jsonpb omits it
        vtype = next((t for t, f in _FIELDS.items() if f in tag), "STRING")
    value = tag.get(_FIELDS.get(vtype, "vStr"))
    if vtype == "STRING":
        return "" if value is None else value
    if vtype == "BOOL":
        return value if type(value) is bool else str(value).lower() == "true"
    if vtype == "INT64":
        return 0 if value is None else int(value)  # proto3 JSON may quote int64
    if vtype == "FLOAT64":
        return 0.0 if value is None else float(value)
    if vtype == "BINARY":
        return base64.b64decode(value) if value else b""
    raise ValueError(f"unknown vType {vtype!r}")


_FIELDS = {
    "STRING": "vStr",
    "BOOL": "vBool",
    "INT64": "vInt64",
    "FLOAT64": "vFloat64",
    "BINARY": "vBinary",
}


# --- times ------------------------------------------------------------------------------------


def rfc3339_ns(text: Any) -> int:
    """RFC 3339 → integer ns since the epoch, exactly (offsets and up to 9 fraction digits)."""
    if not isinstance(text, str):
        raise ValueError(f"timestamp must be an RFC 3339 string, got {text!r}")
    m = _RFC3339.fullmatch(text.strip())
    if not m:
        raise ValueError(f"timestamp {text!r} is not RFC 3339")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and second <= 60):
        raise ValueError(f"timestamp {text!r} is out of range")
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if m.group(9):
        offset = int(m.group(10)) * 3600 + int(m.group(11)) * 60
        seconds -= offset if m.group(9) == "+" else -offset
    fraction = (m.group(7) or "")[:9].ljust(9, "0")
    return seconds * 1_000_000_000 + int(fraction)


def go_duration_ns(text: Any) -> int:
    """A Go duration string ("100000ns", "1.5ms", "2m3s", "-1h") → integer nanoseconds."""
    if not isinstance(text, str):
        raise ValueError(f"duration must be a Go duration string, got {text!r}")
    rest = text.strip()
    sign = -1 if rest.startswith("-") else 1
    rest = rest.lstrip("+-")
    if rest == "0":
        return 0
    total, pos = 0, 0
    while pos < len(rest):
        m = _DURATION_PART.match(rest, pos)
        if not m or not (m.group(1) or m.group(2)):
            raise ValueError(f"duration {text!r} is not a Go duration")
        unit = _UNIT_NS[m.group(3)]
        whole, frac = m.group(1) or "0", m.group(2) or ""
        total += int(whole) * unit + (int(frac) * unit // 10 ** len(frac) if frac else 0)
        pos = m.end()
    if not rest:
        raise ValueError("duration is empty")
    return sign * total
