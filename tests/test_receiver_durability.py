"""What a real ``tracelens serve`` survives: gzip bombs, SIGTERM under load, and kill -9.

Every acknowledged span must be in the store afterwards; memory must not follow a bomb.
"""

from __future__ import annotations

import gzip
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.rpc import status_pb2
from opentelemetry.sdk.trace.export import SpanExportResult
from receiver_support import (
    EXPORT_PATH,
    ServerProcess,
    rss_peak_kib,
    sdk_spans,
    span_ids,
    start_server,
    synthetic_request,
)

from tracelens.access import RemoteReader, open_reader, read_state, state_path
from tracelens.journal import journal_dir, pending_files
from tracelens.store import Store

LIMIT = 8 << 20
RSS_SLACK_KIB = 48 << 10  # far below what inflating the bomb would take (1 GiB / 256 MiB)


def _ids(reader: object) -> set[tuple[str, str]]:
    table = reader.scan(["trace_id", "span_id"])  # type: ignore[attr-defined]
    return set(zip(*(table.column(i).to_pylist() for i in (0, 1)), strict=True))


@pytest.fixture(scope="module")
def bomb_server(tmp_path_factory: pytest.TempPathFactory):
    server = start_server(
        tmp_path_factory.mktemp("bomb") / "b.duckdb", "--max-request-bytes", str(LIMIT)
    )
    yield server
    server.stop()


def _gzip_bomb(inflated: int) -> bytes:
    """``inflated`` zero bytes as concatenated gzip members (valid gzip, ~1/1000 the size)."""
    member = gzip.compress(bytes(16 << 20), compresslevel=9)
    return member * (inflated // (16 << 20))


def test_http_gzip_bomb_is_refused_without_inflating_it(bomb_server: ServerProcess) -> None:
    bomb = _gzip_bomb(1 << 30)
    before = rss_peak_kib(bomb_server.pid)
    request = urllib.request.Request(
        bomb_server.http + "/v1/traces", data=bomb,
        headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=60)
    assert err.value.code == 413
    status = status_pb2.Status.FromString(err.value.read())
    assert "after decompression" in status.message
    assert rss_peak_kib(bomb_server.pid) - before < RSS_SLACK_KIB
    _still_serves(bomb_server)


def test_grpc_gzip_bomb_is_refused_without_inflating_it(bomb_server: ServerProcess) -> None:
    before = rss_peak_kib(bomb_server.pid)
    with grpc.insecure_channel(
        bomb_server.grpc, options=[("grpc.max_send_message_length", -1)]
    ) as channel:
        call = channel.unary_unary(EXPORT_PATH)
        with pytest.raises(grpc.RpcError) as err:
            call(bytes(256 << 20), compression=grpc.Compression.Gzip, timeout=120)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rss_peak_kib(bomb_server.pid) - before < RSS_SLACK_KIB
    _still_serves(bomb_server)


def test_request_over_the_limit_uncompressed_is_refused(bomb_server: ServerProcess) -> None:
    body = bytes(LIMIT + 1)
    request = urllib.request.Request(
        bomb_server.http + "/v1/traces", data=body, headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=60)
    assert err.value.code == 413
    _still_serves(bomb_server)


def _still_serves(server: ServerProcess) -> None:
    body, _ = synthetic_request(5)
    with grpc.insecure_channel(server.grpc) as channel:
        assert channel.unary_unary(EXPORT_PATH)(body, timeout=30) == b""


class Streamer:
    """Client threads exporting until told to stop; counts what was acknowledged."""

    def __init__(self, server: ServerProcess, threads: int, spans_per_request: int) -> None:
        self.server = server
        self.acked: set[tuple[str, str]] = set()
        self.requests = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(spans_per_request,), daemon=True)
            for _ in range(threads)
        ]

    def __enter__(self) -> Streamer:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def wait_for(self, requests: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.requests < requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.requests >= requests, self.failures[:3]

    def _run(self, spans: int) -> None:
        with grpc.insecure_channel(self.server.grpc) as channel:
            call = channel.unary_unary(EXPORT_PATH)
            while not self._stop.is_set():
                body, ids = synthetic_request(spans)
                try:
                    call(body, timeout=30)
                except grpc.RpcError as error:
                    with self._lock:
                        self.failures.append(error.code().name)
                    time.sleep(0.05)
                    continue
                with self._lock:
                    self.acked |= ids
                    self.requests += 1


def test_sigterm_under_load_drains_commits_and_exits_0(tmp_path: Path) -> None:
    server = start_server(tmp_path / "term.duckdb")
    try:
        with Streamer(server, threads=4, spans_per_request=200) as load:
            load.wait_for(10)
            code = server.terminate(60)
        assert code == 0, server.stderr()
    finally:
        server.stop()
    assert not state_path(server.db).exists()
    # Refused while stopping: UNAVAILABLE, or CANCELLED for a call the closing transport never
    # handed over; both are retryable in OTLP, and neither was acknowledged.
    assert set(load.failures) <= {"UNAVAILABLE", "CANCELLED"}, load.failures
    with Store(server.db, read_only=True) as store:
        assert load.acked <= _ids(store)
    assert any("stopped;" in line for line in server.output())


@pytest.mark.parametrize("then", ["restart", "read the file"])
def test_kill_9_loses_no_acknowledged_span(tmp_path: Path, then: str) -> None:
    """The OTel SDK gRPC exporter streams; SIGKILL; every acknowledged span is there, read
    through a restarted server or, with none running, from the file (the journal the killed
    server left is replayed either way)."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    db = tmp_path / "kill.duckdb"
    server = start_server(db)
    batches = [sdk_spans(100, service=f"k{i}") for i in range(40)]
    acked: set[tuple[str, str]] = set()
    killed = threading.Event()

    def stream(part: list) -> None:
        exporter = OTLPSpanExporter(endpoint=server.grpc, insecure=True, timeout=3)
        for spans in part:
            if killed.is_set():  # the export in flight at the kill has finished: enough
                break
            if exporter.export(spans) is SpanExportResult.SUCCESS:
                acked.update(span_ids(spans))
        exporter.shutdown()

    clients = [threading.Thread(target=stream, args=(batches[i::2],)) for i in range(2)]
    try:
        for client in clients:
            client.start()
        deadline = time.monotonic() + 60
        while len(acked) < 1_000 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.kill()  # SIGKILL while the clients are still sending
        killed.set()
        for client in clients:
            client.join(120)
    finally:
        server.stop()
    assert 1_000 <= len(acked) < 4_000, "the kill should land mid-stream"
    assert read_state(db) is not None  # a kill -9 leaves the state file behind
    assert pending_files(db), "the killed server's journal should be left to replay"

    if then == "restart":
        restarted = start_server(db)
        try:
            with open_reader(db) as reader:
                assert isinstance(reader, RemoteReader)
                stored = _ids(reader)
        finally:
            assert restarted.terminate() == 0
    else:
        with open_reader(db) as reader:
            assert isinstance(reader, Store)
            stored = _ids(reader)
    assert acked <= stored, f"{len(acked - stored)} acknowledged spans lost"
    assert not pending_files(db) and not journal_dir(db).exists()
