"""Ingest benchmark for ``tracelens serve``: durable spans/s, Export latency, server CPU and RSS.

Starts a real server (subprocess, temporary DB), then a load generator in another process
that sends pre-serialized ``ExportTraceServiceRequest``s (500 spans each, realistic
attributes) over several gRPC channels for a bounded time. Span and trace ids are rewritten
in the pre-serialized bytes for every send, so nothing is deduplicated away. Reports:

- durable spans/s: spans counted in the store afterwards / run time;
- Export latency p50/p99 (client side), errors by gRPC code;
- server CPU (cores used) and peak RSS (VmHWM), RSS sampled every 0.5 s;
- in the same run: the parse-only ceiling (``ParseFromString``) and the decoder-only rate
  over the same requests;
- a second run at half the achieved rate with its latency p50/p99.

    python benchmarks/ingest.py [--seconds 20] [--streams 64] [--channels 4] [--json out.json]

Concurrency bounds what a run can show (Little's law): with 500-span requests, 16 calls in
flight hold 8,000 spans, and a commit of that many takes ~100 ms here, so the default is 64
(a Collector fanning in many SDKs keeps as many calls in flight).
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import random
import re
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SPANS_PER_REQUEST = 500
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
SERVICES = ("frontend", "checkout", "cart", "payment")
STATEMENTS = [
    f"SELECT o.id, o.total, o.status FROM orders_{t} o WHERE o.customer_id = %(customer_id)s "
    f"AND o.status = %(status)s ORDER BY o.created_at DESC LIMIT %(limit)s"
    for t in range(40)
]
_SEND_PREFIX = 6  # bytes of an id that name the (stream, send)
LITERAL_SHARE = 0.1  # statements recorded with literal values (unsanitized instrumentations)


# --- realistic requests -------------------------------------------------------------------------


def _kv(key: str, value: Any) -> Any:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _span_attributes(rng: random.Random, i: int) -> tuple[str, int, list[tuple[str, Any]]]:
    """(name, kind, attributes) of span ``i`` in a 25-span trace: HTTP root, DB, cache, RPC."""
    if i == 0:
        return "GET /api/orders/{id}", 2, [
            ("http.request.method", "GET"), ("url.path", f"/api/orders/{rng.randrange(10**6)}"),
            ("http.route", "/api/orders/{id}"), ("http.response.status_code", 200),
            ("server.address", "shop.example.com"), ("server.port", 443), ("url.scheme", "https"),
            ("network.protocol.version", "1.1"), ("client.address", f"10.0.3.{rng.randrange(255)}"),
            ("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Firefox/128.0"),
        ]  # fmt: skip
    kind = i % 5
    if kind in (0, 1, 2):
        literal = rng.random() < LITERAL_SHARE
        statement = (
            f"SELECT id, total FROM orders WHERE customer_id = {rng.randrange(10**5)}"
            if literal
            else rng.choice(STATEMENTS)
        )
        return "SELECT shop.orders", 3, [
            ("db.system.name", "postgresql"), ("db.namespace", "shop"),
            ("db.query.text", statement), ("db.operation.name", "SELECT"),
            ("db.collection.name", "orders"),
            ("server.address", "pg-primary.internal"), ("server.port", 5432),
        ]  # fmt: skip
    if kind == 3:
        return "GET", 3, [
            ("db.system.name", "redis"), ("db.query.text", "GET ?"), ("db.namespace", "0"),
            ("server.address", "redis.internal"), ("server.port", 6379),
        ]  # fmt: skip
    return "POST /charge", 3, [
        ("http.request.method", "POST"), ("url.full", f"http://payment:8080/charge/{rng.randrange(10**6)}"),
        ("server.address", "payment"), ("server.port", 8080), ("http.response.status_code", 200),
        ("network.protocol.version", "1.1"),
    ]  # fmt: skip


def make_request(rng: random.Random) -> bytes:
    """One ExportTraceServiceRequest: 4 resources × 5 traces × 25 spans."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    t0 = time.time_ns()
    per_service = SPANS_PER_REQUEST // len(SERVICES)
    for service in SERVICES:
        rs = request.resource_spans.add()
        rs.resource.attributes.extend(_kv(k, v) for k, v in (
            ("service.name", service), ("service.version", "2.3.1"),
            ("deployment.environment.name", "production"),
            ("host.name", f"{service}-7f9c-{rng.randrange(3)}"),
            ("process.pid", rng.randrange(1, 65535)), ("telemetry.sdk.language", "python"),
            ("telemetry.sdk.name", "opentelemetry"), ("telemetry.sdk.version", "1.45.1"),
        ))  # fmt: skip
        scope = rs.scope_spans.add()
        scope.scope.name, scope.scope.version = "opentelemetry.instrumentation.flask", "0.66b1"
        for i in range(per_service):
            position = i % 25
            if position == 0:
                trace_id, root = rng.randbytes(16), rng.randbytes(8)
            name, kind, attrs = _span_attributes(rng, position)
            span = scope.spans.add(trace_id=trace_id, name=name, kind=kind)
            span.span_id = root if position == 0 else rng.randbytes(8)
            if position:
                span.parent_span_id = root
            span.start_time_unix_nano = t0 + i * 1_000
            span.end_time_unix_nano = span.start_time_unix_nano + rng.randrange(10**4, 10**8)
            span.attributes.extend(_kv(k, v) for k, v in attrs)
            if kind == 3 and rng.random() < 0.02:
                span.status.code, span.status.message = 2, "connection reset by peer"
                event = span.events.add(name="exception", time_unix_nano=span.end_time_unix_nano)
                event.attributes.extend([_kv("exception.type", "ConnectionResetError")])
    return request.SerializeToString()


