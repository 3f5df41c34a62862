"""The canonical span schema every source produces, and the types analyses work with.

One row per span. Ids are lowercase hex (trace 32 chars, span 16), times are integer
nanoseconds since the epoch, kind and status are the OTLP enums. Span and resource attributes,
events and links are stored as JSON text so their value types survive (DuckDB reads the
columns as JSON: ``attributes->>'http.method'``).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import orjson

from tracelens.semconv import DERIVED, derive_row

if TYPE_CHECKING:
    import pyarrow as pa


class SpanKind(IntEnum):
    UNSPECIFIED = 0
    INTERNAL = 1
    SERVER = 2
    CLIENT = 3
    PRODUCER = 4
    CONSUMER = 5


class StatusCode(IntEnum):
    UNSET = 0
    OK = 1
    ERROR = 2


DERIVED_COLUMNS = DERIVED  # the trailing columns, computed from attributes at ingest

# (name, pyarrow type, nullable). The schema itself is built on first use: importing pyarrow
# costs ~150 ms, and `explain` reads a trace without it.
_FIELDS: tuple[tuple[str, str, bool], ...] = (
    ("trace_id", "string", False),
    ("span_id", "string", False),
    ("parent_span_id", "string", True),  # null for a root
    ("name", "string", False),
    ("kind", "int8", False),
    ("start_ns", "int64", False),
    ("end_ns", "int64", False),
    ("duration_ns", "int64", False),
    ("status_code", "int8", False),
    ("status_message", "string", True),
    ("follows_from", "bool_", False),  # parent link is not blocking
    ("trace_state", "string", True),
    ("scope_name", "string", True),
    ("scope_version", "string", True),
    ("attributes", "string", True),  # JSON object
    ("resource_attributes", "string", True),  # JSON object
    ("events", "string", True),  # JSON [{"time_ns", "name", "attributes"}]
    ("links", "string", True),  # JSON [{"trace_id", "span_id", "attributes"}]
    ("service", "string", False),
    ("db_system", "string", True),
    ("db_statement", "string", True),
    ("db_fingerprint", "string", True),
    ("peer", "string", True),
    ("http_route", "string", True),
    ("http_method", "string", True),
    ("http_url", "string", True),
    ("http_status", "int32", True),
    ("rpc_method", "string", True),
)
COLUMNS = tuple(name for name, _, _ in _FIELDS)
assert COLUMNS[-len(DERIVED_COLUMNS) :] == DERIVED_COLUMNS, "derived columns must come last"
_EMPTY_OBJ = "{}"
_EMPTY_LIST = "[]"


def to_json(value: Any) -> str:
    """The stored JSON text of attributes, resources, events and links, for every source.

    Bytes values (OTLP bytesValue) are not JSON; they are kept as base64 text. Decoded to str at
    once: orjson's bytes keep a generous buffer, and holding thousands of them per batch costs
    more in page faults than the copy into an exact-size str."""
    return orjson.dumps(value, default=json_default).decode()


def json_default(value: Any) -> Any:
    """orjson's ``default`` for attribute values JSON has no type for."""
    if isinstance(value, bytes | bytearray):
        import base64

        return base64.b64encode(value).decode()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} as an attribute value")


