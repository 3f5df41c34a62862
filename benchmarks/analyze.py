"""Wall time and peak RSS of ``analyze`` over a store of ≈1M spans (≈100k traces).

Builds the store once (cached in benchmarks/data/, gitignored) through the real ingest path,
``SpanBatchBuilder`` + ``Store.write``, from a seeded generator of realistic shapes, then runs
``analyze`` with the built-in rules in a fresh process per run (imports, rule loading and the
scan included) and prints a markdown table row with the median.

Shapes (an hour of traffic, a few requests in flight at any time):

- ``shop POST /checkout`` (30%): auth, cart query, payments call → payments handler → insert;
  1% take a slow path where payments waits 300 ms more (tail attribution must name it);
- ``shop GET /orders`` (30%): orders query, then the items either in one query or, in 10%,
  one query per order (N+1, 6–12 repeats) behind pool checkouts;
- ``api GET /product`` (25%): users, stock and prices calls, in parallel, or one after another
  in 5% (sequential calls);
- ``api GET /report`` (15%): a slow report query (slow query), 2% fail from the database up
  (error origin).

    python benchmarks/analyze.py [--traces 100000] [--runs 3] [--rebuild]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data"
BASE_NS = 1_700_000_000_000_000_000
MS = 1_000_000
SERVER, CLIENT, INTERNAL = 2, 3, 1
MIDDLEWARE = ("session", "csrf", "rate limit", "feature flags", "serialize")
RESOURCES = {
    name: {"service.name": name, "deployment.environment": "bench"}
    for name in ("shop", "payments", "api", "users", "stock", "prices")
}


class Gen:
    """Emits the spans of one trace at a time into a SpanBatchBuilder."""

    def __init__(self, builder: Any, rng: random.Random) -> None:
        self.b, self.rng, self.spans = builder, rng, 0
        self.trace = ""
        self._sid = 0

    def span(
        self,
        parent: str | None,
        name: str,
        service: str,
        start: float,
        dur: float,
        kind: int = INTERNAL,
        attrs: dict | None = None,
        status: int = 0,
        message: str | None = None,
    ) -> str:
        self._sid += 1
        sid = f"{self._sid:016x}"
        t0 = BASE_NS + int(start * MS)
        self.b.add(
            trace_id=self.trace,
            span_id=sid,
            parent_span_id=parent,
            name=name,
            kind=kind,
            start_ns=t0,
            end_ns=t0 + int(dur * MS),
            attributes=attrs or {},
            resource=RESOURCES[service],
            status_code=status,
            status_message=message,
            scope_name="bench",
        )
        self.spans += 1
        return sid

    def db(self, parent: str, service: str, sql: str, start: float, dur: float, **kw: Any) -> str:
        attrs = {
            "db.system": "postgresql",
            "db.statement": sql,
            "server.address": "pg",
            "db.name": "shop",
        }
        return self.span(parent, sql.split()[0], service, start, dur, CLIENT, attrs, **kw)

    def http(self, parent: str, service: str, url: str, start: float, dur: float) -> str:
        attrs = {"http.request.method": "GET", "url.full": url, "server.address": url.split("/")[2]}
        return self.span(parent, "GET", service, start, dur, CLIENT, attrs)

    def middleware(self, parent: str, service: str, t: float, n: int) -> None:
        """``n`` short in-process spans (sessions, CSRF, serialization…): realistic bulk."""
        for k in range(n):
            self.span(parent, MIDDLEWARE[k], service, t + 0.05 * k, 0.04)

    def jitter(self, ms: float) -> float:
        return ms * self.rng.lognormvariate(0, 0.25)


def checkout(g: Gen, t: float) -> None:
    slow = g.rng.random() < 0.01
    pay = g.jitter(25) + (300 if slow else 0)
    total = 60 + pay
    root = g.span(None, "POST /checkout", "shop", t, total, SERVER, {"http.route": "/checkout"})
    g.middleware(root, "shop", t, 3)
    g.span(root, "auth", "shop", t + 1, g.jitter(5))
    g.db(
        root,
        "shop",
        f"SELECT * FROM carts WHERE user_id = {g.rng.randint(1, 10**6)}",
        t + 8,
        g.jitter(6),
    )
    call = g.http(root, "shop", "http://payments:8080/charge", t + 16, pay)
    handler = g.span(
        call, "POST /charge", "payments", t + 17, pay - 2, SERVER, {"http.route": "/charge"}
    )
    g.db(handler, "payments", "INSERT INTO charges (id, amount) VALUES (1, 2)", t + 18 + pay - 8, 5)
    g.span(root, "render", "shop", t + 20 + pay, g.jitter(3))


def orders(g: Gen, t: float) -> None:
    n_plus_one = g.rng.random() < 0.10
    root = g.span(None, "GET /orders", "shop", t, 80, SERVER, {"http.route": "/orders"})
    g.middleware(root, "shop", t, 4)
    g.db(
        root,
        "shop",
        f"SELECT * FROM orders WHERE user_id = {g.rng.randint(1, 10**6)}",
        t + 1,
        g.jitter(8),
    )
    at = t + 12
    if n_plus_one:
        for order in range(g.rng.randint(6, 12)):
            g.span(root, "connect", "shop", at, 0.3, CLIENT, {"db.system": "postgresql"})
            dur = g.jitter(4)
            g.db(root, "shop", f"SELECT * FROM items WHERE order_id = {order + 1}", at + 0.4, dur)
            at += dur + 1
    else:
        g.db(root, "shop", "SELECT * FROM items WHERE order_id IN (1, 2, 3)", at, g.jitter(6))
    g.span(root, "render", "shop", at + 8, g.jitter(3))


def product(g: Gen, t: float) -> None:
    sequential = g.rng.random() < 0.05
    root = g.span(None, "GET /product", "api", t, 120, SERVER, {"http.route": "/product"})
    g.middleware(root, "api", t, 3)
    at = t + 2
    for service in ("users", "stock", "prices"):
        dur = g.jitter(20)
        call = g.http(
            root, "api", f"http://{service}:8080/{service}/{g.rng.randint(1, 999)}", at, dur
        )
        g.span(
            call,
            f"GET /{service}/{{id}}",
            service,
            at + 1,
            dur - 2,
            SERVER,
            {"http.route": f"/{service}/{{id}}"},
        )
        at = at + dur + 0.5 if sequential else at + 0.2


def report(g: Gen, t: float) -> None:
    fails = g.rng.random() < 0.02
    root = g.span(
        None,
        "GET /report",
        "api",
        t,
        700,
        SERVER,
        {"http.route": "/report"},
        status=2 if fails else 0,
    )
    g.middleware(root, "api", t, 5)
    g.db(root, "api", "SELECT id FROM users WHERE id = 7", t + 1, g.jitter(2))
    g.db(
        root,
        "api",
        "SELECT sum(total) FROM orders GROUP BY day",
        t + 5,
        g.jitter(600),
        status=2 if fails else 0,
        message="canceling statement due to statement timeout" if fails else None,
    )
    g.span(root, "render", "api", t + 650, g.jitter(10), status=2 if fails else 0)


SHAPES = ((checkout, 0.30), (orders, 0.30), (product, 0.25), (report, 0.15))


def build_store(path: Path, traces: int) -> int:
    from tracelens.model import SpanBatchBuilder, gc_paused
    from tracelens.store import Store

    rng = random.Random(20240607)
    builder = SpanBatchBuilder(batch_size=50_000)
    g = Gen(builder, rng)
    shapes, weights = zip(*SHAPES, strict=True)
    spacing_ms = 3_600_000 / traces  # an hour of traffic

    def batches():
        for i in range(traces):
            g.trace = f"{rng.getrandbits(128):032x}"
            rng.choices(shapes, weights)[0](g, i * spacing_ms + rng.random() * spacing_ms)
            batch = builder.take_if_full()
            if batch is not None:
                yield batch
        last = builder.flush()
        if last is not None:
            yield last

    path.parent.mkdir(parents=True, exist_ok=True)
    with gc_paused(), Store(path) as store:
        store.write(batches())
    return g.spans


CHILD = """
import json, sys, time
t0 = time.perf_counter()
from tracelens.analyze import analyze
from tracelens.rules import load_rules
from tracelens.store import Store
kinds = set(sys.argv[2].split(",")) if sys.argv[2] else None
rules = [r for r in load_rules() if kinds is None or r.kind in kinds]
with Store(sys.argv[1], read_only=True) as store:
    t1 = time.perf_counter()
    result = analyze(store, rules)
    t2 = time.perf_counter()
