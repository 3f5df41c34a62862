"""Jaeger UI-model traces decoded by msgspec into typed Structs, and flattened from them.

The usual ``{"data":[…]}`` export is decoded batch by batch with a typed ``msgspec`` decoder
(about 1.7x orjson's speed into dicts here: no dict per span, attribute access instead of
``dict.get``) and flattened at once into rows. The dict path in :mod:`jaeger_json` stays the
reference: the Structs accept only shapes whose rows are provably the same, and everything
else goes back to it.

* A batch the typed decoder refuses (a field of a type the Structs do not allow, a field they
  do not know, a missing ``spanID``/``startTime``) is parsed by orjson and read as dicts.
* A trace whose flattening fails (a bad id, a time that is not a number, tags the Structs
  refuse…) or is ambiguous is handed over as orjson's dict, so errors keep their file, JSON
  path and wording.
* Either way orjson has the last word on whether the text is JSON at all: when it refuses the
  batch, ``orjson.JSONDecodeError`` goes up to the splitter, which names the byte as before.
  msgspec does not check what it skips (unknown fields, ``Raw``) for UTF-8 or numbers out of
  range, so every Struct forbids unknown fields, and the one ``Raw`` (a span's tags) is
  decoded before its text is first trusted (see below).

What makes a value "provably the same": scalars are ``str | int64 | float | bool | None``
(orjson turns integers beyond 64 bits into floats, msgspec would keep them as ints; an integer
past the int64 range, or a list or object where a scalar is expected, refuses the batch).
Missing and ``null`` are told apart where the dict path tells them apart (``UNSET``).

Spans of one kind repeat their tags exactly (the same component, statement, peer…), so a
span's tags stay raw JSON text and everything computed from them (kind, status, scope,
attributes JSON, derived columns) is cached by that text and the service: equal text, equal
tags, equal results. A miss decodes the text into :class:`Tag` Structs. The derived columns
read nothing of the resource but ``service.name`` (test_jaeger_fast checks this of
``semconv.derive_row``), and the resource's other attributes (hostname, ip, client-uuid) vary
from trace to trace, so the service alone is in the key.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, NamedTuple

import msgspec
import orjson
from msgspec import UNSET, Raw, UnsetType

from tracelens.importers import jaeger_model as jm
from tracelens.model import to_json
from tracelens.semconv import derive_row

Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
Scalar = str | Int64 | float | bool | None
_NULL = Raw(b"null")
_NOTHING = object()


class _Struct(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    """gc=False: no cycles, and the GC need not track millions of them. Unknown fields are
    refused, not skipped: msgspec skips without checking UTF-8 or number ranges."""


class Tag(_Struct):
    key: Scalar
    type: Scalar = None
    value: Scalar = None


class Log(_Struct):
    timestamp: Scalar = None
    fields: list[Tag] | None = None


class Ref(_Struct):
    spanID: Scalar
    refType: Scalar = jm.CHILD_OF  # ``.get("refType", CHILD_OF)``: only a missing key defaults
    traceID: Scalar = None


class Process(_Struct):
    serviceName: Scalar = None
    tags: list[Tag] | None = None


class Span(_Struct):
    spanID: Scalar
    startTime: Scalar
    traceID: Scalar = None
    operationName: Scalar = None
    references: list[Ref] | None = None
    duration: Scalar = None
    tags: Raw = _NULL  # list[Tag] | None, decoded on a cache miss (see the module doc)
    logs: list[Log] | None = None
    processID: Scalar = None
    process: Process | None | UnsetType = UNSET  # inline (jaeger-anonymizer); rare
    # Unused fields of the query service's and the UI's models, decoded only to be checked.
    flags: Any = None
    warnings: Any = None
    depth: Any = None
    hasChildren: Any = None
    relativeStartTime: Any = None
    childSpanIds: Any = None


class Trace(_Struct):
    traceID: Scalar = None
    spans: list[Span] | None = None
    processes: dict[str, Process] | None = None
    # Unused, decoded only to be checked (the UI's TraceData).
    warnings: Any = None
    services: Any = None
    traceName: Any = None
    startTime: Any = None
    endTime: Any = None
    duration: Any = None


_DECODER = msgspec.json.Decoder(list[Trace])
_TAGS = msgspec.json.Decoder(list[Tag] | None)


class Flattened(NamedTuple):
    """A trace read through the Structs: its rows (``SPAN_SCHEMA`` order, derived included)."""

    rows: list[tuple[Any, ...]]


def decode_structs(text: bytes) -> list[Trace]:
    """The traces of the JSON array ``text`` as Structs (raises where they do not fit)."""
    return _DECODER.decode(text)


def decode_traces(text: bytes) -> list[Any]:
    """The elements of the JSON array ``text``: :class:`Flattened` traces, and orjson's value
    for each the Structs do not cover (all of them when they refuse the text). Raises
    ``orjson.JSONDecodeError`` when ``orjson.loads(text)`` would."""
    try:
        traces = decode_structs(text)
    except Exception:  # noqa: BLE001 — not the Structs' shape (or not JSON): orjson decides
        return orjson.loads(text)
    values: list[Any] | None = None
    out: list[Any] = []
    for i, trace in enumerate(traces):
        try:
            out.append(Flattened(trace_rows(trace)))
        except Exception:  # noqa: BLE001 — the dict path names the problem, or reads it
            if values is None:
                values = orjson.loads(text)  # raises if tags held what is not JSON
            out.append(values[i])
    return out


# --- flattening: jaeger_json.add_trace, from Structs -----------------------------------------

_HEX_SPAN = jm.HEX_SPAN
_HEX_DIGITS = re.compile(r"[0-9a-f]*").fullmatch
_EMPTY_OBJECT = "{}"
_EMPTY_LIST = "[]"
# (kind, status, message, scope, version, attributes JSON, derived columns) of a span
Described = tuple[int, int, str | None, str | None, str | None, str, tuple[Any, ...]]


class DescribedCache:
    """Described spans by service and tags text, cleared when ``limit`` entries are held.

    The service is kept with its type: derive_row writes ``str(service)``, and
    ``1 == 1.0 == True``. One table per service: a span looks its tags up in its resource's.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._tables: dict[tuple[type, Any], dict[bytes, Described]] = {}

    def table(self, service: Any) -> dict[bytes, Described]:
        return self._tables.setdefault((type(service), service), {})

    def remember(self, table: dict[bytes, Described], tags: bytes, described: Described) -> None:
        if self.size >= self.limit:  # start afresh; tables in use stay valid, just unshared
            self._tables, self.size = {}, 0
        table[tags] = described
        self.size += 1

    def clear(self) -> None:
        self._tables, self.size = {}, 0


