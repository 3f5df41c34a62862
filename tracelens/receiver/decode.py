"""OTLP protobuf (``ExportTraceServiceRequest`` / ``TracesData``) → ``SPAN_SCHEMA`` batches, fast.

Walking every attribute through the generated OTLP classes caps at ~100k spans/s. Here upb
parses a *lean* copy of the schema in which each attribute ``KeyValue`` is declared as raw
bytes: upb hands back one ``bytes`` per attribute and each distinct encoding is decoded once
and cached (attributes repeat across spans: methods, peers, statements with placeholders).
Derived columns are cached the same way, keyed on the few attributes ``semconv.derive``
reads. Rows are collected as tuples and transposed to Arrow columns at the end.

The two wire formats are identical, so this reads both the request a client exports and
the ``TracesData`` a file holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tracelens import semconv
from tracelens.errors import InputFormatError
from tracelens.model import DERIVED_COLUMNS, SPAN_SCHEMA, rows_to_batch
from tracelens.model import _dumps as to_json  # the builder's own serializer: same text

# Keys whose values ``semconv.derive`` reads; test_receiver_decode checks this set is complete.
DERIVE_KEYS = frozenset(
    semconv.DB_SYSTEM_KEYS
    + semconv.DB_STATEMENT_KEYS
    + semconv.DB_OPERATION_KEYS
    + semconv.HTTP_METHOD_KEYS
    + semconv.HTTP_URL_KEYS
    + semconv.HTTP_STATUS_KEYS
    + semconv.PEER_KEYS
    + ("rpc.method", "rpc.service", "http.route")
)
# The order in which ``Decoder._row`` builds a row; checked against the schema at import.
_ROW_ORDER = (
    "trace_id", "span_id", "parent_span_id", "name", "kind", "start_ns", "end_ns",
    "duration_ns", "status_code", "status_message", "follows_from", "trace_state",
    "scope_name", "scope_version", "attributes", "resource_attributes", "events", "links",
) + DERIVED_COLUMNS  # fmt: skip
if tuple(SPAN_SCHEMA.names) != _ROW_ORDER:
    raise ImportError("tracelens.receiver.decode: row order no longer matches SPAN_SCHEMA")

BATCH_ROWS = 20_000  # rows per emitted batch: bounds the Python objects alive at once
_CACHE_LIMIT = 50_000  # entries per cache before it is cleared
_CACHE_MAX_BYTES = 1024  # longer attribute encodings are decoded every time, never cached
_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
_MAX_INT64 = (1 << 63) - 1
_MAX_KIND = 5
_MAX_STATUS = 2


# --- the lean schema ---------------------------------------------------------------------------

_F = descriptor_pb2.FieldDescriptorProto
_ONE, _MANY = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
# name → [(field, number, type, label, message type)]; numbers as in opentelemetry-proto.
_LEAN = {
    "Request": [("resource_spans", 1, _F.TYPE_MESSAGE, _MANY, "ResourceSpans")],
    "ResourceSpans": [
        ("resource", 1, _F.TYPE_MESSAGE, _ONE, "Resource"),
        ("scope_spans", 2, _F.TYPE_MESSAGE, _MANY, "ScopeSpans"),
    ],
    "Resource": [("attributes", 1, _F.TYPE_BYTES, _MANY, None)],
    "ScopeSpans": [
        ("scope", 1, _F.TYPE_MESSAGE, _ONE, "Scope"),
        ("spans", 2, _F.TYPE_MESSAGE, _MANY, "Span"),
    ],
    "Scope": [("name", 1, _F.TYPE_STRING, _ONE, None), ("version", 2, _F.TYPE_STRING, _ONE, None)],
    "Span": [
        ("trace_id", 1, _F.TYPE_BYTES, _ONE, None),
        ("span_id", 2, _F.TYPE_BYTES, _ONE, None),
        ("trace_state", 3, _F.TYPE_STRING, _ONE, None),
        ("parent_span_id", 4, _F.TYPE_BYTES, _ONE, None),
        ("name", 5, _F.TYPE_STRING, _ONE, None),
        ("kind", 6, _F.TYPE_INT32, _ONE, None),  # an enum on the wire is an int32 varint
        ("start", 7, _F.TYPE_FIXED64, _ONE, None),
        ("end", 8, _F.TYPE_FIXED64, _ONE, None),
        ("attributes", 9, _F.TYPE_BYTES, _MANY, None),
        ("events", 11, _F.TYPE_MESSAGE, _MANY, "Event"),
        ("links", 13, _F.TYPE_MESSAGE, _MANY, "Link"),
        ("status", 15, _F.TYPE_MESSAGE, _ONE, "Status"),
    ],
    "Event": [
        ("time", 1, _F.TYPE_FIXED64, _ONE, None),
        ("name", 2, _F.TYPE_STRING, _ONE, None),
        ("attributes", 3, _F.TYPE_BYTES, _MANY, None),
    ],
    "Link": [
        ("trace_id", 1, _F.TYPE_BYTES, _ONE, None),
        ("span_id", 2, _F.TYPE_BYTES, _ONE, None),
        ("trace_state", 3, _F.TYPE_STRING, _ONE, None),
        ("attributes", 4, _F.TYPE_BYTES, _MANY, None),
    ],
    "Status": [("message", 2, _F.TYPE_STRING, _ONE, None), ("code", 3, _F.TYPE_INT32, _ONE, None)],
}


def _lean_request_class() -> type:
    proto = descriptor_pb2.FileDescriptorProto(
        name="tracelens/lean_trace.proto", package="tracelens.lean", syntax="proto3"
    )
    for name, fields in _LEAN.items():
        message = proto.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = message.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = f".tracelens.lean.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tracelens.lean.Request"))


LeanRequest = _lean_request_class()


# --- attribute values -----------------------------------------------------------------------------


def any_value(value: AnyValue) -> Any:
    """An OTLP ``AnyValue`` as a plain Python value (arrays → list, kvlists → dict)."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, which)