class Template:
    """A serialized request whose ids are rewritten for every send.

    Every id is (stream, send) in its first 6 bytes and (slot, constant) after, so the
    request splits into fixed pieces around those 6 bytes: a send is one ``bytes.join``
    (the load generator must not take the CPU the server is measured on).
    """

    def __init__(self, data: bytes, request: Any) -> None:
        ids: dict[bytes, None] = {}
        for rs in request.resource_spans:
            for scope in rs.scope_spans:
                for span in scope.spans:
                    ids.setdefault(span.trace_id)
                    ids.setdefault(span.span_id)
        places = []  # (offset, width, slot)
        for slot, raw in enumerate(ids):
            start = data.find(raw)
            while start != -1:
                places.append((start, len(raw), slot))
                start = data.find(raw, start + 1)
        places.sort()
        self.pieces, end = [], 0
        piece = b""
        for offset, width, slot in places:
            self.pieces.append(piece + data[end:offset])
            piece = struct.pack(">HQ", slot + 1, 0x7E1E)[: width - _SEND_PREFIX]
            end = offset + width
        self.pieces.append(piece + data[end:])

    def fresh(self, send: int, stream: int) -> bytes:
        """The request with ids unique to (stream, send): no two sends share a span id."""
        return struct.pack(">HI", stream + 1, send).join(self.pieces)


def templates(count: int, seed: int = 7) -> list[Template]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    rng = random.Random(seed)
    out = []
    for _ in range(count):
        data = make_request(rng)
        out.append(Template(data, ExportTraceServiceRequest.FromString(data)))
    return out


# --- the load generator (its own process) -------------------------------------------------------


def load(target: str, seconds: float, streams: int, channels: int, rate: float | None,
         pool: int, id_space: int, results: Any) -> None:  # fmt: skip
    """Send for ``seconds`` from ``streams`` concurrent calls over ``channels``; report back.

    One asyncio loop (``grpc.aio``) drives every stream: 64 threads of blocking calls spent
    ≈ 10 CPU µs a span here (5 ms a call), taking a quarter of the machine from the server."""
    import asyncio

    pool_templates = templates(pool)
    cpu0 = time.process_time()
    out = asyncio.run(
        _load_async(target, seconds, streams, channels, rate, pool_templates, id_space)
    )
    out["load_cpu_s"] = round(time.process_time() - cpu0, 2)
    results.put(out)