DESCRIBED = DescribedCache(16_384)  # ≈ 1-2 KB an entry
# A resource: its attributes, their JSON, and its service's table in DESCRIBED.
Resource = tuple[dict[str, Any], str, dict[bytes, Described]]


class Ambiguous(Exception):
    """The Structs lost a distinction the dict path makes: read this trace as a dict."""


def trace_rows(trace: Trace) -> list[tuple[Any, ...]]:
    """The rows (``SPAN_SCHEMA`` order, derived columns included) that
    :func:`jaeger_json.add_trace` and ``SpanBatchBuilder.add_row`` make of this trace.

    Raises on any problem (the caller then reads the trace as a dict, which names it); nothing
    is added anywhere before the whole trace has succeeded.
    """
    spans = trace.spans or ()
    processes = trace.processes or {}
    resources: dict[Any, Resource] = {}
    trace_ids = jm.TraceIds()
    default_tid = trace.traceID
    last_raw: Any = _NOTHING  # the trace id of the span before, and its canonical form
    last_tid = ""
    micros = jm.micros
    remember = DESCRIBED.remember
    valid_ids = _hex_span_ids(spans)  # None: check span by span
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    for span in spans:
        pid = span.processID
        resource = resources.get(pid) if pid is not None else None
        if resource is None:
            resource = _span_resource(span, processes)
            if pid is not None and span.process is UNSET:
                resources[pid] = resource
        raw_tid = span.traceID or default_tid
        if raw_tid != last_raw:  # as TraceIds' dict compares: 1 == 1.0 == True
            last_raw, last_tid = raw_tid, trace_ids(raw_tid)
        tid = last_tid
        refs = span.references
        follows = False
        links: Any = _EMPTY_LIST
        if not refs:
            parent = None
        elif (
            len(refs) == 1 and refs[0].refType == jm.CHILD_OF and refs[0].traceID in (None, raw_tid)
        ):
            parent = refs[0].spanID
            if not (
                (valid_ids is not None and parent in valid_ids)
                or (type(parent) is str and _HEX_SPAN(parent))
            ):
                parent = jm.hex_id(parent, 8)
        else:
            parent, follows, links = _references(refs, raw_tid, tid, trace_ids)
            links = to_json(links) if links else _EMPTY_LIST
        raw_tags = span.tags
        table = resource[2]
        text = bytes(raw_tags)
        described = table.get(text)
        if described is None:
            described = _describe(raw_tags, resource)
            remember(table, text, described)
        kind, status, message, scope, version, attributes, derived = described
        start = span.startTime
        start = start * 1000 if type(start) is int else micros(start)
        duration = span.duration or 0
        logs = span.logs
        sid = span.spanID
        if valid_ids is None and not (type(sid) is str and _HEX_SPAN(sid)):
            sid = jm.hex_id(sid, 8)
        end = start + (duration * 1000 if type(duration) is int else micros(duration))
        append(
            (
                tid,
                sid,
                parent,
                span.operationName or "",
                kind,
                start,
                end if end > start else start,
                end - start if end > start else 0,
                status,
                message,
                follows,
                None,  # trace_state: the UI model has none
                scope,
                version,
                attributes,
                resource[1],
                to_json(_events(logs)) if logs else _EMPTY_LIST,
                links,
            )
            + derived
        )
    return rows


