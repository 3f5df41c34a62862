"""Generate a realistic Jaeger JSON export (the query API / UI download shape) of a given size.

    python benchmarks/gen_jaeger.py              # ~500 MB into benchmarks/data/jaeger_500mb.json
    python benchmarks/gen_jaeger.py --mb 50      # ~50 MB
    python benchmarks/gen_jaeger.py --indent     # Jaeger UI-style indented JSON

Traces have 5-60 spans over 3-8 services: an HTTP server root in a gateway, client calls fanning out
to other services, SQL and Redis client spans (some repeated, N+1 style), Kafka producers, typed
tags as the Jaeger query service writes them (span.kind, component, http.*, db.*, peer.*, an
int64 beyond 2^53 as a string, float64 sampler params, binary), logs on some spans and errors on
a few. Output is deterministic for a given ``--seed``.
"""

from __future__ import annotations

import argparse
import base64
import random
import sys
from pathlib import Path

import orjson

DATA_DIR = Path(__file__).resolve().parent / "data"

SERVICES = (
    "api-gateway",
    "frontend",
    "auth",
    "orders",
    "inventory",
    "payments",
    "users",
    "notifications",
    "search",
    "cart",
    "shipping",
    "recommendations",
)
ROUTES = (
    "/api/orders/{id}",
    "/api/cart",
    "/api/users/{id}/profile",
    "/api/search",
    "/api/checkout",
    "/api/products/{id}",
    "/api/recommendations",
    "/health",
)
TABLES = ("orders", "order_items", "users", "products", "inventory", "payments", "sessions")
SQL = (
    "SELECT id, status, total FROM {t} WHERE id = $1",
    'SELECT * FROM "{t}" WHERE user_id = $1 AND created_at > $2 ORDER BY created_at DESC LIMIT 50',
    "UPDATE {t} SET status = 'shipped', updated_at = now() WHERE id = $1",
    "INSERT INTO {t} (id, payload) VALUES ($1, $2)",
    "SELECT count(*) FROM {t} WHERE name LIKE '%caf\u00e9%'",
)
REDIS = ("GET session:{n}", "SET cart:{n}", "HGETALL user:{n}", "EXPIRE session:{n}")
SEARCH_TERMS = ("shoes", "caf\u00e9 au lait", "\u00fcber jacket", "tea", "lamp", "4k tv")


