"""Zipkin JSON: the v2 span array (``POST /api/v2/spans``), and legacy v1 via ``zipkin_v1``.

A file is a JSON array of span objects, or an array of such arrays (batches). Each object is
read as v1 when it carries ``binaryAnnotations`` or annotations with an ``endpoint``, else as
v2, so a file may mix both. Mapping of a v2 span:

- ``traceId`` (16 or 32 hex) → 32 hex; ``id``/``parentId`` → 16 hex.
- ``kind`` CLIENT/SERVER/PRODUCER/CONSUMER → the OTLP kind; absent → INTERNAL.
- ``timestamp``/``duration`` (µs) → ns. A span without ``duration`` is kept with zero length
  (end = start). A span without ``timestamp`` (a late fragment) starts at its first annotation,
  else at the start of the row that has its span id, else at the trace's earliest start; it is
  zero-length and flagged ``zipkin.untimed=true``.
- ``localEndpoint.serviceName`` → resource ``service.name`` (left out when missing, so the
  span lands under ``unknown_service``); its ip/port → ``network.local.address``/``.port``.
- ``remoteEndpoint``: ``serviceName`` → ``peer.service``; ip/port → ``network.peer.address``/
  ``.port`` and ``server.address``/``.port`` (client, producer) or ``client.address``/``.port``
  (server, consumer).
- ``annotations`` → events; ``tags`` → string attributes (Brave's ``sql.query`` and
  ``http.path`` are also copied to ``db.statement`` and ``url.path``); an ``error`` tag → status
  ERROR with the tag value as message; ``otel.status_code``/``otel.status_description`` and
  ``otel.scope.*`` written by OTel's Zipkin exporter become status and scope again.
- ``debug``/``shared`` → ``zipkin.debug``/``zipkin.shared`` when true.

Shared span ids. RPC instrumentation often reports the client and the server half of one call
under one span id (the server half has ``shared: true``). Both halves are kept as rows, because
the call tree needs the caller's CLIENT span and the callee's SERVER span under it. Within the
spans of one ``read()`` call (an export file is one trace), whenever a (trace id, span id) has a
CLIENT row and SERVER rows:

- the k-th SERVER row (file order, k = 0, 1, …) gets the span id
  ``blake2b("<id>:server", digest_size=8)`` for k = 0 and ``blake2b("<id>:server:<k>")``
  after that (the id in canonical 16-hex form), and its parent becomes ``<id>`` (the client);
- a row whose ``parentId`` is ``<id>`` is re-parented to the server half whose local endpoint
  equals its own (service, ip, port), else to the first server half of its service — it ran
  inside the server; rows of other services stay under the client half;
- kind-less fragments with the same id follow the same endpoint/service rule.

Rows that still share a (trace id, span id) — exact duplicates, fragments — are emitted most
complete first (kind, timestamp, duration, service), so the store, which keeps the first of
duplicates, keeps the best one.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson
import pyarrow as pa

from tracelens import ids
from tracelens.errors import InputFormatError
from tracelens.model import SpanBatchBuilder, SpanKind, StatusCode, gc_paused

NAME = "zipkin"

KINDS = {
    "CLIENT": SpanKind.CLIENT,
    "SERVER": SpanKind.SERVER,
    "PRODUCER": SpanKind.PRODUCER,
    "CONSUMER": SpanKind.CONSUMER,
}
# Brave/Zipkin tag names whose semantic-convention twin the analyses read.
TAG_ALIASES = {"sql.query": "db.statement", "http.path": "url.path"}
# Tags written by OpenTelemetry's Zipkin exporter that map back to first-class span fields.
_OTEL_TAGS = frozenset(
    {
        "otel.status_code",
        "otel.status_description",
        "otel.scope.name",
        "otel.scope.version",
        "otel.library.name",
        "otel.library.version",
    }
)
_ARRAY_START = re.compile(rb"\s*\[\s*(?:\[\s*)?")


@dataclass(slots=True)
class ZRow:
    """One span row on its way to the builder; v1 and v2 both produce these."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: SpanKind
    start_us: int | None
    duration_us: int | None
    service: str = ""
    local_key: tuple = ()
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    status_code: int = StatusCode.UNSET
    status_message: str | None = None
    scope_name: str | None = None
    scope_version: str | None = None
    explicit_kind: bool = True  # False for kind-less fragments and local spans
    half: bool = False  # a server half whose id was derived