def _span_resource(span: Span, processes: dict[str, Process]) -> Resource:
    """``span.get("process") or processes.get(pid) or {}``, as a resource."""
    inline = span.process
    if inline is UNSET or inline is None:
        return _resource(processes.get(span.processID))  # type: ignore[arg-type]
    if inline.serviceName is None and inline.tags is None:  # type: ignore[union-attr]
        raise Ambiguous("an inline process that may be {}: falsy, so the map's would be used")
    return _resource(inline)  # type: ignore[arg-type]


def _resource(process: Process | None) -> Resource:
    if process is None:
        return {}, _EMPTY_OBJECT, DESCRIBED.table(None)
    tags = process.tags
    resource = jm.resource(process.serviceName, tag_dict(tags) if tags else {})
    text = to_json(resource) if resource else _EMPTY_OBJECT
    return resource, text, DESCRIBED.table(resource.get("service.name"))


def _hex_span_ids(spans: Any) -> set[str] | None:
    """The spans' ids when every one is already canonical (16 lowercase hex digits), checked
    with one regex over all of them instead of one per span; else None."""
    ids = [span.spanID for span in spans]
    try:
        joined = "".join(ids)  # type: ignore[arg-type]
    except TypeError:  # an id that is not a string
        return None
    if len(joined) != 16 * len(ids) or len(set(map(len, ids))) > 1 or not _HEX_DIGITS(joined):
        return None
    return set(ids)  # type: ignore[arg-type]


def _describe(raw_tags: Raw, resource: Resource) -> Described:
    tags = _TAGS.decode(raw_tags)
    attrs = tag_dict(tags) if tags else {}
    kind, status, message, scope, version = jm.pop_bookkeeping(attrs)
    text = to_json(attrs) if attrs else _EMPTY_OBJECT
    derived = derive_row(attrs, resource[0])
    return kind, status, message or None, scope or None, version or None, text, derived


def _references(
    refs: list[Ref], raw_tid: Any, tid: str, trace_ids: jm.TraceIds
) -> tuple[str | None, bool, list[dict[str, Any]]]:
    triples = [
        (jm.ref_type(r.refType), trace_ids(r.traceID or raw_tid), jm.span_id(r.spanID))
        for r in refs
    ]
    return jm.resolve_references(triples, tid)


def _events(logs: list[Log]) -> list[dict[str, Any]]:
    events = []
    for log in logs:
        fields = log.fields
        attrs = tag_dict(fields) if fields else {}
        name = attrs.pop("event", None)
        events.append(
            {
                "time_ns": jm.micros(log.timestamp or 0),
                "name": str(name) if name is not None else "log",
                "attributes": attrs,
            }
        )
    return events


def tag_dict(tags: list[Tag]) -> dict[str, Any]:
    """Typed tags → attributes, as :func:`jaeger_json.tag_dict` makes them."""
    out: dict[Any, Any] = {}
    typed_value = jm.typed_value
    for tag in tags:
        kind = tag.type
        value = tag.value
        if kind == "string" or (kind == "int64" and type(value) is int):
            out[tag.key] = value
        else:
            out[tag.key] = typed_value(kind, value)
    return out
