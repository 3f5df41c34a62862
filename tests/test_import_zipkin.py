"""Zipkin v2/v1 importer: corpus conformance, shared client/server halves, v1 annotations."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pyarrow as pa
import pytest
from corpus_support import corpus_files, manifest_spans, other_format_files

from tracelens.errors import InputFormatError
from tracelens.importers import xray, zipkin
from tracelens.model import Span, SpanKind, StatusCode, spans_from_table

DATA = Path(__file__).resolve().parent / "data" / "zipkin"


def load_table(path: Path) -> pa.Table:
    with path.open("rb") as stream:
        return pa.Table.from_batches(list(zipkin.read(stream, str(path))))


def load(path: Path) -> list[Span]:
    return spans_from_table(load_table(path))


def load_bytes(data: bytes, source: str = "inline.json") -> list[Span]:
    return spans_from_table(pa.Table.from_batches(list(zipkin.read(io.BytesIO(data), source))))


def by_name_kind(spans: list[Span]) -> dict[tuple[str, int], Span]:
    return {(s.name, s.kind): s for s in spans}


# --- corpus -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", corpus_files("zipkin-json"), ids=lambda p: p.stem)
def test_corpus_file_imports_with_manifest_count(corpus: Path, path: Path) -> None:
    # Every corpus file matches MANIFEST: shared halves are two rows, duplicates are kept.
    table = load_table(path)
    assert table.num_rows == manifest_spans()[f"zipkin-json/{path.name}"]
    assert set(table.column("trace_id").to_pylist()) != {None}
    assert all(len(s) == 16 for s in table.column("span_id").to_pylist())


@pytest.mark.parametrize("path", corpus_files("zipkin-json"), ids=lambda p: p.stem)
def test_corpus_file_is_sniffed_as_zipkin_only(corpus: Path, path: Path) -> None:
    head = path.read_bytes()[: 64 * 1024]
    assert zipkin.sniff(head, path.name)
    assert not xray.sniff(head, path.name)


@pytest.mark.parametrize(
    "path", other_format_files("zipkin-json"), ids=lambda p: f"{p.parent.name}/{p.stem}"
)
def test_other_formats_are_not_sniffed_as_zipkin(corpus: Path, path: Path) -> None:
    assert not zipkin.sniff(path.read_bytes()[: 64 * 1024], path.name)


def test_skew_file_keeps_server_that_starts_before_its_client(corpus: Path) -> None:
    spans = load(corpus / "zipkin-json" / "zipkin-lens_skew.json")
    client = by_name_kind(spans)[("post", SpanKind.CLIENT)]
    server = by_name_kind(spans)[("post", SpanKind.SERVER)]
    assert client.span_id == "74280ae0c10d8062"
    assert server.span_id == zipkin.server_half_id("74280ae0c10d8062")
    assert server.parent_span_id == client.span_id
    assert server.start_ns < client.start_ns  # the skew is preserved for the call tree to report
    assert (client.service, server.service) == ("servicea", "serviceb")
    async_child = by_name_kind(spans)[("async", SpanKind.INTERNAL)]
    assert async_child.parent_span_id == server.span_id  # it ran in serviceb, inside the server


def test_grafana_shared_pair_is_split_into_client_and_server(corpus: Path) -> None:
    spans = load(corpus / "zipkin-json" / "grafana_zipkin_upload_mockJsonResponse.json")
    by_kind = {(s.service, s.kind): s for s in spans}
    root = by_kind[("frontend", SpanKind.SERVER)]
    client = by_kind[("frontend", SpanKind.CLIENT)]
    server = by_kind[("backend", SpanKind.SERVER)]
    assert root.parent_span_id is None
    assert client.parent_span_id == root.span_id == "efe9cb8857f68c8f"
    assert server.parent_span_id == client.span_id == "8608dc6ce5cafe8e"
    assert server.attributes["zipkin.shared"] is True


def test_fragments_land_after_the_complete_row_so_the_store_keeps_it(
    corpus: Path, db_path: Path
) -> None:
    from tracelens.store import Store

    path = corpus / "zipkin-json" / "zipkin-lens_smartthings-mobile-web-install.json"
    with Store(db_path) as store, path.open("rb") as stream:
        stats = store.write(zipkin.read(stream, str(path)))
    assert stats.received == 1041
    # Reopened: reading on the connection that just wrote trips an unfinished DuckDB result.
    with Store(db_path, read_only=True) as store:
        stored = spans_from_table(store.get_trace("000000000000000014b60fd9ae504820"))
    server_half = zipkin.server_half_id("a0dc23f22c4fee3f")
    (row,) = [s for s in stored if s.span_id == server_half]
    assert row.kind == SpanKind.SERVER and row.service == "platformapi"
    assert "zipkin.untimed" not in row.attributes and row.duration_ns == 558_631_000
    # Five pusher servers answered one bouncer client: each half has its own id, and the
    # children follow their own host.
    pusher = [s for s in stored if s.parent_span_id == "cbab506b53f336fc"]
    assert {s.service for s in pusher} == {"pusher"} and len(pusher) == 5
    child = next(s for s in stored if s.span_id == "c1c06fd706fca9cb")
    home = next(s for s in pusher if s.span_id == child.parent_span_id)
    assert home.attributes["network.local.address"] == "10.6.88.250"


def test_kafka_error_tags_set_status(corpus: Path) -> None:
    spans = load(corpus / "zipkin-json" / "zipkin-lens_messaging-kafka.json")
    errors = [s for s in spans if s.is_error]
    assert len(errors) == 3
    assert {s.status_message for s in errors} == {"some error", None}  # one tag is empty
    assert {s.kind for s in spans} >= {SpanKind.PRODUCER, SpanKind.CONSUMER}


def test_v1_single_batch_timing_kind_and_shared_halves(corpus: Path) -> None:
    spans = load(corpus / "zipkin-json" / "v1_otelcol_zipkin_v1_single_batch.json")
    by_id = {(s.span_id, s.kind): s for s in spans}
    front = by_id[("0ed2e63cbe71f5a8", SpanKind.CLIENT)]
    server1 = by_id[(zipkin.server_half_id("0ed2e63cbe71f5a8"), SpanKind.SERVER)]
    assert front.service == "front-proxy" and front.parent_span_id is None
    assert (front.start_ns, front.duration_ns) == (1544805927446743000, 12956000)
    assert server1.service == "service1" and server1.parent_span_id == front.span_id
    assert server1.start_ns == 1544805927448081000  # sr
    assert server1.end_ns == 1544805927460102000  # ss
    assert [e["name"] for e in server1.events] == ["custom time event"]
    stock_client = by_id[("f9ebb6e64880612a", SpanKind.CLIENT)]
    assert stock_client.parent_span_id == server1.span_id  # it ran inside service1's server
    stock_server = by_id[(zipkin.server_half_id("f9ebb6e64880612a"), SpanKind.SERVER)]
    assert stock_server.service == "service2"
    assert stock_server.http_status == 200 and stock_server.attributes["processed"] == "1.5"
    local = by_id[("fe351a053fbcac1f", SpanKind.INTERNAL)]
    assert local.service == "unknown_service" and local.parent_span_id == front.span_id


def test_v1_file_named_v2_notimestamp_is_read_as_v1(corpus: Path) -> None:
    (span,) = load(corpus / "zipkin-json" / "v1_otelcol_zipkin_v2_notimestamp.json")
    assert span.kind == SpanKind.SERVER and span.service == "baz"
    assert (span.start_ns, span.duration_ns) == (1615821510040000000, 1_000_000)
    assert span.http_method == "GET" and span.attributes["network.local.port"] == 8080


# --- hand-written inputs ----------------------------------------------------------------------


def test_shared_rpc_split_reparents_children_by_service() -> None:
    spans = {s.name + "/" + str(s.kind): s for s in load(DATA / "shared_rpc.json")}
    client = spans[f"post /charge/{SpanKind.CLIENT}"]
    server = spans[f"post /charge/{SpanKind.SERVER}"]
    expected = hashlib.blake2b(b"0020000000000001:server", digest_size=8).hexdigest()
    assert server.span_id == expected and server.parent_span_id == client.span_id
    assert server.service == "payments" and client.service == "frontend"
    assert client.peer == "payments" and client.attributes["server.address"] == "10.0.0.2"
    assert server.attributes["client.address"] == "10.0.0.1"
    assert server.status_code == StatusCode.ERROR and server.status_message == "card declined"
    assert client.events == [{"time_ns": 1700000000010500000, "name": "ws", "attributes": {}}]
    query = spans[f"select/{SpanKind.CLIENT}"]
    assert query.parent_span_id == server.span_id
    assert query.db_statement == "select * from cards where id = 42"
    assert query.db_fingerprint == "select * from cards where id = ?"
    timer = spans[f"retry-timer/{SpanKind.INTERNAL}"]
    assert timer.parent_span_id == client.span_id  # frontend work stays under the client half
    assert timer.duration_ns == 0 and timer.attributes["zipkin.debug"] is True


def test_v1_object_with_both_sides_becomes_two_rows() -> None:
    spans = load(DATA / "v1_combined.json")
    assert len(spans) == 4
    by = by_name_kind(spans)
    client = by[("get /stock", SpanKind.CLIENT)]
    server = by[("get /stock", SpanKind.SERVER)]
    assert client.span_id == "6b221d5bc9e6496c" and client.service == "shop"
    assert (client.start_ns, client.duration_ns) == (1600000000000000000, 40_000_000)
    assert server.span_id == zipkin.server_half_id("6b221d5bc9e6496c")
    assert server.parent_span_id == client.span_id and server.service == "inventory"
    assert (server.start_ns, server.duration_ns) == (1600000000004000000, 30_000_000)
    assert [e["name"] for e in server.events] == ["cache miss"] and client.events == []
    assert server.is_error and server.status_message == "timeout upstream"
    assert not client.is_error and client.http_url == "http://inventory/stock"
    assert client.peer == "inventory" and server.peer == "shop"  # each side is the other's peer
    local = by[("load-rows", SpanKind.INTERNAL)]
    assert local.service == "inventory" and local.parent_span_id == server.span_id
    assert local.attributes["lc"] == "jdbc" and local.attributes["rows"] == "12"
    audit = by[("audit", SpanKind.CLIENT)]
    assert audit.parent_span_id == client.span_id and audit.duration_ns == 0
    assert audit.peer == "audit-log" and audit.attributes["server.port"] == 5514


def test_array_of_arrays_and_64_bit_trace_ids() -> None:
    data = b'[[{"traceId": "1234abcd", "id": "1", "name": "a", "timestamp": 5, "duration": 2}]]'
    (span,) = load_bytes(data)
    assert span.trace_id == "0" * 24 + "1234abcd" and span.span_id == "0" * 15 + "1"
    assert (span.start_ns, span.end_ns, span.kind) == (5000, 7000, SpanKind.INTERNAL)
    assert span.service == "unknown_service"


def test_untimed_fragment_borrows_the_time_of_its_span() -> None:
    data = (
        b'[{"traceId": "ab", "id": "0a", "kind": "SERVER", "name": "s", "timestamp": 100,'
        b' "duration": 50, "localEndpoint": {"serviceName": "svc"}},'
        b' {"traceId": "ab", "id": "0a", "name": "s", "localEndpoint": {"serviceName": "svc"},'
        b' "tags": {"late": "yes"}}]'
    )
    first, second = load_bytes(data)
    assert first.kind == SpanKind.SERVER and "zipkin.untimed" not in first.attributes
    assert second.start_ns == 100_000 and second.duration_ns == 0
    assert second.attributes["zipkin.untimed"] is True


def test_otel_status_and_scope_tags_map_back() -> None:
    data = (
        b'[{"traceId": "ab", "id": "0b", "name": "x", "timestamp": 1, "duration": 1,'
        b' "tags": {"otel.status_code": "ERROR", "otel.status_description": "boom",'
        b' "otel.scope.name": "io.lib", "otel.scope.version": "1.2"}}]'
    )
    (span,) = load_bytes(data)
    assert span.status_code == StatusCode.ERROR and span.status_message == "boom"
    assert "otel.status_code" not in span.attributes
    with io.BytesIO(data) as stream:
        batch = next(zipkin.read(stream, "x.json"))
    assert batch.column("scope_name").to_pylist() == ["io.lib"]


@pytest.mark.parametrize(
    ("data", "where", "problem"),
    [
        (b'[{"traceId": "ab", "id": "0a",\n "name": }]', "line 2 column", "invalid JSON"),
        (b'[{"traceId": "ab", "name": "x"}]', "[0]", "missing field 'id'"),
        (b'[{"traceId": "ab", "id": "0a"}, 7]', "[1]", "expected a span object"),
        (b'[[{"traceId": "ab", "id": "zz!"}]]', "[0][0]", "neither hex nor base64"),
        (b'[{"traceId": "ab", "id": "0a", "timestamp": "soon"}]', "[0]", "microseconds"),
        (b'{"traceId": "ab"}', "top level", "JSON array"),
    ],
)
def test_bad_input_names_file_and_place(data: bytes, where: str, problem: str) -> None:
    with pytest.raises(InputFormatError) as info:
        load_bytes(data, "bad.json")
    assert info.value.source == "bad.json"
    assert where in (info.value.where or "") and problem in info.value.problem
    assert str(info.value).startswith("bad.json at ")


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b'  [ {"traceId": "ab", "id": "0a"}', True),
        (b'[{"traceId": "ab", "id": "0a", "name": "lo', True),  # truncated head still sniffs
        (b'[{"traceId": "ab", "annotations": []}]', True),
        (b'[{"traceID": "ab", "spanID": "0a"}]', False),  # Jaeger span array
        (b'[{"traceId": "ab", "spanId": "0a"}]', False),  # OTLP-shaped spans
        (b'{"resourceSpans": []}', False),
        (b"[]", False),
    ],
)
def test_sniff(head: bytes, expected: bool) -> None:
    assert zipkin.sniff(head, "x.json") is expected
