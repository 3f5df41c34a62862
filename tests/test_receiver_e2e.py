"""A real ``tracelens serve`` fed by the real OpenTelemetry SDK exporters, read back while it runs
(through the read API and ``tracelens explain``) and from the file after it stops."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace.export import SpanExportResult
from receiver_support import (
    EXPORT_PATH,
    ServerProcess,
    export_request,
    otlp_json_body,
    sdk_spans,
    span_ids,
    start_server,
)

from tracelens.access import RemoteReader, open_reader, state_path
from tracelens.store import Store


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    db = tmp_path_factory.mktemp("serve") / "live.duckdb"
    proc = start_server(db)
    yield proc
    proc.stop()


def _grpc(server: ServerProcess, spans: list, compression: Any = None) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint=server.grpc, insecure=True, compression=compression)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()


def _http_protobuf(server: ServerProcess, spans: list, compression: Any = None) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint=server.http + "/v1/traces", compression=compression)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()


def _http_json(server: ServerProcess, spans: list, gzipped: bool = False) -> None:
    body = otlp_json_body(spans)
    headers = {"Content-Type": "application/json"}
    if gzipped:
        body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
    request = urllib.request.Request(server.http + "/v1/traces", data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"] == "application/json"
        assert json.loads(reply.read()) == {}


def _sender(name: str) -> Callable[[ServerProcess, list], None]:
    from opentelemetry.exporter.otlp.proto.http import Compression

    return {
        "grpc": lambda s, spans: _grpc(s, spans),
        "grpc-gzip": lambda s, spans: _grpc(s, spans, grpc.Compression.Gzip),
        "http-protobuf": lambda s, spans: _http_protobuf(s, spans),
        "http-protobuf-gzip": lambda s, spans: _http_protobuf(s, spans, Compression.Gzip),
        "http-json": lambda s, spans: _http_json(s, spans),
        "http-json-gzip": lambda s, spans: _http_json(s, spans, gzipped=True),
    }[name]


TRANSPORTS = [
    "grpc",
    "grpc-gzip",
    "http-protobuf",
    "http-protobuf-gzip",
    "http-json",
    "http-json-gzip",
]
SENT: dict[str, set[tuple[str, str]]] = {}


def _ids(table: Any) -> set[tuple[str, str]]:
    columns = (table.column("trace_id").to_pylist(), table.column("span_id").to_pylist())
    return set(zip(*columns, strict=True))


def _explain(db: str, trace_id: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "tracelens", "explain", "--trace-id", trace_id, "--format", "json",
         "--no-findings", "--db", db],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "lock" not in result.stderr.lower()
    return json.loads(result.stdout)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exported_spans_are_readable_while_serving(server: ServerProcess, transport: str) -> None:
    spans = sdk_spans(15, service=f"svc-{transport}")
    _sender(transport)(server, spans)
    SENT[transport] = span_ids(spans)
    trace_ids = {t for t, _ in SENT[transport]}
    with open_reader(server.db) as reader:
        assert isinstance(reader, RemoteReader)
        for trace_id in trace_ids:
            table = reader.get_trace(trace_id)
            stored = _ids(table)
            assert stored == {ids for ids in SENT[transport] if ids[0] == trace_id}
            assert set(table.column("service").to_pylist()) == {f"svc-{transport}"}
        statements = reader.scan(["db_fingerprint"], trace_ids=sorted(trace_ids)).column(0)
        assert "SELECT * FROM orders WHERE id = ?" in statements.to_pylist()
    trace_id = sorted(trace_ids)[0]
    explained = _explain(server.db, trace_id)
    assert explained["trace_id"] == trace_id
    assert explained["root"]["name"] == "GET /orders/{id}"
    assert explained["span_count"] == sum(1 for t, _ in SENT[transport] if t == trace_id)


def test_errors_and_events_survive_the_trip(server: ServerProcess) -> None:
    spans = sdk_spans(5, service="errors")
    _grpc(server, spans)
    trace_id = format(spans[0].context.trace_id, "032x")
    with open_reader(server.db) as reader:
        rows = reader.get_trace(trace_id).to_pylist()
    failed = [r for r in rows if r["status_code"] == 2]
    assert len(failed) == 1 and failed[0]["status_message"] == "deadlock"
    assert json.loads(failed[0]["events"])[0]["name"] == "retry"
    assert json.loads(failed[0]["events"])[0]["attributes"] == {"attempt": 2}


def test_retried_requests_are_stored_once(server: ServerProcess) -> None:
    spans = sdk_spans(10, service="retries")
    for send in ("grpc", "http-protobuf", "http-json", "grpc"):
        _sender(send)(server, spans)
    with open_reader(server.db) as reader:
        table = reader.scan(["trace_id", "span_id", "service"])
    rows = [r for r in table.to_pylist() if r["service"] == "retries"]
    assert len(rows) == 10 and {(r["trace_id"], r["span_id"]) for r in rows} == span_ids(spans)


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_empty_request_is_a_success(server: ServerProcess, encoding: str) -> None:
    if encoding == "protobuf":
        with grpc.insecure_channel(server.grpc) as channel:
            assert channel.unary_unary(EXPORT_PATH)(b"", timeout=10) == b""
        body, ctype = b"", "application/x-protobuf"
    else:
        body, ctype = b'{"resourceSpans": []}', "application/json"
    request = urllib.request.Request(
        server.http + "/v1/traces", data=body, headers={"Content-Type": ctype}
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        data = reply.read()
    assert data in (b"", b"{}")


def test_partial_success_over_grpc_stores_the_valid_spans(server: ServerProcess) -> None:
    spans = sdk_spans(5, service="partial")
    request = export_request(spans)
    bad = request.resource_spans[0].scope_spans[0].spans
    bad[0].trace_id = b"\x01" * 8
    bad[1].end_time_unix_nano = bad[1].start_time_unix_nano - 1
    with grpc.insecure_channel(server.grpc) as channel:
        reply = channel.unary_unary(EXPORT_PATH)(request.SerializeToString(), timeout=10)
    answer = ExportTraceServiceResponse.FromString(reply)
    assert answer.partial_success.rejected_spans == 2
    assert "trace_id must be 16 bytes" in answer.partial_success.error_message
    with open_reader(server.db) as reader:
        services = reader.scan(["service"]).column(0).to_pylist()
    assert services.count("partial") == 3


def test_stop_then_read_from_the_file(server: ServerProcess) -> None:
    """Last in the module: SIGTERM drains and exits 0, the state file goes, the file has it all."""
    spans = sdk_spans(8, service="last")
    _grpc(server, spans)
    assert server.terminate() == 0, server.stderr()
    assert not state_path(server.db).exists()
    with open_reader(server.db) as reader:
        assert isinstance(reader, Store)
        stored = _ids(reader.scan(["trace_id", "span_id"]))
    for sent in [span_ids(spans), *SENT.values()]:
        assert sent <= stored
    trace_id = format(spans[0].context.trace_id, "032x")
    assert _explain(server.db, trace_id)["span_count"] == 5


def test_serve_is_a_tracelens_subcommand(tmp_path: Path) -> None:
    proc = start_server(tmp_path / "cli.duckdb", module="tracelens serve")
    try:
        _grpc(proc, sdk_spans(3))
    finally:
        assert proc.terminate() == 0
    with Store(tmp_path / "cli.duckdb", read_only=True) as store:
        assert store.count_spans() == 3


def test_a_second_server_on_the_same_store_is_refused(tmp_path: Path) -> None:
    first = start_server(tmp_path / "one.duckdb")
    try:
        with pytest.raises(AssertionError, match=f"already served by pid {first.pid}"):
            start_server(tmp_path / "one.duckdb").stop()  # stop() only if it wrongly started
        port = first.grpc.rsplit(":", 1)[1]
        with pytest.raises(AssertionError, match="cannot listen for OTLP/gRPC"):
            start_server(tmp_path / "two.duckdb", "--grpc-port", port).stop()
        assert not (tmp_path / "two.duckdb").exists()  # no empty store left behind
    finally:
        assert first.terminate() == 0