class TraceMaker:
    """Builds one Jaeger trace object (a dict) at a time from a seeded RNG."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.t0 = 1_718_000_000_000_000  # µs

    def _hex(self, nbytes: int) -> str:
        return self.rng.getrandbits(nbytes * 8).to_bytes(nbytes, "big").hex()

    def trace(self) -> dict:
        rng = self.rng
        services = rng.sample(SERVICES[1:], rng.randint(2, 7))
        services.insert(0, SERVICES[0])
        procs = {f"p{i + 1}": s for i, s in enumerate(services)}
        pid_of = {s: p for p, s in procs.items()}
        trace_id = self._hex(16 if rng.random() < 0.7 else 8)
        self.t0 += rng.randint(200, 5_000)
        target = rng.randint(5, 60)
        spans: list[dict] = []
        route = rng.choice(ROUTES)
        root = self._span(
            trace_id,
            None,
            "api-gateway",
            pid_of,
            f"GET {route}",
            self.t0,
            rng.randint(20_000, 900_000),
            "server",
            route=route,
        )
        root["tags"] += [
            {"key": "sampler.type", "type": "string", "value": "probabilistic"},
            {"key": "sampler.param", "type": "float64", "value": 0.25},
        ]
        spans.append(root)
        frontier = [(root, "api-gateway")]
        while len(spans) < target:
            parent, svc = rng.choice(frontier)
            self._children(trace_id, parent, svc, services, pid_of, spans, frontier, target)
        processes = {p: self._process(s) for p, s in procs.items()}
        return {"traceID": trace_id, "spans": spans, "processes": processes, "warnings": None}

    def _children(self, trace_id, parent, svc, services, pid_of, spans, frontier, target) -> None:
        rng = self.rng
        start = parent["startTime"] + rng.randint(10, 2_000)
        roll = rng.random()
        if roll < 0.35:  # a call to another service: client span + server span
            callee = rng.choice(services[1:])
            route = rng.choice(ROUTES)
            dur = max(50, parent["duration"] // rng.randint(2, 6))
            client = self._span(
                trace_id,
                parent,
                svc,
                pid_of,
                f"HTTP GET {callee}",
                start,
                dur,
                "client",
                peer=callee,
                route=route,
            )
            server = self._span(
                trace_id,
                client,
                callee,
                pid_of,
                f"GET {route}",
                start + 120,
                max(10, dur - 300),
                "server",
                route=route,
            )
            spans += [client, server]
            frontier.append((server, callee))
        elif roll < 0.75:  # SQL, sometimes repeated (N+1)
            table = rng.choice(TABLES)
            sql = rng.choice(SQL).format(t=table)
            for _ in range(rng.choice((1, 1, 1, 2, 6))):
                if len(spans) >= target:
                    break
                dur = rng.randint(200, 30_000)
                spans.append(
                    self._span(
                        trace_id,
                        parent,
                        svc,
                        pid_of,
                        f"SELECT {table}",
                        start,
                        dur,
                        "client",
                        sql=sql,
                    )
                )
                start += dur + rng.randint(5, 200)
        elif roll < 0.9:
            cmd = rng.choice(REDIS).format(n=rng.randint(1, 10**6))
            spans.append(
                self._span(
                    trace_id,
                    parent,
                    svc,
                    pid_of,
                    cmd.split()[0],
                    start,
                    rng.randint(50, 3_000),
                    "client",
                    redis=cmd,
                )
            )
        else:
            spans.append(
                self._span(
                    trace_id,
                    parent,
                    svc,
                    pid_of,
                    "orders publish",
                    start,
                    rng.randint(100, 5_000),
                    "producer",
                    kafka=True,
                )
            )

    def _span(
        self,
        trace_id,
        parent,
        svc,
        pid_of,
        name,
        start,
        dur,
        kind,
        *,
        route=None,
        peer=None,
        sql=None,
        redis=None,
        kafka=False,
    ) -> dict:
        rng = self.rng
        tags = [
            {"key": "span.kind", "type": "string", "value": kind},
            {"key": "internal.span.format", "type": "string", "value": "proto"},
        ]
        if route:
            url = f"http://{peer or svc}:8080{route.replace('{id}', str(rng.randint(1, 99999)))}"
            if route == "/api/search":
                url += "?q=" + rng.choice(SEARCH_TERMS)
            status = 500 if rng.random() < 0.02 else rng.choice((200, 200, 200, 201, 404))
            tags += [
                {"key": "component", "type": "string", "value": "net/http"},
                {"key": "http.method", "type": "string", "value": "GET"},
                {"key": "http.url", "type": "string", "value": url},
                {"key": "http.status_code", "type": "int64", "value": status},
            ]
            if kind == "server":
                tags.append({"key": "http.route", "type": "string", "value": route})
            if peer:
                tags.append({"key": "peer.service", "type": "string", "value": peer})
            if status >= 500:
                tags.append({"key": "error", "type": "bool", "value": True})
        if sql:
            tags += [
                {"key": "component", "type": "string", "value": "gorm"},
                {"key": "db.system", "type": "string", "value": "postgresql"},
                {"key": "db.name", "type": "string", "value": "shop"},
                {"key": "db.statement", "type": "string", "value": sql},
                {"key": "net.peer.name", "type": "string", "value": "postgres.internal"},
                {"key": "net.peer.port", "type": "int64", "value": 5432},
            ]
        if redis:
            tags += [
                {"key": "db.system", "type": "string", "value": "redis"},
                {"key": "db.statement", "type": "string", "value": redis},
                {"key": "net.peer.name", "type": "string", "value": "redis.internal"},
            ]
        if kafka:
            tags += [
                {"key": "messaging.system", "type": "string", "value": "kafka"},
                {"key": "messaging.destination", "type": "string", "value": "orders"},
                {"key": "messaging.kafka.partition", "type": "int64", "value": rng.randint(0, 11)},
                {
                    "key": "messaging.message_id",
                    "type": "int64",
                    "value": str(rng.randint(2**60, 2**63 - 1)),
                },  # beyond 2^53: a string
                {
                    "key": "messaging.kafka.key",
                    "type": "binary",
                    "value": base64.b64encode(rng.randbytes(8)).decode(),
                },
            ]
        span = {
            "traceID": trace_id,
            "spanID": self._hex(8),
            "flags": 1,
            "operationName": name,
            "references": []
            if parent is None
            else [{"refType": "CHILD_OF", "traceID": trace_id, "spanID": parent["spanID"]}],
            "startTime": start,
            "duration": dur,
            "tags": tags,
            "logs": self._logs(start, dur) if rng.random() < 0.08 else [],
            "processID": pid_of[svc],
            "warnings": None,
        }
        return span

    def _logs(self, start: int, dur: int) -> list[dict]:
        rng = self.rng
        return [
            {
                "timestamp": start + rng.randint(0, dur),
                "fields": [
                    {
                        "key": "event",
                        "type": "string",
                        "value": rng.choice(("retry", "cache miss")),
                    },
                    {
                        "key": "message",
                        "type": "string",
                        "value": 'upstream said: {"code": 503, "detail": "try again \\ later"}',
                    },
                    {"key": "attempt", "type": "int64", "value": rng.randint(1, 3)},
                ],
            }
        ]

    def _process(self, service: str) -> dict:
        rng = self.rng
        return {
            "serviceName": service,
            "tags": [
                {"key": "hostname", "type": "string", "value": f"{service}-{rng.randint(1, 9)}"},
                {"key": "ip", "type": "string", "value": f"10.0.{rng.randint(0, 255)}.7"},
                {"key": "jaeger.version", "type": "string", "value": "Go-2.30.0"},
                {"key": "client-uuid", "type": "string", "value": self._hex(8)},
            ],
        }


def generate(path: Path, mb: float, *, indent: bool = False, seed: int = 1) -> tuple[int, int]:
    """Write ``{"data":[trace…], …}`` of about ``mb`` megabytes; returns (traces, spans)."""
    maker = TraceMaker(random.Random(seed))
    limit = int(mb * 1_000_000)
    opt = orjson.OPT_INDENT_2 if indent else 0
    traces = spans = written = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        out.write(b'{\n  "data": [\n' if indent else b'{"data":[')
        while written < limit:
            trace = maker.trace()
            text = orjson.dumps(trace, option=opt)
            if indent:  # nest the trace two levels deep; JSON strings hold no raw newlines
                text = b"    " + text.replace(b"\n", b"\n    ")
            if traces:
                out.write(b",\n" if indent else b",")
            out.write(text)
            written += len(text) + 1
            traces += 1
            spans += len(trace["spans"])
        tail = {"total": 0, "limit": 0, "offset": 0, "errors": None}
        if indent:
            out.write(b"\n  ],\n" + orjson.dumps(tail, option=opt)[2:-2] + b"\n}\n")
        else:
            out.write(b"]," + orjson.dumps(tail)[1:])
    return traces, spans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=500.0, help="approximate size (default 500)")
    parser.add_argument("--indent", action="store_true", help="indent like a Jaeger UI download")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("-o", "--output", type=Path, help="default: benchmarks/data/…")
    args = parser.parse_args(argv)
    suffix = "_indent" if args.indent else ""
    path = args.output or DATA_DIR / f"jaeger_{args.mb:g}mb{suffix}.json"
    traces, spans = generate(path, args.mb, indent=args.indent, seed=args.seed)
    size = path.stat().st_size
    print(f"{path}: {size / 1e6:.1f} MB, {traces} traces, {spans} spans", file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