# --- the decoder -------------------------------------------------------------------------------


@dataclass
class Decoded:
    """What one request or file chunk held: batches of the valid spans, and the rejects."""

    batches: list[pa.RecordBatch] = field(default_factory=list)
    spans: int = 0  # spans seen, valid or not
    rejected: list[str] = field(default_factory=list)  # "where: problem", one per rejected span

    @property
    def accepted(self) -> int:
        return self.spans - len(self.rejected)


class SpanRejected(ValueError):
    """One span that breaks the OTLP rules (bad id length, end before start, …)."""


class Decoder:
    """Decodes OTLP protobuf bytes; caches are shared by all requests (safe under the GIL)."""

    def __init__(self) -> None:
        self._kv: dict[bytes, tuple[str, Any]] = {}
        self._derived: dict[tuple, tuple] = {}

    def decode(
        self, data: bytes, source: str, *, strict: bool = False, first_resource: int = 0
    ) -> Decoded:
        """Parse ``data``; invalid spans raise (strict) or are listed in ``rejected``.

        Raises ``InputFormatError`` when the bytes are not an OTLP trace message at all.
        ``first_resource`` offsets the ``resource_spans[i]`` in messages (a file read in chunks).
        """
        try:
            request = LeanRequest.FromString(data)
        except DecodeError as exc:
            raise InputFormatError(
                source, f"not an OTLP protobuf ExportTraceServiceRequest/TracesData ({exc})"
            ) from exc
        out = Decoded()
        rows: list[tuple] = []
        for ri, resource_spans in enumerate(request.resource_spans, first_resource):
            try:
                resource = self.attributes(resource_spans.resource.attributes)
            except SpanRejected as exc:
                where = f"resource_spans[{ri}].resource"
                raise InputFormatError(source, str(exc), where) from None
            context = (resource, to_json(resource) if resource else "{}")
            for si, scope_spans in enumerate(resource_spans.scope_spans):
                scope = scope_spans.scope
                where = f"resource_spans[{ri}].scope_spans[{si}].spans"
                scoped = (*context, scope.name or None, scope.version or None)
                self._spans(scope_spans.spans, scoped, where, rows, out, source, strict)
                if len(rows) >= BATCH_ROWS:
                    out.batches.append(rows_to_batch(rows))
                    rows = []
        if rows:
            out.batches.append(rows_to_batch(rows))
        return out

    def _spans(
        self,
        spans: Sequence[Any],
        scoped: tuple,
        where: str,
        rows: list[tuple],
        out: Decoded,
        source: str,
        strict: bool,
    ) -> None:
        row = self._row
        out.spans += len(spans)
        for index, span in enumerate(spans):
            try:
                rows.append(row(span, scoped))
            except SpanRejected as exc:
                if strict:
                    raise InputFormatError(source, str(exc), f"{where}[{index}]") from None
                out.rejected.append(f"{where}[{index}]: {exc}")

    def _row(self, span: Any, scoped: tuple) -> tuple:
        """One span as a tuple in ``SPAN_SCHEMA`` column order."""
        resource, resource_json, scope_name, scope_version = scoped
        trace_id, span_id, parent = span.trace_id, span.span_id, span.parent_span_id
        if len(trace_id) != 16 or trace_id == _ZERO_TRACE:
            raise SpanRejected(_bad_id("trace_id", trace_id, 16))
        if len(span_id) != 8 or span_id == _ZERO_SPAN:
            raise SpanRejected(_bad_id("span_id", span_id, 8))
        if parent and len(parent) != 8:
            raise SpanRejected(_bad_id("parent_span_id", parent, 8))
        start, end = span.start or span.end, span.end or span.start  # one missing: zero length
        if end < start:
            raise SpanRejected(f"end_time_unix_nano {end} is before start {start}")
        if end > _MAX_INT64:
            raise SpanRejected(f"end_time_unix_nano {end} does not fit in int64")
        kind = span.kind
        if not 0 <= kind <= _MAX_KIND:
            raise SpanRejected(f"kind {kind} is not a SpanKind")
        status = span.status
        code = status.code
        if not 0 <= code <= _MAX_STATUS:
            raise SpanRejected(f"status.code {code} is not a StatusCode")
        pairs = self._pairs(span.attributes)
        attrs = dict(pairs)
        parent_hex = parent.hex() if parent and parent != _ZERO_SPAN else None
        links, follows_from = (
            self._links(span.links, trace_id, parent) if span.links else ("[]", False)
        )
        return (
            trace_id.hex(),
            span_id.hex(),
            parent_hex,
            span.name,
            kind,
            start,
            end,
            end - start,
            code,
            status.message or None,
            follows_from,
            span.trace_state or None,
            scope_name,
            scope_version,
            to_json(attrs) if attrs else "{}",
            resource_json,
            self._events(span.events) if span.events else "[]",
            links,
            *self._derive(pairs, attrs, resource),
        )

    # -- attributes ----------------------------------------------------------------------------

    def _pairs(self, raw_attributes: Sequence[bytes]) -> list[tuple[str, Any]]:
        get, miss = self._kv.get, self._decode_kv
        # Slicing copies upb's container in one C call: 3x faster than iterating it.
        return [get(raw) or miss(raw) for raw in raw_attributes[:]]

    def attributes(self, raw_attributes: Sequence[bytes]) -> dict[str, Any]:
        return dict(self._pairs(raw_attributes))

    def _decode_kv(self, raw: bytes) -> tuple[str, Any]:
        try:
            kv = KeyValue.FromString(raw)
        except DecodeError as exc:
            raise SpanRejected(f"undecodable attribute ({exc})") from None
        pair = (kv.key, any_value(kv.value))
        if len(raw) <= _CACHE_MAX_BYTES:
            if len(self._kv) >= _CACHE_LIMIT:
                self._kv.clear()
            self._kv[raw] = pair
        return pair

    def _derive(self, pairs: list[tuple[str, Any]], attrs: dict, resource: dict) -> tuple:
        key = (resource.get("service.name"), tuple([p for p in pairs if p[0] in DERIVE_KEYS]))
        try:
            hit = self._derived.get(key)
        except TypeError:  # an array or map value among the keys: not hashable, not cached
            return semconv.derive_row(attrs, resource)
        if hit is None:
            hit = semconv.derive_row(attrs, resource)
            if len(self._derived) >= _CACHE_LIMIT:
                self._derived.clear()
            self._derived[key] = hit
        return hit

    # -- events and links ----------------------------------------------------------------------

    def _events(self, events: Iterable[Any]) -> str:
        return to_json(
            [
                {"time_ns": e.time, "name": e.name, "attributes": self.attributes(e.attributes)}
                for e in events
            ]
        )

    def _links(self, links: Iterable[Any], trace_id: bytes, parent: bytes) -> tuple[str, bool]:
        """Links as JSON, and whether the parent is a follows-from reference.

        Jaeger/OpenTracing data converted to OTLP marks references with the link attribute
        ``opentracing.ref_type``; a FOLLOWS_FROM parent does not block its child.
        """
        out, follows_from = [], False
        for i, link in enumerate(links):
            if len(link.trace_id) != 16 or len(link.span_id) != 8:
                raise SpanRejected(
                    f"links[{i}] needs a 16-byte trace_id and an 8-byte span_id, got "
                    f"{len(link.trace_id)} and {len(link.span_id)} bytes"
                )
            if link.span_id == _ZERO_SPAN or link.trace_id == _ZERO_TRACE:
                raise SpanRejected(f"links[{i}] has an all-zero id")
            attrs = self.attributes(link.attributes)
            if (
                parent
                and link.span_id == parent
                and link.trace_id == trace_id
                and attrs.get("opentracing.ref_type") == "follows_from"
            ):
                follows_from = True
            out.append(
                {
                    "trace_id": link.trace_id.hex(),
                    "span_id": link.span_id.hex(),
                    "trace_state": link.trace_state or None,
                    "attributes": attrs,
                }
            )
        return to_json(out), follows_from


def _bad_id(name: str, raw: bytes, width: int) -> str:
    if len(raw) == width:
        return f"{name} is all zeros"
    return f"{name} must be {width} bytes, got {len(raw)}"


DECODER = Decoder()


def decode(data: bytes, source: str, *, strict: bool = False, first_resource: int = 0) -> Decoded:
    """Decode with the process-wide decoder (its caches warm up across requests)."""
    return DECODER.decode(data, source, strict=strict, first_resource=first_resource)
