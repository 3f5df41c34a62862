"""The fast OTLP protobuf decoder: same rows as the reference conversion, strict and lenient."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from receiver_support import export_request, sdk_spans

from tracelens import semconv
from tracelens.errors import InputFormatError
from tracelens.model import SPAN_SCHEMA, SpanBatchBuilder
from tracelens.receiver.decode import DERIVE_KEYS, Decoder, LeanRequest, any_value

TRACE = bytes(range(1, 17))
SPAN = bytes(range(1, 9))


def _kv(key: str, value: Any) -> KeyValue:
    return KeyValue(key=key, value=_any(value))


def _any(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, list):
        out = AnyValue()
        out.array_value.values.extend(_any(v) for v in value)
        return out
    if isinstance(value, dict):
        out = AnyValue()
        out.kvlist_value.values.extend(_kv(k, v) for k, v in value.items())
        return out
    return AnyValue(string_value=value)


def _request(*spans: dict[str, Any], resource: dict[str, Any] | None = None) -> bytes:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend(
        _kv(k, v)
        for k, v in (resource if resource is not None else {"service.name": "svc"}).items()
    )
    ss = rs.scope_spans.add()
    ss.scope.name, ss.scope.version = "lib", "1.2"
    for fields in spans:
        span = ss.spans.add()
        attrs = fields.pop("attributes", {})
        span.trace_id, span.span_id = TRACE, SPAN
        span.start_time_unix_nano, span.end_time_unix_nano = 1_000, 2_000
        span.name = "op"
        for key, value in fields.items():
            if key == "status":
                span.status.code, span.status.message = value
            elif key == "links":
                for link in value:
                    span.links.add(**link)
            else:
                setattr(span, key, value)
        span.attributes.extend(_kv(k, v) for k, v in attrs.items())
    return request.SerializeToString()


def _reference(data: bytes) -> pa.Table:
    """The slow, obvious conversion through the generated classes and SpanBatchBuilder."""
    builder = SpanBatchBuilder()
    request = ExportTraceServiceRequest.FromString(data)
    for rs in request.resource_spans:
        resource = {kv.key: any_value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                builder.add(
                    trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                    parent_span_id=s.parent_span_id.hex() or None, name=s.name, kind=s.kind,
                    start_ns=s.start_time_unix_nano, end_ns=s.end_time_unix_nano,
                    attributes={kv.key: any_value(kv.value) for kv in s.attributes},
                    resource=resource, status_code=s.status.code,
                    status_message=s.status.message, trace_state=s.trace_state,
                    scope_name=ss.scope.name, scope_version=ss.scope.version,
                    events=[{"time_ns": e.time_unix_nano, "name": e.name,
                             "attributes": {kv.key: any_value(kv.value) for kv in e.attributes}}
                            for e in s.events],
                    links=[{"trace_id": ln.trace_id.hex(), "span_id": ln.span_id.hex(),
                            "trace_state": ln.trace_state or None,
                            "attributes": {kv.key: any_value(kv.value) for kv in ln.attributes}}
                           for ln in s.links],
                )  # fmt: skip
    return pa.Table.from_batches([builder.flush()])


def _decoded(data: bytes, decoder: Decoder | None = None) -> pa.Table:
    out = (decoder or Decoder()).decode(data, "test")
    assert not out.rejected
    return pa.Table.from_batches(out.batches, schema=SPAN_SCHEMA)


def test_sdk_export_request_matches_the_reference_conversion() -> None:
    data = export_request(sdk_spans(60)).SerializeToString()
    decoder = Decoder()
    for _ in range(2):  # the second pass runs on warm caches
        assert _decoded(data, decoder).equals(_reference(data))


def test_every_attribute_type_matches_the_reference() -> None:
    attrs = {
        "s": "text", "i": -(2**63), "big": 2**63 - 1, "f": 1.5, "b": True, "raw": b"\x00\xff",
        "list": ["a", 1, 2.5, False], "map": {"k": "v", "n": {"deep": [1, 2]}},
        "empty": None, "db.system": "redis", "db.statement": "GET user:42",
        "http.request.method": "GET", "rpc.method": "Get", "rpc.service": "Users",
    }  # fmt: skip
    data = _request(
        {"attributes": attrs, "kind": 3, "status": (2, "boom"), "trace_state": "a=b"},
        {"attributes": {"http.response.status_code": 503}, "parent_span_id": SPAN[::-1]},
        resource={"service.name": "cache", "tags": ["x", "y"]},
    )
    table = _decoded(data)
    assert table.equals(_reference(data))
    row = table.to_pylist()[0]
    assert row["db_fingerprint"] == "GET ?" and row["rpc_method"] == "Users/Get"


def test_events_and_links_are_kept() -> None:
    request = ExportTraceServiceRequest.FromString(_request({}))
    span = request.resource_spans[0].scope_spans[0].spans[0]
    event = span.events.add(time_unix_nano=1_500, name="exception")
    event.attributes.append(_kv("exception.type", "ValueError"))
    link = span.links.add(trace_id=TRACE[::-1], span_id=SPAN[::-1], trace_state="k=v")
    link.attributes.append(_kv("opentracing.ref_type", "child_of"))
    data = request.SerializeToString()
    assert _decoded(data).equals(_reference(data))


def test_follows_from_parent_link_marks_the_span() -> None:
    parent = SPAN[::-1]
    link = {
        "trace_id": TRACE,
        "span_id": parent,
        "attributes": [_kv("opentracing.ref_type", "follows_from")],
    }
    data = _request({"parent_span_id": parent, "links": [link]})
    assert _decoded(data).column("follows_from").to_pylist() == [True]


def test_derived_columns_are_cached_per_service() -> None:
    decoder = Decoder()
    same_attrs = {"db.system": "postgresql", "db.statement": "SELECT 1"}
    first = _decoded(
        _request({"attributes": dict(same_attrs)}, resource={"service.name": "a"}), decoder
    )
    second = _decoded(_request({"attributes": dict(same_attrs)}, resource={}), decoder)
    assert first.column("service").to_pylist() == ["a"]
    assert second.column("service").to_pylist() == [semconv.UNKNOWN_SERVICE]


INVALID = [
    ({"trace_id": TRACE[:8]}, "trace_id must be 16 bytes, got 8"),
    ({"trace_id": bytes(16)}, "trace_id is all zeros"),
    ({"span_id": SPAN[:4]}, "span_id must be 8 bytes, got 4"),
    ({"span_id": bytes(8)}, "span_id is all zeros"),
    ({"parent_span_id": b"\x01\x02"}, "parent_span_id must be 8 bytes, got 2"),
    ({"start_time_unix_nano": 5_000}, "end_time_unix_nano 2000 is before start 5000"),
    ({"kind": 9}, "kind 9 is not a SpanKind"),
    ({"status": (7, "")}, "status.code 7 is not a StatusCode"),
    ({"links": [{"trace_id": TRACE, "span_id": b"\x01"}]}, "links[0] needs a 16-byte trace_id"),
]


@pytest.mark.parametrize(("fields", "problem"), INVALID, ids=[p for _, p in INVALID])
def test_invalid_span_is_rejected_lenient_and_fails_strict(fields: dict, problem: str) -> None:
    data = _request({"name": "good"}, dict(fields), {"name": "good too", "span_id": SPAN[::-1]})
    out = Decoder().decode(data, "req")
    assert out.spans == 3 and out.accepted == 2
    assert len(out.rejected) == 1
    assert out.rejected[0].startswith("resource_spans[0].scope_spans[0].spans[1]: ")
    assert problem in out.rejected[0]
    assert sum(b.num_rows for b in out.batches) == 2
    with pytest.raises(InputFormatError) as err:
        Decoder().decode(data, "req.pb", strict=True)
    assert err.value.where == "resource_spans[0].scope_spans[0].spans[1]"
    assert problem in err.value.problem


def test_parent_of_all_zeros_means_root() -> None:
    data = _request({"parent_span_id": bytes(8)})
    assert _decoded(data).column("parent_span_id").to_pylist() == [None]


def test_missing_end_time_gives_a_zero_length_span() -> None:
    data = _request({"end_time_unix_nano": 0})
    row = _decoded(data).to_pylist()[0]
    assert (row["start_ns"], row["end_ns"], row["duration_ns"]) == (1_000, 1_000, 0)


@pytest.mark.parametrize(
    "garbage",
    [b"\xff\xff\xff", b"\x0a\x05abc", b"\x0a\x02\x12\x08"],
    ids=["tag", "short", "nested"],
)
def test_undecodable_bytes_raise_input_format_error(garbage: bytes) -> None:
    with pytest.raises(InputFormatError, match="not an OTLP protobuf"):
        Decoder().decode(garbage, "req")


def test_empty_request_has_no_spans() -> None:
    out = Decoder().decode(b"", "req")
    assert (out.spans, out.batches, out.rejected) == (0, [], [])


_VALUES = st.one_of(
    st.text(max_size=12), st.integers(-(2**63), 2**63 - 1), st.booleans(),
    st.sampled_from(["postgresql", "redis", "GET", "SELECT * FROM t WHERE id = 7", "200", "x"]),
)  # fmt: skip
_KEYS = st.one_of(st.sampled_from(sorted(DERIVE_KEYS | {"service.name"})), st.text(max_size=8))


@settings(max_examples=300, deadline=None)
@given(attrs=st.dictionaries(_KEYS, _VALUES, max_size=12), resource=st.dictionaries(_KEYS, _VALUES))
def test_derive_reads_only_the_cached_keys(attrs: dict, resource: dict) -> None:
    """The decoder caches derived columns on DERIVE_KEYS and service.name: that must be all."""
    subset = {k: v for k, v in attrs.items() if k in DERIVE_KEYS}
    service = {"service.name": resource["service.name"]} if "service.name" in resource else {}
    assert semconv.derive(attrs, resource) == semconv.derive(subset, service)


def test_undecodable_resource_attribute_fails_the_request() -> None:
    lean = LeanRequest.FromString(_request({}))
    lean.resource_spans[0].resource.attributes.append(b"\x0a\x05ab")  # key cut short
    with pytest.raises(InputFormatError) as err:
        Decoder().decode(lean.SerializeToString(), "req")
    assert err.value.where == "resource_spans[0].resource"
    assert "undecodable attribute" in err.value.problem


@pytest.mark.parametrize("raw", [b"\x0a\x05ab", b"\x0a\x02\xff\xfe"], ids=["short", "utf8"])
def test_undecodable_span_attribute_rejects_only_that_span(raw: bytes) -> None:
    lean = LeanRequest.FromString(_request({}, {"span_id": SPAN[::-1]}))
    lean.resource_spans[0].scope_spans[0].spans[0].attributes.append(raw)
    out = Decoder().decode(lean.SerializeToString(), "req")
    assert out.accepted == 1 and "undecodable attribute" in out.rejected[0]


def test_derive_keys_are_exactly_the_attributes_semconv_reads() -> None:
    slots = getattr(semconv, "_SLOTS", None)  # derive_row's key table, when it has one
    if slots is None:
        pytest.skip("semconv no longer exposes its key table; the property test still guards")
    assert set(slots) == DERIVE_KEYS


# --- the column-wise path and the span-by-span path give the same rows ----------------------


def _valid_rows_of(data: bytes, drop: set[tuple[int, int, int]]) -> bytes:
    """``data`` without the spans at (resource, scope, span) positions ``drop``."""
    request = ExportTraceServiceRequest.FromString(data)
    for ri, rs in enumerate(request.resource_spans):
        for si, ss in enumerate(rs.scope_spans):
            kept = [s for i, s in enumerate(ss.spans) if (ri, si, i) not in drop]
            del ss.spans[:]
            ss.spans.extend(kept)
    return request.SerializeToString()


def _mixed_request() -> bytes:
    """Three resources × two scopes; scope (1, 0) holds an invalid span, scope (2, 1) a span
    without an end time (normalized span by span), the others go column-wise."""
    request = export_request(sdk_spans(36))
    base = request.resource_spans[0]
    for copy in range(2):
        rs = request.resource_spans.add()
        rs.CopyFrom(base)
        rs.resource.attributes[0].value.string_value = f"svc-{copy}"
    for rs in request.resource_spans:
        extra = rs.scope_spans.add()
        extra.CopyFrom(rs.scope_spans[0])
        extra.scope.name = "second"
    request.resource_spans[1].scope_spans[0].spans[2].span_id = bytes(8)
    request.resource_spans[2].scope_spans[1].spans[3].end_time_unix_nano = 0
    return request.SerializeToString()


def test_scopes_decoded_span_by_span_match_the_reference() -> None:
    data = _mixed_request()
    out = Decoder().decode(data, "mixed")
    assert out.rejected == ["resource_spans[1].scope_spans[0].spans[2]: span_id is all zeros"]
    table = pa.Table.from_batches(out.batches, schema=SPAN_SCHEMA)
    assert table.equals(_reference(_valid_rows_of(data, {(1, 0, 2)})))


def test_blocks_split_at_batch_rows_and_keep_the_order(monkeypatch: pytest.MonkeyPatch) -> None:
    from tracelens.receiver import decode as decode_module

    monkeypatch.setattr(decode_module, "BATCH_ROWS", 40)
    data = export_request(sdk_spans(150)).SerializeToString()
    request = ExportTraceServiceRequest.FromString(data)
    scope = request.resource_spans[0].scope_spans[0]
    spans = list(scope.spans)
    del scope.spans[:]
    for start in range(0, len(spans), 30):  # scopes of 30 spans: blocks of 60 rows
        added = request.resource_spans[0].scope_spans.add()
        added.scope.CopyFrom(scope.scope)
        added.spans.extend(spans[start : start + 30])
    data = request.SerializeToString()
    out = Decoder().decode(data, "t")
    assert [block.num_rows for block in out.blocks] == [60, 60, 30]
    assert pa.Table.from_batches(out.batches, schema=SPAN_SCHEMA).equals(_reference(data))


def test_undecodable_event_rejects_only_that_span() -> None:
    lean = LeanRequest.FromString(_request({}, {"span_id": SPAN[::-1]}))
    lean.resource_spans[0].scope_spans[0].spans[1].events.append(b"\x12\x05ab")  # name cut short
    out = Decoder().decode(lean.SerializeToString(), "req")
    assert out.accepted == 1 and "undecodable events[0]" in out.rejected[0]