class SpanBatchBuilder:
    """Accumulates spans and emits ``SPAN_SCHEMA`` record batches.

    Importers call :meth:`add` per span and :meth:`flush` (or :meth:`take_if_full`) to get
    batches. Derived columns are computed here so that no source can forget them. A span is
    kept as one tuple in schema order and the rows are transposed at flush: one append per
    span instead of one per column.
    """

    def __init__(self, batch_size: int = 20_000) -> None:
        self.batch_size = batch_size
        self._rows: list[tuple[Any, ...]] = []
        self._resource_cache: tuple[Mapping[str, Any], str] | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def add(
        self,
        *,
        trace_id: str,
        span_id: str,
        parent_span_id: str | None,
        name: str,
        kind: int,
        start_ns: int,
        end_ns: int,
        attributes: Mapping[str, Any],
        resource: Mapping[str, Any],
        status_code: int = 0,
        status_message: str | None = None,
        follows_from: bool = False,
        trace_state: str | None = None,
        scope_name: str | None = None,
        scope_version: str | None = None,
        events: Sequence[Mapping[str, Any]] = (),
        links: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Append one span. Ids must already be canonical hex (see ``tracelens.ids``)."""
        if end_ns < start_ns:
            end_ns = start_ns
        self._rows.append(
            (
                trace_id,
                span_id,
                parent_span_id or None,
                name,
                kind,
                start_ns,
                end_ns,
                end_ns - start_ns,
                status_code,
                status_message or None,
                bool(follows_from),
                trace_state or None,
                scope_name or None,
                scope_version or None,
                to_json(attributes) if attributes else _EMPTY_OBJ,
                self._resource_json(resource),
                to_json(list(events)) if events else _EMPTY_LIST,
                to_json(list(links)) if links else _EMPTY_LIST,
            )
            + derive_row(attributes, resource)
        )

    def add_row(
        self, row: tuple[Any, ...], attributes: Mapping[str, Any], resource: Mapping[str, Any]
    ) -> None:
        """Append one span given as its leading (not derived) ``SPAN_SCHEMA`` columns, already
        normalized as :meth:`add` does (canonical ids, None for empty optionals, ``end_ns >=
        start_ns``, JSON text); the derived columns are computed here. For importers' hot
        loops: one tuple instead of seventeen keyword arguments per span."""
        self._rows.append(row + derive_row(attributes, resource))

    def _resource_json(self, resource: Mapping[str, Any]) -> str:
        # Spans of one resource arrive together; serialize its attributes once.
        cached = self._resource_cache
        if cached is not None and cached[0] is resource:
            return cached[1]
        text = to_json(dict(resource)) if resource else _EMPTY_OBJ
        self._resource_cache = (resource, text)
        return text

    def flush(self) -> pa.RecordBatch | None:
        """The spans added so far as one batch (or None when empty); the builder resets."""
        if not self._rows:
            return None
        rows, self._rows = self._rows, []
        return rows_to_batch(rows)

    def take_if_full(self) -> pa.RecordBatch | None:
        return self.flush() if len(self._rows) >= self.batch_size else None


def span_schema() -> pa.Schema:
    """The canonical Arrow schema (``SPAN_SCHEMA``), built once."""
    global _SCHEMA
    if _SCHEMA is None:
        import pyarrow as pa

        _SCHEMA = pa.schema(
            [
                pa.field(name, getattr(pa, typ)(), nullable=nullable)
                for name, typ, nullable in _FIELDS
            ]
        )
    return _SCHEMA


_SCHEMA: pa.Schema | None = None


def __getattr__(name: str) -> Any:
    # `from tracelens.model import SPAN_SCHEMA` keeps working, without an eager pyarrow import.
    if name == "SPAN_SCHEMA":
        return span_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def rows_to_batch(rows: list[tuple[Any, ...]]) -> pa.RecordBatch:
    """Row tuples in ``SPAN_SCHEMA`` order → one record batch."""
    import pyarrow as pa

    SPAN_SCHEMA = span_schema()
    columns = zip(*rows, strict=True)
    arrays = [pa.array(col, type=f.type) for col, f in zip(columns, SPAN_SCHEMA, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, schema=SPAN_SCHEMA)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building many small containers (3-4x faster parsing)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# --- analysis types ---------------------------------------------------------------------------


@dataclass(slots=True)
class Span:
    """One span as analyses see it (built from a stored row)."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: int
    start_ns: int
    end_ns: int
    service: str
    status_code: int = 0
    status_message: str | None = None
    follows_from: bool = False
    db_system: str | None = None
    db_statement: str | None = None
    db_fingerprint: str | None = None
    peer: str | None = None
    http_route: str | None = None
    http_method: str | None = None
    http_url: str | None = None
    http_status: int | None = None
    rpc_method: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def is_error(self) -> bool:
        return self.status_code == StatusCode.ERROR


_SPAN_FIELDS = tuple(f for f in Span.__slots__ if f not in ("attributes", "events"))  # type: ignore[attr-defined]


def spans_from_rows(
    rows: Sequence[tuple[Any, ...]], columns: Sequence[str] = COLUMNS
) -> list[Span]:
    """Stored rows as tuples (a DuckDB ``fetchall``) → ``Span`` objects, no Arrow involved."""
    index = {name: i for i, name in enumerate(columns)}
    picks = [(name, index[name]) for name in _SPAN_FIELDS]
    attrs_at, events_at = index["attributes"], index["events"]
    out = []
    for row in rows:
        kwargs = {name: row[i] for name, i in picks}
        kwargs["attributes"] = orjson.loads(row[attrs_at]) if row[attrs_at] else {}
        kwargs["events"] = orjson.loads(row[events_at]) if row[events_at] else []
        out.append(Span(**kwargs))
    return out


def spans_from_table(table: pa.Table | pa.RecordBatch) -> list[Span]:
    """Stored rows → ``Span`` objects (attributes and events parsed from JSON)."""
    cols = {name: table.column(name).to_pylist() for name in _SPAN_FIELDS}
    attrs = table.column("attributes").to_pylist()
    events = table.column("events").to_pylist()
    out = []
    for i in range(table.num_rows):
        kwargs = {name: cols[name][i] for name in _SPAN_FIELDS}
        kwargs["attributes"] = orjson.loads(attrs[i]) if attrs[i] else {}
        kwargs["events"] = orjson.loads(events[i]) if events[i] else []
        out.append(Span(**kwargs))
    return out


@dataclass(slots=True)
class Finding:
    """A named cause with its evidence, impact and fix. JSON shape per the analyze issue."""

    rule: str
    kind: str
    severity: str
    service: str
    operation: str
    resource: str | None
    trace_ids: list[str]
    span_ids: list[str]
    count: int
    impact_ms: float
    impact_share: float
    summary: str
    fix: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]
        out["impact_ms"] = round(self.impact_ms, 3)
        out["impact_share"] = round(self.impact_share, 4)
        return out