async def _load_async(target: str, seconds: float, streams: int, channels: int,
                      rate: float | None, pool_templates: list[Template],
                      id_space: int) -> dict:  # fmt: skip
    import asyncio

    import grpc

    opened = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    start = time.monotonic() + 0.5
    deadline = start + seconds
    interval = streams * SPANS_PER_REQUEST / rate if rate else 0.0

    async def stream(index: int) -> None:
        call = opened[index % channels].unary_unary(EXPORT)
        send = 0
        next_at = start + interval * index / streams
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            if next_at > now:
                await asyncio.sleep(next_at - now)
            template = pool_templates[(index + send) % len(pool_templates)]
            body = template.fresh(send, id_space * 1000 + index)
            began = time.monotonic()
            try:
                await call(body, timeout=30)
                latencies.append(time.monotonic() - began)
            except grpc.aio.AioRpcError as error:
                errors[error.code().name] = errors.get(error.code().name, 0) + 1
            send += 1
            next_at = max(next_at + interval, time.monotonic()) if interval else 0.0

    await asyncio.gather(*(stream(i) for i in range(streams)))
    for channel in opened:
        await channel.close()
    return {"latencies": latencies, "errors": errors, "acked_requests": len(latencies),
            "seconds": seconds}  # fmt: skip


def run_load(target: str, seconds: float, streams: int, channels: int, rate: float | None,
             pool: int, id_space: int) -> dict:  # fmt: skip
    """One load run in a separate process; ``id_space`` keeps its span ids apart from others."""
    results: Any = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(
        target=load, args=(target, seconds, streams, channels, rate, pool, id_space, results)
    )
    proc.start()
    out = results.get(timeout=seconds + 300)
    proc.join(60)
    return out


# --- the server ---------------------------------------------------------------------------------

_STARTUP = re.compile(r"OTLP/gRPC (\S+), OTLP/HTTP (https?://[^/\s]+)/v1/traces")  # serve or sink


