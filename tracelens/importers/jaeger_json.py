"""Jaeger JSON: the query service / UI model (``GET /api/traces``, the UI's "Download JSON").

``{"data":[{"traceID","spans":[…],"processes":{"p1":{"serviceName","tags"}}}], "total", …}``.
Spans carry typed tags (``{"key","type","value"}``), logs, references and a ``processID``;
times are microseconds. Also read: a bare trace object, ``data`` as one object, a bare array of
spans with inline ``process`` (jaeger-anonymizer), extra top-level keys and synthetic ids such as
``"A"`` or ``"span-1"`` (hex is padded, anything else hashed to a stable id).

The usual ``{"data":[…]}`` export streams trace by trace (:mod:`jsonstream`), so a 500 MB file
is never held as Python objects at once; other shapes are small and parsed whole. For large
files :func:`read_parallel` hands raw runs of traces to worker processes (:func:`read_run`) and
yields what :func:`read` would, in the same order, with the same errors.

Two ways to flatten a trace, with the same rows: :func:`add_trace` from orjson's dicts (the
reference, and the only path for the other shapes), and :mod:`jaeger_structs` from typed
msgspec Structs, which the streamed export takes; whatever the Structs do not cover goes back
to the dicts, trace by trace.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from functools import partial
from typing import Any, BinaryIO, Protocol

import orjson
import pyarrow as pa

from tracelens import ids
from tracelens.errors import InputFormatError
from tracelens.importers import jaeger_model as jm
from tracelens.importers import jaeger_structs as js
from tracelens.importers.jaeger_model import micros, typed_value
from tracelens.importers.jsonstream import RUN_BYTES, ArrayStream, Submit, farm_out
from tracelens.importers.sources import peek
from tracelens.model import (
    SpanBatchBuilder,  # noqa: F401 — a RowSink; tests build references
    gc_paused,
    rows_to_batch,
    to_json,
)
from tracelens.semconv import derive_row

NAME = "jaeger-json"
# Spans per batch: small batches stay in the CPU caches (≈15% faster than 32k here); the store
# gathers many into one INSERT.
BATCH_SPANS = 4096

_DATA_ARRAY = re.compile(rb'\A(?:\xef\xbb\xbf)?\s*\{\s*"data"\s*:\s*\[')
_EMPTY_EXPORT = re.compile(rb'\A(?:\xef\xbb\xbf)?\s*\{\s*"data"\s*:\s*(?:\[\s*\]|null)\s*[,}]')
_BARE_SPANS = "<spans>"  # the path of a bare span array's pseudo-trace
_FIELD = re.compile(rb'"(traceID|spanID|operationName|processID)"\s*:')
_HEX_SPAN = re.compile(r"[0-9a-f]{16}").fullmatch
_EMPTY_OBJECT = "{}"
_EMPTY_LIST = "[]"


def sniff(head: bytes, filename: str) -> bool:
    """Jaeger's UI model spells ``traceID``/``spanID`` with a capital D (OTLP and Zipkin
    write ``traceId``, X-Ray ``trace_id``)."""
    found = {m.group(1) for m in _FIELD.finditer(head)}
    if b"traceID" in found and (found & {b"spanID", b"operationName", b"processID"}):
        return True
    return bool(_EMPTY_EXPORT.match(head))


def read(stream: BinaryIO, source: str) -> Iterator[pa.RecordBatch]:
    opening = _DATA_ARRAY.match(peek(stream))
    if opening:
        elements = ArrayStream(stream, source, opening.group(0), decode=js.decode_traces)
        traces: Iterator[tuple[str, Any]] = ((f"data[{i}]", t) for i, t in elements)
    else:
        traces = _whole_document(stream, source)
    yield from _batches(traces, source)


def read_parallel(
    stream: BinaryIO, source: str, submit: Submit, *, ahead: int = 4
) -> Iterator[pa.RecordBatch]:
    """What :func:`read` yields, with runs of traces parsed and flattened in other processes.

    ``submit(fn, *args)`` returns a Future (a process pool's). Batches come in file order;
    errors name the same place as :func:`read` (a run that fails is read again here).
    """
    opening = _DATA_ARRAY.match(peek(stream))
    if not opening:
        yield from read(stream, source)
        return
    elements = ArrayStream(stream, source, opening.group(0), decode=js.decode_traces)
    work = partial(read_run, source=source)
    for batches in farm_out(elements, work, submit, run_bytes=RUN_BYTES, ahead=ahead):
        yield from batches
    yield from _batches(((f"data[{i}]", t) for i, t in elements), source)


def read_run(data: bytes, source: str) -> tuple[int, list[pa.RecordBatch]] | None:
    """A worker's share: the traces of ``"[" + data + "]"`` as (how many, batches), or None
    when that is not a run of valid traces (the caller reads it again, naming the problem)."""
    count = 0

    def traces() -> Iterator[tuple[str, Any]]:
        nonlocal count
        run = ArrayStream(io.BytesIO(b"[" + data + b"]"), source, b"[", decode=js.decode_traces)
        for _, trace in run:
            count += 1
            yield "data[?]", trace

    try:
        batches = list(_batches(traces(), source))
    except Exception:  # noqa: BLE001 — any problem: the caller reads the run itself
        return None
    return count, batches


def _batches(traces: Iterator[tuple[str, Any]], source: str) -> Iterator[pa.RecordBatch]:
    with gc_paused():  # parsing builds millions of acyclic objects: the cyclic GC only slows it
        rows = _Rows()
        for where, trace in traces:
            if type(trace) is js.Flattened:  # the typed path's, already flat
                rows.extend(trace.rows)
            else:
                add_trace(rows, trace, source, where)
            if len(rows) >= BATCH_SPANS:
                yield rows.flush()
        if len(rows):
            yield rows.flush()


class RowSink(Protocol):
    """Where :func:`add_trace` puts rows: a ``SpanBatchBuilder``, or :class:`_Rows`."""

    def add_row(
        self, row: tuple[Any, ...], attributes: dict[str, Any], resource: dict[str, Any]
    ) -> None: ...


class _Rows:
    """Whole rows in ``SPAN_SCHEMA`` order, in file order: the typed path's as they are, the
    dict path's through :meth:`add_row`, which does what ``SpanBatchBuilder.add_row`` does
    (appends the derived columns; test_jaeger_fast compares both with ``SpanBatchBuilder``)."""

    def __init__(self) -> None:
        self._rows: list[tuple[Any, ...]] = []

    def __len__(self) -> int:
        return len(self._rows)

    def add_row(
        self, row: tuple[Any, ...], attributes: dict[str, Any], resource: dict[str, Any]
    ) -> None:
        self._rows.append(row + derive_row(attributes, resource))

    def extend(self, rows: list[tuple[Any, ...]]) -> None:
        self._rows += rows

    def flush(self) -> pa.RecordBatch:
        rows, self._rows = self._rows, []
        return rows_to_batch(rows)


def _whole_document(stream: BinaryIO, source: str) -> Iterator[tuple[str, Any]]:
    """The shapes other than ``{"data":[…]}``: ``(where, trace)`` pairs."""
    doc = load_whole(stream, source)
    if isinstance(doc, list):
        if doc and all(isinstance(t, dict) and "spans" in t for t in doc):
            yield from ((f"[{i}]", t) for i, t in enumerate(doc))
        else:  # a bare array of spans, each with an inline process (jaeger-anonymizer)
            yield _BARE_SPANS, {"spans": doc}
        return
    if not isinstance(doc, dict):
        raise InputFormatError(source, "expected a JSON object or array of Jaeger traces")
    if "data" in doc:
        data = doc["data"]
        if isinstance(data, list):
            yield from ((f"data[{i}]", t) for i, t in enumerate(data))
        elif isinstance(data, dict):
            yield "data", data
        elif data is not None:
            raise InputFormatError(source, "'data' must be an array of traces", "data")
    elif "spans" in doc:
        yield "", doc
    else:
        raise InputFormatError(source, "no 'data' or 'spans' key: not a Jaeger trace export")


def load_whole(stream: BinaryIO, source: str) -> Any:
    data = stream.read().removeprefix(b"\xef\xbb\xbf")  # orjson rejects a byte order mark
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InputFormatError(source, f"invalid JSON: {exc.msg}", _json_place(exc)) from exc


def _json_place(exc: orjson.JSONDecodeError) -> str:
    doc = exc.doc or ""
    offset = len(doc[: exc.pos].encode("utf-8", "surrogatepass"))
    return f"line {exc.lineno}, column {exc.colno} (byte {offset})"


# --- one trace --------------------------------------------------------------------------------


def add_trace(builder: RowSink, trace: Any, source: str, where: str) -> None:
    """Flatten one trace object (``{"traceID","spans","processes"}``) into ``builder``.

    ``where`` is the trace's JSON path, for errors (``data[3]``). This is the importer's hot
    loop (a 500 MB export has ~600k spans): one frame per trace, the span body inline.
    """
    if not isinstance(trace, dict):
        raise InputFormatError(source, "a trace must be a JSON object", where)
    spans = trace.get("spans")
    if spans is None:
        spans = []
    elif not isinstance(spans, list):
        raise InputFormatError(source, "'spans' must be an array", where)
    processes = trace.get("processes") or {}
    resources: dict[Any, tuple[dict[str, Any], str]] = {}
    trace_ids = jm.TraceIds()
    default_tid = trace.get("traceID")
    add_row = builder.add_row
    pop_bookkeeping = jm.pop_bookkeeping
    j = -1
    try:
        for j, span in enumerate(spans):  # noqa: B007 — j names the span in errors
            get = span.get
            pid = get("processID")
            resource = resources.get(pid) if pid is not None else None
            if resource is None:
                resource = _resource(get("process") or processes.get(pid) or {})
                if pid is not None and "process" not in span:
                    resources[pid] = resource
            raw_tid = get("traceID") or default_tid
            tid = trace_ids(raw_tid)
            refs = get("references")
            follows = False
            links: Any = _EMPTY_LIST
            if not refs:
                raw_parent = get("parentSpanID")
                parent = jm.span_id(raw_parent) if raw_parent not in (None, "", "0", 0) else None
            elif (
                len(refs) == 1
                and refs[0].get("refType", jm.CHILD_OF) == jm.CHILD_OF
                and (refs[0].get("traceID") in (None, raw_tid))
            ):
                parent = refs[0]["spanID"]  # the common case: one CHILD_OF in this trace
                if not (type(parent) is str and _HEX_SPAN(parent)):
                    parent = jm.hex_id(parent, 8)
            else:
                parent, follows, links = _references(refs, raw_tid, tid, trace_ids)
                links = to_json(links) if links else _EMPTY_LIST
            tags = get("tags")
            attrs = tag_dict(tags) if tags else {}
            kind, status, message, scope, version = pop_bookkeeping(attrs)
            start = span["startTime"]
            start = start * 1000 if type(start) is int else micros(start)
            duration = get("duration") or 0
            logs = get("logs")
            sid = span["spanID"]
            if not (type(sid) is str and _HEX_SPAN(sid)):
                sid = jm.hex_id(sid, 8)
            end = start + (duration * 1000 if type(duration) is int else micros(duration))
            add_row(
                (
                    tid,
                    sid,
                    parent,
                    get("operationName") or "",
                    kind,
                    start,
                    end if end > start else start,
                    end - start if end > start else 0,
                    status,
                    message or None,
                    follows,
                    None,  # trace_state: the UI model has none
                    scope or None,
                    version or None,
                    to_json(attrs) if attrs else _EMPTY_OBJECT,
                    resource[1],
                    to_json(_events(logs)) if logs else _EMPTY_LIST,
                    links,
                ),
                attrs,
                resource[0],
            )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        place = f"[{j}]" if where == _BARE_SPANS else f"{where}.spans[{j}]".lstrip(".")
        raise InputFormatError(source, _problem(exc), place) from exc


def _references(
    refs: list[dict[str, Any]], raw_tid: Any, tid: str, trace_ids: jm.TraceIds
) -> tuple[str | None, bool, list[dict[str, Any]]]:
    triples = [
        (
            jm.ref_type(r.get("refType")),
            trace_ids(r.get("traceID") or raw_tid),
            jm.span_id(r["spanID"]),
        )
        for r in refs
    ]
    return jm.resolve_references(triples, tid)


def _resource(process: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A process → its resource attributes and their JSON (once per process, not per span)."""
    tags = process.get("tags")
    resource = jm.resource(process.get("serviceName"), tag_dict(tags) if tags else {})
    return resource, to_json(resource) if resource else _EMPTY_OBJECT


def _events(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    events = []
    for log in logs:
        fields = log.get("fields")
        attrs = tag_dict(fields) if fields else {}
        name = attrs.pop("event", None)
        events.append(
            {
                "time_ns": micros(log.get("timestamp") or 0),
                "name": str(name) if name is not None else "log",
                "attributes": attrs,
            }
        )
    return events


def tag_dict(tags: list[dict[str, Any]]) -> dict[str, Any]:
    """Jaeger typed tags → attributes with their types (big int64s arrive as strings)."""
    out: dict[str, Any] = {}
    try:
        for tag in tags:  # the hot loop of the importer: subscripts, no method calls
            kind = tag["type"]
            value = tag["value"]
            if kind == "string" or (kind == "int64" and type(value) is int):
                out[tag["key"]] = value
            else:
                out[tag["key"]] = typed_value(kind, value)
    except KeyError:  # a tag without "type" or "value": take the slow, forgiving path
        out = {tag["key"]: typed_value(tag.get("type"), tag.get("value")) for tag in tags}
    return out


def _problem(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    if isinstance(exc, ids.IdError):
        return f"bad id: {exc}"
    return f"bad span: {exc}"
