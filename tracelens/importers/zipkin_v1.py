"""Legacy Zipkin v1 JSON span objects → ``zipkin.ZRow`` rows (the v2 rules then apply).

A v1 span has no ``kind`` and no ``localEndpoint``: who did what is told by the core
annotations, each with its own endpoint — ``cs``/``cr`` (client send/receive), ``sr``/``ss``
(server receive/send), ``ms``/``mr`` (message send/receive). Rules, after Zipkin's own
v1→v2 conversion:

- ``cs``/``cr`` make a CLIENT row, ``sr``/``ss`` a SERVER row, ``ms`` a PRODUCER, ``mr`` a
  CONSUMER; a span with none of them is an INTERNAL (local) span whose service is the endpoint
  of its ``lc`` binary annotation (else of any annotation).
- One object holding both a client and a server side becomes two rows with the same id; the
  shared-id rule of ``zipkin`` then gives the server row its derived id.
- The optional top-level ``timestamp``/``duration`` belong to the side that started the span
  (the client when there is one); other sides are timed by their own annotations. A side
  without its closing annotation is zero-length.
- ``sa``/``ca``/``ma`` binary annotations name the remote (server, client, broker) endpoint;
  when one object holds both sides, each side is the other's remote.
- Other annotations → events, other binary annotations → string attributes, each on the side
  whose service matches its endpoint (else the first side); ``error`` → status ERROR.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from tracelens import ids
from tracelens.importers.zipkin import (
    ZRow,
    add_remote,
    apply_tags,
    event,
    micros,
    parent_of,
    set_local,
)
from tracelens.model import SpanKind


class Side(NamedTuple):
    kind: SpanKind
    opening: str  # core annotation that starts the side
    closing: str | None  # core annotation that ends it
    address: str  # binary annotation naming the remote endpoint


SIDES = (
    Side(SpanKind.CLIENT, "cs", "cr", "sa"),
    Side(SpanKind.SERVER, "sr", "ss", "ca"),
    Side(SpanKind.PRODUCER, "ms", None, "ma"),
    Side(SpanKind.CONSUMER, "mr", None, "ma"),
)
CORE = frozenset({"cs", "cr", "sr", "ss", "ms", "mr"})
ADDRESSES = frozenset({"sa", "ca", "ma"})


def is_v1(obj: Mapping[str, Any]) -> bool:
    if "binaryAnnotations" in obj:
        return True
    return any(isinstance(a, dict) and "endpoint" in a for a in obj.get("annotations") or ())


def rows_from(obj: Mapping[str, Any]) -> list[ZRow]:
    """One row per side found in the span object (one INTERNAL row when there is none)."""
    core: dict[str, tuple[int, dict]] = {}
    for ann in obj.get("annotations") or ():
        value = ann.get("value")
        if value in CORE and value not in core:
            ts = micros(ann.get("timestamp"), "annotation timestamp")
            core[value] = (ts, ann.get("endpoint") or {})
    binary = [b for b in obj.get("binaryAnnotations") or () if isinstance(b, dict)]
    rows = [_side_row(obj, side, core, first=not i) for i, side in enumerate(_sides(core))]
    if not rows:
        rows = [_local_row(obj, binary)]
    _remotes(rows, core, binary)
    _distribute(obj, rows, binary)
    return rows


def _sides(core: Mapping[str, Any]) -> list[Side]:
    return [s for s in SIDES if s.opening in core or (s.closing and s.closing in core)]


def _base(obj: Mapping[str, Any], kind: SpanKind, explicit: bool) -> ZRow:
    return ZRow(
        trace_id=ids.trace_id(obj["traceId"]),
        span_id=ids.span_id(obj["id"]),
        parent_id=parent_of(obj),
        name=str(obj.get("name") or ""),
        kind=kind,
        start_us=None,
        duration_us=None,
        explicit_kind=explicit,
    )


def _side_row(obj: Mapping, side: Side, core: dict, first: bool) -> ZRow:
    row = _base(obj, side.kind, explicit=True)
    open_ts, open_ep = core.get(side.opening, (None, {}))
    close_ts, close_ep = core.get(side.closing or "", (None, {}))
    set_local(row, open_ep or close_ep)
    top_ts = micros(obj.get("timestamp"), "timestamp")
    top_dur = micros(obj.get("duration"), "duration")
    if first and top_ts is not None:  # the span's own timing belongs to the side that began it
        row.start_us = top_ts
        row.duration_us = top_dur if top_dur is not None else _span(top_ts, close_ts)
    else:
        row.start_us = open_ts if open_ts is not None else close_ts
        row.duration_us = _span(row.start_us, close_ts)
    return row


def _span(start: int | None, end: int | None) -> int | None:
    if start is None or end is None:
        return None
    return max(end - start, 0)


def _local_row(obj: Mapping[str, Any], binary: list[dict]) -> ZRow:
    row = _base(obj, SpanKind.INTERNAL, explicit=False)
    annotations = [a for a in obj.get("annotations") or () if isinstance(a, dict)]
    endpoint = next(
        (b["endpoint"] for b in binary if b.get("key") == "lc" and b.get("endpoint")), None
    )
    if endpoint is None:
        endpoint = next((x["endpoint"] for x in (*annotations, *binary) if x.get("endpoint")), None)
    set_local(row, endpoint)
    row.start_us = micros(obj.get("timestamp"), "timestamp")
    row.duration_us = micros(obj.get("duration"), "duration")
    times = [micros(a.get("timestamp"), "annotation timestamp") for a in annotations]
    times = [t for t in times if t is not None]
    if row.start_us is None and times:
        row.start_us, row.duration_us = min(times), max(times) - min(times)
    return row


def _remotes(rows: list[ZRow], core: dict, binary: list[dict]) -> None:
    by_kind = {row.kind: row for row in rows}
    for side in SIDES:
        row = by_kind.get(side.kind)
        if row is None:
            continue
        remote = next((b.get("endpoint") for b in binary if b.get("key") == side.address), None)
        if remote is None and len(rows) > 1:  # both sides in one object: each is the other's peer
            other = next(r for r in rows if r is not row)
            remote = _endpoint_of(other, core)
        add_remote(row.attributes, remote, side.kind)


def _endpoint_of(row: ZRow, core: dict) -> dict | None:
    for side in SIDES:
        if side.kind == row.kind:
            return (core.get(side.opening) or core.get(side.closing or "") or (None, None))[1]
    return None


def _distribute(obj: Mapping[str, Any], rows: list[ZRow], binary: list[dict]) -> None:
    """Non-core annotations and binary annotations go to the row of their endpoint's service."""
    for ann in obj.get("annotations") or ():
        if ann.get("value") not in CORE:
            _pick(rows, ann.get("endpoint")).events.append(event(ann))
    tags_by_row: dict[int, dict[str, Any]] = {}
    for item in binary:
        key = item.get("key")
        if not key or key in ADDRESSES:
            continue
        target = _pick(rows, item.get("endpoint"))
        tags_by_row.setdefault(id(target), {})[key] = item.get("value")
    for row in rows:
        if id(row) in tags_by_row:
            apply_tags(row, tags_by_row[id(row)])


def _pick(rows: list[ZRow], endpoint: Mapping[str, Any] | None) -> ZRow:
    service = (endpoint or {}).get("serviceName")
    if service:
        for row in rows:
            if row.service == service:
                return row
    return rows[0]
