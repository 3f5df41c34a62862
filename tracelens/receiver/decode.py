"""OTLP protobuf (``ExportTraceServiceRequest`` / ``TracesData``) → ``SPAN_SCHEMA`` rows, fast.

Walking every attribute through the generated OTLP classes caps at ~100k spans/s. Here upb
parses a lean copy of the schema (``receiver.lean``) in which attributes, events and links
are raw bytes, and a scope's spans are read column by column: one C-level ``map`` per field
over all spans, the OTLP rules checked on whole columns. A span's attributes are looked up
as one key, (resource, *raw attributes), in a cache holding their JSON text and the derived
columns; a miss decodes each distinct ``KeyValue`` once (attributes repeat across spans:
methods, peers, statements with placeholders). The rows go to ``receiver.columns`` blocks,
made Arrow in bulk later.

A scope with anything to reject or to normalize (a bad id, a missing time, an all-zero
parent…) is decoded again span by span, which names the problem; both paths give the
same rows. The two wire formats are identical, so this reads both the request a client
exports and the ``TracesData`` a file holds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter, gt
from typing import Any

import pyarrow as pa
from google.protobuf.message import DecodeError
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tracelens import semconv
from tracelens.errors import InputFormatError
from tracelens.model import to_json  # the builder's own serializer: same text
from tracelens.receiver.columns import Columns
from tracelens.receiver.lean import LeanEvent, LeanLink, LeanRequest

__all__ = [
    "DERIVE_KEYS",
    "Decoded",
    "Decoder",
    "LeanRequest",
    "SpanRejected",
    "any_value",
    "decode",
]

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

BATCH_ROWS = 20_000  # rows per emitted batch: bounds the Python objects alive at once
_CACHE_LIMIT = 50_000  # entries per cache before it is cleared
_CACHE_MAX_BYTES = 1024  # longer attribute encodings are decoded every time, never cached
_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
_MAX_INT64 = (1 << 63) - 1
_MAX_KIND = 5
_MAX_STATUS = 2
_SET_LIMIT = 20_000  # attribute sets per cache generation
_PARENT_WIDTHS = frozenset((0, 8))

# Field getters for ``map``: one C call per span and field.
_TRACE_ID, _SPAN_ID, _PARENT = map(attrgetter, ("trace_id", "span_id", "parent_span_id"))
_START, _END, _KIND, _NAME = map(attrgetter, ("start", "end", "kind", "name"))
_TRACE_STATE, _EVENTS, _LINKS = map(attrgetter, ("trace_state", "events", "links"))
_STATUS, _CODE, _MESSAGE = map(attrgetter, ("status", "code", "message"))


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
    """What one request or file chunk held: the valid spans, and the rejects.

    The spans are ``blocks`` of at most about ``BATCH_ROWS`` rows, not yet Arrow (the writer
    converts a whole commit at once); ``batches`` converts them.
    """

    blocks: list[Columns] = field(default_factory=list)
    spans: int = 0  # spans seen, valid or not
    rejected: list[str] = field(default_factory=list)  # "where: problem", one per rejected span

    @property
    def accepted(self) -> int:
        return self.spans - len(self.rejected)

    @property
    def batches(self) -> list[pa.RecordBatch]:
        return [block.to_batch() for block in self.blocks]


class SpanRejected(ValueError):
    """One span that breaks the OTLP rules (bad id length, end before start, …)."""


class Decoder:
    """Decodes OTLP protobuf bytes; caches are shared by all requests (safe under the GIL).

    A scope's spans go through :meth:`_block`, which reads each field for all spans at once
    and checks the OTLP rules on whole columns; a scope with anything to reject or to
    normalize (a missing time, an all-zero parent…) is decoded again span by span by
    :meth:`_row`, which names the problem. Both give the same rows.
    """

    def __init__(self) -> None:
        self._kv: dict[bytes, tuple[str, Any]] = {}
        self._derived: dict[tuple, tuple] = {}
        # (resource JSON, *raw attributes) → (attributes JSON, *derived columns); two
        # generations, so a flood of one-off attribute sets cannot evict the recurring ones.
        self._sets: dict[tuple, tuple] = {}
        self._sets_old: dict[tuple, tuple] = {}

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
        columns = Columns()
        out.blocks.append(columns)
        for ri, resource_spans in enumerate(request.resource_spans):
            try:
                resource = self.attributes(resource_spans.resource.attributes)
            except SpanRejected as exc:
                where = f"resource_spans[{ri + first_resource}].resource"
                raise InputFormatError(source, str(exc), where) from None
            context = (resource, to_json(resource) if resource else "{}")
            for si, scope_spans in enumerate(resource_spans.scope_spans):
                spans = scope_spans.spans[:]  # one C call; the container's items are slower
                if not spans:
                    continue
                scope = scope_spans.scope
                scoped = (*context, scope.name or None, scope.version or None)
                out.spans += len(spans)
                if not self._block(spans, scoped, columns):
                    where = f"resource_spans[{ri + first_resource}].scope_spans[{si}].spans"
                    rows = self._rows(spans, scoped, where, out, source, strict)
                    if rows:
                        columns.add(*_from_rows(rows, scoped))
                if columns.num_rows >= BATCH_ROWS:
                    columns = Columns()
                    out.blocks.append(columns)
        if not columns.num_rows:
            out.blocks.pop()
        return out

    # -- the column-wise path ------------------------------------------------------------------

    def _block(self, spans: list[Any], scoped: tuple, columns: Columns) -> bool:
        """Add the scope's spans to ``columns``; False (nothing added) to go span by span."""
        trace_ids, span_ids, parents = (
            _col(_TRACE_ID, spans),
            _col(_SPAN_ID, spans),
            _col(_PARENT, spans),
        )
        starts, ends, kinds = _col(_START, spans), _col(_END, spans), _col(_KIND, spans)
        statuses = _col(_STATUS, spans)
        codes = _col(_CODE, statuses)
        if not (
            _valid_ids(trace_ids, 16, _ZERO_TRACE)
            and _valid_ids(span_ids, 8, _ZERO_SPAN)
            and set(map(len, parents)) <= _PARENT_WIDTHS
            and _ZERO_SPAN not in parents
            and 0 not in starts
            and 0 not in ends
            and max(ends) <= _MAX_INT64
            and min(kinds) >= 0 and max(kinds) <= _MAX_KIND
            and min(codes) >= 0 and max(codes) <= _MAX_STATUS
        ):  # fmt: skip
            return False
        if any(map(gt, starts, ends)):
            return False
        extras = self._events_and_links(spans, trace_ids, parents)
        if extras is None:
            return False
        described = self._described(spans, scoped)
        if described is None:
            return False
        events, links, follows = extras
        plain = (
            _col(_NAME, spans), kinds, starts, ends, codes,
            _optional(_col(_MESSAGE, statuses)), follows, _optional(_col(_TRACE_STATE, spans)),
            events, links,
        )  # fmt: skip
        columns.add(
            (trace_ids, span_ids, parents), plain, (scoped[2], scoped[3], scoped[1]), described
        )
        return True

    def _events_and_links(
        self, spans: list[Any], trace_ids: list[bytes], parents: list[bytes]
    ) -> tuple[list, list, list] | None:
        """Events JSON, links JSON and follows-from per span (None: a span to reject)."""
        n = len(spans)
        events, links, follows = ["[]"] * n, ["[]"] * n, [False] * n
        has_events, has_links = _col(_EVENTS, spans), _col(_LINKS, spans)
        if not (any(has_events) or any(has_links)):
            return events, links, follows
        try:
            for i in range(n):
                if has_events[i]:
                    events[i] = self._events(has_events[i])
                if has_links[i]:
                    links[i], follows[i] = self._links(has_links[i], trace_ids[i], parents[i])
        except SpanRejected:
            return None
        return events, links, follows

    def _described(self, spans: list[Any], scoped: tuple) -> list | None:
        """[attributes JSON column, *derived columns]; None when an attribute is undecodable."""
        resource, resource_json = scoped[0], scoped[1]
        keys = [(resource_json, *s.attributes[:]) for s in spans]
        found = list(map(self._sets.get, keys))
        for i, hit in enumerate(found):
            if hit is None:
                try:
                    found[i] = self._attribute_set(keys[i], resource)
                except SpanRejected:
                    return None
        return found

    def _attribute_set(self, key: tuple, resource: dict[str, Any]) -> tuple:
        hit = self._sets_old.get(key)
        if hit is None:
            pairs = self._pairs(key[1:])
            attrs = dict(pairs)
            hit = (to_json(attrs) if attrs else "{}", *self._derive(pairs, attrs, resource))
        if sum(map(len, key[1:])) <= _CACHE_MAX_BYTES:
            if len(self._sets) >= _SET_LIMIT:
                self._sets_old, self._sets = self._sets, {}
            self._sets[key] = hit
        return hit

    # -- the span-by-span path -----------------------------------------------------------------

    def _rows(
        self,
        spans: Sequence[Any],
        scoped: tuple,
        where: str,
        out: Decoded,
        source: str,
        strict: bool,
    ) -> list[tuple]:
        """The valid spans as :meth:`_row` tuples; the others rejected (or raised if strict)."""
        row, rows = self._row, []
        for index, span in enumerate(spans):
            try:
                rows.append(row(span, scoped))
            except SpanRejected as exc:
                if strict:
                    raise InputFormatError(source, str(exc), f"{where}[{index}]") from None
                out.rejected.append(f"{where}[{index}]: {exc}")
        return rows

    def _row(self, span: Any, scoped: tuple) -> tuple:
        """One span, checked rule by rule: (raw trace id, raw span id, raw parent or b"",
        the ``PLAIN_COLUMNS`` values…, the described tuple)."""
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
        described = self._attribute_set((scoped[1], *span.attributes[:]), scoped[0])
        links, follows_from = (
            self._links(span.links, trace_id, parent) if span.links else ("[]", False)
        )
        return (
            trace_id,
            span_id,
            b"" if parent == _ZERO_SPAN else parent,
            span.name,
            kind,
            start,
            end,
            code,
            status.message or None,
            follows_from,
            span.trace_state or None,
            self._events(span.events) if span.events else "[]",
            links,
            described,
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

    def _events(self, raw_events: Sequence[bytes]) -> str:
        events = [_message(LeanEvent, raw, f"events[{i}]") for i, raw in enumerate(raw_events)]
        return to_json(
            [
                {"time_ns": e.time, "name": e.name, "attributes": self.attributes(e.attributes)}
                for e in events
            ]
        )

    def _links(
        self, raw_links: Sequence[bytes], trace_id: bytes, parent: bytes
    ) -> tuple[str, bool]:
        """Links as JSON, and whether the parent is a follows-from reference.

        Jaeger/OpenTracing data converted to OTLP marks references with the link attribute
        ``opentracing.ref_type``; a FOLLOWS_FROM parent does not block its child.
        """
        out, follows_from = [], False
        for i, raw in enumerate(raw_links):
            link = _message(LeanLink, raw, f"links[{i}]")
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


# --- column helpers -----------------------------------------------------------------------------


def _col(get: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    return list(map(get, items))


def _valid_ids(ids: list[bytes], width: int, zero: bytes) -> bool:
    return set(map(len, ids)) == {width} and zero not in ids


def _optional(values: list[str]) -> list[str | None]:
    """Empty strings become None (the schema's "absent"); most columns are all absent."""
    return [v or None for v in values] if any(values) else [None] * len(values)


def _message(cls: type, raw: bytes, where: str) -> Any:
    try:
        return cls.FromString(raw)
    except DecodeError as exc:
        raise SpanRejected(f"undecodable {where} ({exc})") from None


def _from_rows(rows: list[tuple], scoped: tuple) -> tuple:
    """:meth:`Decoder._row` tuples as the arguments of :meth:`Columns.add`."""
    columns = list(zip(*rows, strict=True))
    return columns[:3], columns[3:-1], (scoped[2], scoped[3], scoped[1]), list(columns[-1])


def _bad_id(name: str, raw: bytes, width: int) -> str:
    if len(raw) == width:
        return f"{name} is all zeros"
    return f"{name} must be {width} bytes, got {len(raw)}"


DECODER = Decoder()
# Decoding holds the GIL; many request threads decoding at once only convoy on it (each
# pyarrow call that lets the GIL go costs its thread up to a switch interval to get it
# back). One at a time decodes as fast, and the others wait on this lock, not on the GIL.
_ONE_AT_A_TIME = threading.Lock()


def decode(data: bytes, source: str, *, strict: bool = False, first_resource: int = 0) -> Decoded:
    """Decode with the process-wide decoder (its caches warm up across requests)."""
    with _ONE_AT_A_TIME:
        return DECODER.decode(data, source, strict=strict, first_resource=first_resource)