# --- sniffing ---------------------------------------------------------------------------------


def sniff(head: bytes, filename: str) -> bool:
    """A top-level array whose first object has ``traceId`` and ``id`` (v2 or v1)."""
    head = head.removeprefix(b"\xef\xbb\xbf")
    start = _ARRAY_START.match(head)
    if not start or start.end() >= len(head) or head[start.end() : start.end() + 1] != b"{":
        return False
    first = _first_object(head.decode("utf-8", "replace"), start.end())
    if first is None:  # the first object does not fit in the head: look at its keys
        window = head[start.end() : start.end() + 4096]
        return b'"traceId"' in window and b'"spanId"' not in window
    keys = set(first)
    if "traceId" not in keys or "spanId" in keys:
        return False
    return "id" in keys or bool(keys & {"annotations", "binaryAnnotations"})


def _first_object(text: str, pos: int) -> dict | None:
    try:
        value, _ = json.JSONDecoder().raw_decode(text, pos)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# --- reading ----------------------------------------------------------------------------------


def read(stream: BinaryIO, source: str) -> Iterator[pa.RecordBatch]:
    """Record batches of the spans in one Zipkin JSON file (shared halves split, see above)."""
    data = load_json(stream.read(), source)
    with gc_paused():  # the whole file is in memory anyway: shared halves need all of it
        rows = parse_rows(data, source)
        split_shared(rows)
        fill_untimed(rows)
        batches = list(emit(rows))
    yield from batches


def load_json(raw: bytes, source: str) -> Any:
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    if not raw.strip():
        raise InputFormatError(source, "empty file")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise InputFormatError(source, f"invalid JSON: {exc.msg}", where) from exc


def parse_rows(data: Any, source: str) -> list[ZRow]:
    from tracelens.importers import zipkin_v1

    if not isinstance(data, list):
        raise InputFormatError(source, "expected a JSON array of Zipkin spans", "top level")
    rows: list[ZRow] = []
    for where, obj in _span_objects(data, source):
        try:
            if zipkin_v1.is_v1(obj):
                rows.extend(zipkin_v1.rows_from(obj))
            else:
                rows.append(row_from_v2(obj))
        except (ids.IdError, AttributeError, KeyError, TypeError, ValueError) as exc:
            raise InputFormatError(source, _problem(exc), where) from exc
    return rows


def _span_objects(data: list, source: str) -> Iterator[tuple[str, dict]]:
    for i, item in enumerate(data):
        if isinstance(item, dict):
            yield f"[{i}]", item
        elif isinstance(item, list):  # a batch
            for j, obj in enumerate(item):
                if not isinstance(obj, dict):
                    raise InputFormatError(source, "expected a span object", f"[{i}][{j}]")
                yield f"[{i}][{j}]", obj
        else:
            raise InputFormatError(source, "expected a span object or an array", f"[{i}]")


