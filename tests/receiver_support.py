"""Helpers for the receiver tests: a real ``tracelens serve`` subprocess, SDK spans, OTLP bodies."""

from __future__ import annotations

import base64
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from tracelens.errors import StoreError
from tracelens.store import WriteStats

STARTUP_TIMEOUT_S = 60.0
_STARTUP = re.compile(r"OTLP/gRPC (\S+), OTLP/HTTP (https?://[^/\s]+)/v1/traces, store (.+) \(")
EXPORT_PATH = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@dataclass
class ServerProcess:
    """A running ``tracelens serve``; ``grpc`` is host:port, ``http`` the base URL."""

    proc: subprocess.Popen
    grpc: str
    http: str
    db: str
    stderr_path: Path
    lines: queue.Queue = field(default_factory=queue.Queue)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait: the exit code."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        """For finalizers: SIGTERM, then SIGKILL if it does not exit in time."""
        try:
            self.terminate(30)
        except subprocess.TimeoutExpired:
            self.kill()

    def output(self) -> list[str]:
        out = []
        while not self.lines.empty():
            out.append(self.lines.get_nowait())
        return out


def start_server(
    db: Path | str, *args: str, env: dict[str, str] | None = None, module: str | None = None
) -> ServerProcess:
    """Start ``serve`` on free loopback ports and wait for its startup line."""
    db = str(db)
    stderr_path = Path(f"{db}.stderr.{time.monotonic_ns()}")
    command = [sys.executable, "-m", *(module or "tracelens.receiver.command").split()]
    command += ["--db", db, "--grpc-port", "0", "--http-port", "0", *args]
    full_env = {**os.environ, **(env or {})}
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=err, text=True, env=full_env
        )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(proc, lines), daemon=True).start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        match = _STARTUP.search(line or "")
        if match:
            return ServerProcess(proc, match.group(1), match.group(2), db, stderr_path, lines)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    raise AssertionError(f"serve did not start: {stderr_path.read_text(errors='replace')}")


def _pump(proc: subprocess.Popen, lines: queue.Queue) -> None:
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.put(line)
    lines.put(None)


class FakeStore:
    """Records commits; ``gate`` holds a commit until set; ``poison`` rows fail their commit."""

    def __init__(self) -> None:
        self.commits: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.poison: set[str] = set()

    def write(self, batches: list[pa.RecordBatch]) -> WriteStats:
        self.entered.set()
        assert self.gate.wait(10)
        rows = sum(b.num_rows for b in batches)
        names = {n for b in batches for n in b.column("name").to_pylist()}
        if names & self.poison:
            raise StoreError("disk full")
        self.commits.append(rows)
        return WriteStats(rows, rows)


# --- spans from the real OpenTelemetry SDK ---------------------------------------------


def sdk_spans(count: int, service: str = "shop", *, children_per_root: int = 4) -> list[Any]:
    """``count`` finished SDK spans (ReadableSpan) in traces of 1 root + N children."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, Status, StatusCode

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests.receiver", "1.0")
    made = 0
    while made < count:
        with tracer.start_as_current_span(
            "GET /orders/{id}",
            kind=SpanKind.SERVER,
            attributes={"http.request.method": "GET", "http.route": "/orders/{id}",
                        "http.response.status_code": 200},
        ):  # fmt: skip
            made += 1
            for i in range(min(children_per_root, count - made)):
                with tracer.start_as_current_span(
                    "SELECT orders",
                    kind=SpanKind.CLIENT,
                    attributes={"db.system": "postgresql", "db.name": "shop",
                                "db.statement": f"SELECT * FROM orders WHERE id = {i}"},
                ) as child:  # fmt: skip
                    if i == 1:
                        child.add_event("retry", {"attempt": 2})
                        child.set_status(Status(StatusCode.ERROR, "deadlock"))
                made += 1
    provider.shutdown()
    return list(memory.get_finished_spans())


def span_ids(spans: list[Any]) -> set[tuple[str, str]]:
    return {(format(s.context.trace_id, "032x"), format(s.context.span_id, "016x")) for s in spans}


def export_request(spans: list[Any]) -> Any:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    return encode_spans(spans)


def otlp_json_body(spans: list[Any]) -> bytes:
    """OTLP/JSON as the specification writes it: hex ids, integer enums, camelCase keys.

    The installed ``opentelemetry-exporter-otlp-proto-http`` has no JSON mode, so tests encode
    with the SDK's encoder and map to JSON with ``json_format``, fixing ids to hex.
    """
    import json

    from google.protobuf import json_format

    doc = json_format.MessageToDict(export_request(spans), use_integers_for_enums=True)
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                _hex_ids(span)
                for link in span.get("links", []):
                    _hex_ids(link)
    return json.dumps(doc).encode()


def _hex_ids(obj: dict) -> None:
    for key in ("traceId", "spanId", "parentSpanId"):
        if obj.get(key):
            obj[key] = base64.b64decode(obj[key]).hex()


def rss_peak_kib(pid: int) -> int:
    """The process's peak resident set (VmHWM) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def synthetic_request(spans: int, service: str = "load") -> tuple[bytes, set[tuple[str, str]]]:
    """A serialized ExportTraceServiceRequest of ``spans`` fresh spans, and their ids."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value=service))
    )
    scope = rs.scope_spans.add()
    ids = set()
    trace_id = os.urandom(16)
    now = time.time_ns()
    for i in range(spans):
        span = scope.spans.add(trace_id=trace_id, span_id=os.urandom(8), name=f"op-{i % 7}")
        span.start_time_unix_nano, span.end_time_unix_nano = now + i, now + i + 1_000
        span.attributes.append(KeyValue(key="i", value=AnyValue(int_value=i)))
        ids.add((trace_id.hex(), span.span_id.hex()))
    return request.SerializeToString(), ids


def decoded(count: int, name: str = "op", service: str = "shop") -> Any:
    """``count`` SDK spans named ``name``, exported as one request and decoded (``Decoded``)."""
    from tracelens.receiver.decode import Decoder

    request = export_request(sdk_spans(count, service=service))
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                s.name = name
    return Decoder().decode(request.SerializeToString(), "test")