kinds_found = {}
for f in result.findings:
    kinds_found[f.kind] = kinds_found.get(f.kind, 0) + 1
print(json.dumps({"analyze_s": t2 - t1, "process_s": time.perf_counter() - t0,
                  "stats": result.stats, "findings": kinds_found,
                  "endpoints": len(result.endpoints)}))
"""


def run_once(db: Path, kinds: str) -> tuple[float, dict[str, Any], float]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(db), kinds], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"analyze failed:\n{proc.stderr}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    # The last line: DuckDB may draw a progress bar on stdout before it.
    return wall, json.loads(proc.stdout.strip().splitlines()[-1]), peak_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--kinds", default="", help="comma-separated detector kinds (all)")
    args = parser.parse_args()
    db = DATA / f"analyze_{args.traces}.duckdb"
    if args.rebuild and db.exists():
        db.unlink()
    if not db.exists():
        t0 = time.perf_counter()
        spans = build_store(db, args.traces)
        print(
            f"built {db.name}: {spans} spans in {time.perf_counter() - t0:.1f} s", file=sys.stderr
        )
    walls, inner, peak = [], [], 0.0
    for _ in range(args.runs):
        wall, out, peak = run_once(db, args.kinds)
        walls.append(wall)
        inner.append(out["analyze_s"])
        print(json.dumps(out), file=sys.stderr)
    stats = out["stats"]
    print(
        "| spans | traces | rules | analyze() s (median) | process wall s (median) | "
        "peak RSS MB | machine |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {stats['spans']:,} | {stats['traces']:,} | {stats['rules']} | "
        f"{statistics.median(inner):.2f} | {statistics.median(walls):.2f} | {peak:.0f} | "
        f"{platform.machine()}, {_cpus()} CPUs, Python {platform.python_version()} |"
    )


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    main()