def start_server(
    db: Path, sink: bool = False, decode_workers: int | None = None
) -> tuple[subprocess.Popen, str, list[str]]:
    """The server process, its gRPC target, and the lines it prints after the startup line."""
    command = [sys.executable, "-m", "tracelens.receiver.command", "--db", str(db),
               "--grpc-port", "0", "--http-port", "0"]  # fmt: skip
    if decode_workers is not None:
        command += ["--decode-workers", str(decode_workers)]
    if sink:
        command = [sys.executable, __file__, "--serve-sink"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    match = _STARTUP.search(line)
    if not match:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()  # type: ignore[arg-type]
    return proc, match.group(1), lines


class Monitor:
    """CPU seconds and RSS of the server and its decode workers, sampled every 0.5 s."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.rss: list[int] = []  # server + workers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _processes(self) -> list[Any]:
        return [self.process, *self.process.children(recursive=True)]

    def _cpu(self) -> dict[int, float]:
        out = {}
        for proc in self._processes():
            try:
                times = proc.cpu_times()
            except Exception:  # noqa: BLE001 — a worker that just exited
                continue
            out[proc.pid] = times.user + times.system
        return out

    def __enter__(self) -> Monitor:
        self.cpu0, self.t0 = self._cpu(), time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        cpu = self._cpu()
        used = sum(seconds - self.cpu0.get(pid, 0.0) for pid, seconds in cpu.items())
        self.cores = used / (time.monotonic() - self.t0)
        self.worker_cores = sum(
            seconds - self.cpu0.get(pid, 0.0)
            for pid, seconds in cpu.items()
            if pid != self.process.pid
        ) / (time.monotonic() - self.t0)

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            total = 0
            for proc in self._processes():
                try:
                    total += proc.memory_info().rss
                except Exception:  # noqa: BLE001 — a worker that just exited
                    continue
            self.rss.append(total)

    def peak_kib(self) -> int:
        """Peak RSS (VmHWM) of the server plus its decode workers."""
        total = 0
        for proc in self._processes():
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        return total


class CountingSink:
    """A consumer without a store: measures the receiver alone (transport + decode)."""

    def __init__(self) -> None:
        self.spans = 0

    def consume(self, batches: list) -> None:
        self.spans += sum(b.num_rows for b in batches)


def serve_sink() -> None:
    """``--serve-sink``: the receiver with :class:`CountingSink`, until SIGTERM."""
    from tracelens.receiver.server import (
        Receiver,
        ServeConfig,
        default_decode_workers,
        tune_runtime,
    )  # fmt: skip

    tune_runtime()
    sink = CountingSink()
    config = ServeConfig(db="-", grpc_port=0, http_port=0, decode_workers=default_decode_workers())
    receiver = Receiver(config, sink).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"sink: OTLP/gRPC {receiver.grpc_target}, OTLP/HTTP {receiver.http_url}/v1/traces",
          flush=True)  # fmt: skip
    while not stop.wait(0.5):
        pass
    receiver.stop(10)
    print(f"sink received {sink.spans} spans", flush=True)


def count_spans(db: Path) -> int:
    from tracelens.access import open_reader

    with open_reader(db) as reader:
        return reader.count_spans()


# --- in-process ceilings ------------------------------------------------------------------------


def ceilings(pool: list[Template], seconds: float = 3.0) -> dict:
    """Spans/s on one thread (CPU time) over the same requests: ``ParseFromString`` alone,
    and tracelens' decoder to Arrow as the server runs it (requests decoded one by one,
    converted to one record batch per ``len(pool)`` requests, as a group commit does)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    from tracelens.receiver.columns import Columns
    from tracelens.receiver.decode import Decoder
    from tracelens.receiver.server import tune_runtime

    tune_runtime()  # as the server does
    bodies = [t.fresh(0, 0) for t in pool]
    decoder = Decoder()

    def parse(group: list[bytes]) -> None:
        for body in group:
            ExportTraceServiceRequest.FromString(body)

    def decode(group: list[bytes]) -> None:
        blocks = [block for body in group for block in decoder.decode(body, "bench").blocks]
        Columns.concat(blocks).to_batch()

    out = {}
    for name, fn in (("parse_only", parse), ("decoder_only", decode)):
        spans, started = 0, time.process_time()
        while time.process_time() - started < seconds:
            fn(bodies)
            spans += SPANS_PER_REQUEST * len(bodies)
        out[name] = round(spans / (time.process_time() - started))
    return out


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


_ID_SPACES = itertools.count(1)