def _problem(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    if isinstance(exc, AttributeError):
        return f"a field has the wrong JSON type ({exc})"
    return str(exc)


def row_from_v2(obj: Mapping[str, Any]) -> ZRow:
    kind_text = obj.get("kind")
    kind = KINDS.get(str(kind_text).upper(), SpanKind.INTERNAL) if kind_text else None
    local = obj.get("localEndpoint") or {}
    row = ZRow(
        trace_id=ids.trace_id(obj["traceId"]),
        span_id=ids.span_id(obj["id"]),
        parent_id=parent_of(obj),
        name=str(obj.get("name") or ""),
        kind=kind if kind is not None else SpanKind.INTERNAL,
        start_us=micros(obj.get("timestamp"), "timestamp"),
        duration_us=micros(obj.get("duration"), "duration"),
        explicit_kind=kind is not None,
    )
    set_local(row, local)
    add_remote(row.attributes, obj.get("remoteEndpoint"), row.kind)
    for ann in obj.get("annotations") or ():
        row.events.append(event(ann))
    apply_tags(row, obj.get("tags") or {})
    if obj.get("debug") is True:
        row.attributes["zipkin.debug"] = True
    if obj.get("shared") is True:
        row.attributes["zipkin.shared"] = True
    return row


# --- field helpers shared with zipkin_v1 ----------------------------------------------------


def parent_of(obj: Mapping[str, Any]) -> str | None:
    parent = obj.get("parentId")
    if parent in (None, ""):
        return None
    pid = ids.span_id(parent)
    return None if ids.is_zero(pid) else pid


def micros(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of microseconds, got {value!r}")
    return int(value)


def endpoint_key(endpoint: Mapping[str, Any]) -> tuple:
    return (
        endpoint.get("serviceName") or "",
        endpoint.get("ipv4") or endpoint.get("ipv6") or "",
        endpoint.get("port") or 0,
    )


def set_local(row: ZRow, endpoint: Mapping[str, Any] | None) -> None:
    if not endpoint:
        return
    row.service = str(endpoint.get("serviceName") or "")
    row.local_key = endpoint_key(endpoint)
    address = endpoint.get("ipv4") or endpoint.get("ipv6")
    if address:
        row.attributes["network.local.address"] = address
    if endpoint.get("port"):
        row.attributes["network.local.port"] = endpoint["port"]


def add_remote(attrs: dict[str, Any], endpoint: Mapping[str, Any] | None, kind: int) -> None:
    if not endpoint:
        return
    if endpoint.get("serviceName"):
        attrs["peer.service"] = endpoint["serviceName"]
    address = endpoint.get("ipv4") or endpoint.get("ipv6")
    port = endpoint.get("port")
    side = "server" if kind in (SpanKind.CLIENT, SpanKind.PRODUCER) else "client"
    if address:
        attrs["network.peer.address"] = address
        attrs[f"{side}.address"] = address
    if port:
        attrs["network.peer.port"] = port
        attrs[f"{side}.port"] = port


def event(annotation: Mapping[str, Any]) -> dict[str, Any]:
    ts = micros(annotation.get("timestamp"), "annotation timestamp")
    return {
        "time_ns": (ts or 0) * 1000,
        "name": str(annotation.get("value") or ""),
        "attributes": {},
    }


def apply_tags(row: ZRow, tags: Mapping[str, Any]) -> None:
    """Tags become string attributes; ``error`` and the ``otel.*`` tags set status and scope."""
    attrs = row.attributes
    for key, value in tags.items():
        if key not in _OTEL_TAGS:
            attrs[key] = tag_text(value)
    for key, alias in TAG_ALIASES.items():
        if key in tags and alias not in attrs:
            attrs[alias] = attrs[key]
    otel_status = str(tags.get("otel.status_code") or "").upper()
    if "error" in tags or otel_status == "ERROR":
        row.status_code = StatusCode.ERROR
        row.status_message = tag_text(tags.get("error") or tags.get("otel.status_description"))
    elif otel_status == "OK":
        row.status_code = StatusCode.OK
    row.scope_name = tags.get("otel.scope.name") or tags.get("otel.library.name")
    row.scope_version = tags.get("otel.scope.version") or tags.get("otel.library.version")


def tag_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


# --- shared client/server ids ---------------------------------------------------------------


def server_half_id(span_id: str, k: int = 0) -> str:
    """The derived id of the k-th server half sharing ``span_id`` (see the module docstring)."""
    text = f"{span_id}:server" if k == 0 else f"{span_id}:server:{k}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def split_shared(rows: list[ZRow]) -> None:
    """Give server halves of shared ids their own ids and re-parent what ran inside them."""
    groups: dict[tuple[str, str], list[ZRow]] = defaultdict(list)
    for row in rows:
        groups[(row.trace_id, row.span_id)].append(row)
    halves: dict[tuple[str, str], list[ZRow]] = {}
    for key, group in groups.items():
        servers = [r for r in group if r.kind == SpanKind.SERVER and r.explicit_kind]
        if len(group) < 2 or not servers or not any(r.kind == SpanKind.CLIENT for r in group):
            continue
        for k, server in enumerate(servers):
            server.span_id = server_half_id(key[1], k)
            server.parent_id = key[1]
            server.half = True
        halves[key] = servers
        for row in group:
            if not row.explicit_kind and (home := _home(row, servers)) is not None:
                row.span_id, row.parent_id, row.half = home.span_id, home.parent_id, True
    if not halves:
        return
    for row in rows:
        if row.half or row.parent_id is None:
            continue
        servers = halves.get((row.trace_id, row.parent_id))
        if servers and (home := _home(row, servers)) is not None:
            row.parent_id = home.span_id


def _home(row: ZRow, servers: list[ZRow]) -> ZRow | None:
    """The server half ``row`` ran in: same local endpoint, else same service, else none."""
    if row.local_key:
        for server in servers:
            if server.local_key == row.local_key:
                return server
    if row.service:
        for server in servers:
            if server.service == row.service:
                return server
    return None


# --- timing and emission --------------------------------------------------------------------


def fill_untimed(rows: list[ZRow]) -> None:
    """Rows without a timestamp borrow one (see the module docstring) and are flagged."""
    untimed = [r for r in rows if r.start_us is None]
    if not untimed:
        return
    by_id: dict[tuple[str, str], int] = {}
    earliest: dict[str, int] = {}
    for row in rows:
        if row.start_us is not None:
            by_id.setdefault((row.trace_id, row.span_id), row.start_us)
            earliest[row.trace_id] = min(earliest.get(row.trace_id, row.start_us), row.start_us)
    for row in untimed:
        times = [e["time_ns"] // 1000 for e in row.events if e["time_ns"]]
        if times:
            row.start_us, row.duration_us = min(times), max(times) - min(times)
        else:
            row.start_us = by_id.get((row.trace_id, row.span_id), earliest.get(row.trace_id, 0))
            row.duration_us = 0
        row.attributes["zipkin.untimed"] = True


def _completeness(row: ZRow) -> int:
    return (
        row.explicit_kind
        + (row.start_us is not None)
        + (row.duration_us is not None)
        + bool(row.service)
        - bool(row.attributes.get("zipkin.untimed"))
    )


def ordered(rows: list[ZRow]) -> list[ZRow]:
    """File order, except that rows sharing an id follow the first one, most complete first."""
    groups: dict[tuple[str, str], list[ZRow]] = defaultdict(list)
    for row in rows:
        groups[(row.trace_id, row.span_id)].append(row)
    out: list[ZRow] = []
    for group in groups.values():  # dicts keep first-insertion order
        out.extend(sorted(group, key=_completeness, reverse=True) if len(group) > 1 else group)
    return out


def emit(rows: list[ZRow]) -> Iterator[pa.RecordBatch]:
    builder = SpanBatchBuilder()
    resources: dict[str, dict[str, str]] = {}
    for row in ordered(rows):
        resource = resources.setdefault(
            row.service, {"service.name": row.service} if row.service else {}
        )
        start_ns = (row.start_us or 0) * 1000
        builder.add(
            trace_id=row.trace_id,
            span_id=row.span_id,
            parent_span_id=row.parent_id,
            name=row.name,
            kind=row.kind,
            start_ns=start_ns,
            end_ns=start_ns + (row.duration_us or 0) * 1000,
            attributes=row.attributes,
            resource=resource,
            status_code=row.status_code,
            status_message=row.status_message,
            scope_name=row.scope_name,
            scope_version=row.scope_version,
            events=row.events,
        )
        if (batch := builder.take_if_full()) is not None:
            yield batch
    if (batch := builder.flush()) is not None:
        yield batch