def _phase(label: str, db: Path | None, target: str, pid: int, args: argparse.Namespace,
           rate: float | None, seconds: float) -> dict:  # fmt: skip
    before = count_spans(db) if db else 0
    with Monitor(pid) as monitor:
        started = time.monotonic()
        result = run_load(
            target, seconds, args.streams, args.channels, rate, args.pool, next(_ID_SPACES)
        )
        elapsed = time.monotonic() - started - 0.5  # the generator starts 0.5 s after spawn
        # Acknowledged spans may still be on their way from the journal to the store: the
        # count (through the server's read API) waits for them, and that wait counts as
        # part of the run, so spans/s is what reached the store in the time it took.
        load_ended = time.monotonic()
        if db:
            stored = count_spans(db) - before
        else:  # without a store, what the receiver acknowledged is what it handled
            time.sleep(0.5)
            stored = result["acked_requests"] * SPANS_PER_REQUEST
        catch_up = time.monotonic() - load_ended if db else 0.0
    lat = result["latencies"]
    return {
        "phase": label,
        "target_spans_per_s": round(rate) if rate else None,
        "seconds": round(seconds, 1),
        "durable_spans": stored,
        "durable_spans_per_s": round(stored / (seconds + catch_up)),
        "store_catch_up_s": round(catch_up, 2),
        "acked_spans": result["acked_requests"] * SPANS_PER_REQUEST,
        "export_p50_ms": round(_percentile(lat, 0.50), 1),
        "export_p99_ms": round(_percentile(lat, 0.99), 1),
        "errors": result["errors"],
        "server_cores": round(monitor.cores, 2),  # decode workers included
        "worker_cores": round(monitor.worker_cores, 2),
        "load_generator_cores": round(result["load_cpu_s"] / (seconds + 0.5), 2),
        "server_rss_peak_mib": round(monitor.peak_kib() / 1024),
        "server_rss_last_mib": round((monitor.rss[-1] if monitor.rss else 0) / 2**20),
        "wall_s": round(elapsed, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--half-seconds", type=float, default=10.0)
    parser.add_argument("--streams", type=int, default=64, help="concurrent Export calls")
    parser.add_argument("--channels", type=int, default=4, help="gRPC channels")
    parser.add_argument("--pool", type=int, default=40, help="distinct request templates")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument("--no-sink", action="store_true", help="skip the receiver-only run")
    parser.add_argument("--decode-workers", type=int, default=None, help="serve's default if unset")
    parser.add_argument("--serve-sink", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_sink:
        serve_sink()
        return {}

    report: dict = {"machine": {"cpus": os.cpu_count(), "load_avg_before": os.getloadavg()}}
    report["ceilings"] = ceilings(templates(min(args.pool, 20)))
    ceiling = report["ceilings"]
    print(f"parse-only {ceiling['parse_only']:,} spans/s, "
          f"decoder-only {ceiling['decoder_only']:,} spans/s (one core)", flush=True)  # fmt: skip
    report["phases"] = []
    if not args.no_sink:
        sink, target, _ = start_server(Path("-"), sink=True)
        try:
            report["phases"].append(
                _phase("receiver only (no store)", None, target, sink.pid, args, None, 10.0)
            )
            _print(report["phases"][-1])
        finally:
            sink.send_signal(signal.SIGTERM)
            sink.wait(60)
    with tempfile.TemporaryDirectory(prefix="tracelens-bench-") as tmp:
        db = Path(tmp) / "bench.duckdb"
        server, target, lines = start_server(db, decode_workers=args.decode_workers)
        try:
            full = _phase("max", db, target, server.pid, args, None, args.seconds)
            _print(full)
            half_rate = full["durable_spans_per_s"] / 2
            half = _phase("half", db, target, server.pid, args, half_rate, args.half_seconds)
            _print(half)
        finally:
            server.send_signal(signal.SIGTERM)
            code = server.wait(120)
        report["phases"] += [full, half]
        report["server_exit_code"] = code
        time.sleep(0.2)  # the reader thread takes the last lines
        report["server_stopped"] = next((ln.strip() for ln in lines if "stopped;" in ln), None)
        print(report["server_stopped"], flush=True)
    report["machine"]["load_avg_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _print(phase: dict) -> None:
    print(
        f"[{phase['phase']}] durable {phase['durable_spans_per_s']:,} spans/s "
        f"({phase['durable_spans']:,} in {phase['seconds']} s of load + "
        f"{phase.get('store_catch_up_s', 0)} s for the store to catch up; "
        f"acked {phase['acked_spans']:,}), "
        f"Export p50 {phase['export_p50_ms']} ms p99 {phase['export_p99_ms']} ms, "
        f"errors {phase['errors'] or 'none'}, server {phase['server_cores']} cores "
        f"({phase['worker_cores']} in decode workers), "
        f"load generator {phase['load_generator_cores']} cores, "
        f"RSS peak {phase['server_rss_peak_mib']} MiB (last {phase['server_rss_last_mib']} MiB)",
        flush=True,
    )


if __name__ == "__main__":
    main()
