"""Cold wall time of `tracelens explain --format json` on a store of 10M spans.

Builds (once, cached in benchmarks/data/) a store through tracelens' own schema, filled by
DuckDB SQL so that building 10M rows takes a minute, not an hour: 1M traces × 10 spans
(an HTTP root, an HTTP client call, 6 sequential DB queries, a cache call, a downstream
server span), in time order as a receiver would write them. Then each measurement is a fresh
process (nothing warm in Python), median of N runs, beside the ceiling `import duckdb`.

    python benchmarks/explain_bench.py [--spans 10000000] [--runs 7] [--served]

``--served`` also times the same commands while ``tracelens serve`` holds the store (they then
read through its read API, and `explain` gets its findings from the server); the first call,
which loads the server's rules and detectors, is not timed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
SPANS_PER_TRACE = 10


def build_store(path: Path, spans: int) -> None:
    import duckdb

    from tracelens.store import Store

    traces = spans // SPANS_PER_TRACE
    with Store(path):
        pass  # creates the schema and the trace_id index exactly as tracelens does
    con = duckdb.connect(str(path))
    # Span i of trace t: ids from hashes so they look like real random hex ids.
    con.execute(f"""
        INSERT INTO spans
        SELECT hash(tid, sid) AS span_key, tid AS trace_id, sid AS span_id,
               CASE WHEN k = 0 THEN NULL WHEN k = 9 THEN sid1 ELSE sid0 END AS parent_span_id,
               CASE WHEN k = 0 THEN 'GET /orders/{{id}}' WHEN k = 1 THEN 'GET'
                    WHEN k = 8 THEN 'GET' WHEN k = 9 THEN 'GET /inventory'
                    ELSE 'SELECT shop.customers' END AS name,
               CASE WHEN k IN (0, 9) THEN 2 ELSE 3 END AS kind,
               t0 + k * 1000000 AS start_ns,
               t0 + k * 1000000 + CASE WHEN k = 0 THEN 40000000 ELSE 900000 END AS end_ns,
               CASE WHEN k = 0 THEN 40000000 ELSE 900000 END AS duration_ns,
               0 AS status_code, NULL AS status_message, false AS follows_from, NULL AS trace_state,
               'bench' AS scope_name, NULL AS scope_version,
               CASE WHEN k BETWEEN 2 AND 7 THEN
                    '{{"db.system":"postgresql","db.statement":"SELECT * FROM customers WHERE id = '
                    || (t % 997) || '"}}' ELSE '{{"http.request.method":"GET"}}' END AS attributes,
               '{{"service.name":"' || CASE WHEN k = 9 THEN 'inventory' ELSE 'orders-api' END
                    || '"}}' AS resource_attributes,
               '[]' AS events, '[]' AS links,
               CASE WHEN k = 9 THEN 'inventory' ELSE 'orders-api' END AS service,
               CASE WHEN k BETWEEN 2 AND 7 THEN 'postgresql' END AS db_system,
               CASE WHEN k BETWEEN 2 AND 7 THEN 'SELECT * FROM customers WHERE id = ' || (t % 997)
                    END AS db_statement,
               CASE WHEN k BETWEEN 2 AND 7 THEN 'SELECT * FROM customers WHERE id = ?'
                    END AS db_fingerprint,
               CASE WHEN k BETWEEN 2 AND 7 THEN 'shop' WHEN k = 1 THEN 'inventory' END AS peer,
               CASE WHEN k = 0 THEN '/orders/{{id}}' END AS http_route,
               'GET' AS http_method, NULL AS http_url, 200 AS http_status, NULL AS rpc_method
        FROM (
            SELECT t, k, t0, tid,
                   lower(lpad(to_hex(hash(tid, k)), 16, '0')) AS sid,
                   lower(lpad(to_hex(hash(tid, 0)), 16, '0')) AS sid0,
                   lower(lpad(to_hex(hash(tid, 1)), 16, '0')) AS sid1
            FROM (
                SELECT t, k, 1700000000000000000 + t * 5000000 AS t0,
                       lower(lpad(to_hex(hash(t)), 16, '0')
                             || lpad(to_hex(hash(t, 'lo')), 16, '0')) AS tid
                FROM range({traces}) r(t), range({SPANS_PER_TRACE}) s(k)
            )
        ) ORDER BY t, k
    """)
    con.execute("CHECKPOINT")
    con.close()


def time_command(args: list[str], runs: int) -> tuple[float, float, str]:
    times = []
    out = ""
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - start)
        out = proc.stdout
    return statistics.median(times), min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spans", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--served", action="store_true", help="also time through a server")
    args = parser.parse_args()

    DATA.mkdir(exist_ok=True)
    db = DATA / f"explain_{args.spans}.duckdb"
    if not db.exists():
        t = time.perf_counter()
        build_store(db, args.spans)
        print(
            f"built {db} ({args.spans:,} spans) in {time.perf_counter() - t:.1f}s", file=sys.stderr
        )

    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    trace_id = con.execute(
        "SELECT trace_id FROM spans WHERE parent_span_id IS NULL LIMIT 1 OFFSET 123457"
    ).fetchone()[0]
    con.close()

    py = sys.executable
    # A regular `pip install` compiles the package's bytecode; an editable one (or
    # PYTHONDONTWRITEBYTECODE=1, as on the project machine) leaves each run to compile the
    # modules it imports again (≈ 30 ms here). Measure the installed case.
    import tracelens

    subprocess.run([py, "-m", "compileall", "-q", str(Path(tracelens.__file__).parent)], check=True)
    base, base_min, _ = time_command([py, "-c", "import duckdb"], args.runs)
    # What the store imports now: the extension the duckdb package re-exports.
    ext, ext_min, _ = time_command([py, "-c", "import _duckdb"], args.runs)
    full_cmd = [py, "-m", "tracelens", "explain", "--trace-id", trace_id, "--db", str(db)]
    full_cmd += ["--format", "json"]
    bare_cmd = [*full_cmd, "--no-findings"]
    bare, bare_min, _ = time_command(bare_cmd, args.runs)
    full, full_min, out = time_command(full_cmd, args.runs)
    assert trace_id in out

    print(
        f"machine: {platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"duckdb {duckdb.__version__}; store {db.stat().st_size / 1e9:.2f} GB, "
        f"{args.spans:,} spans; median of {args.runs} fresh processes"
    )
    print("| command | median | min |")
    print("|---|---:|---:|")
    rows = [
        ("`python -c 'import duckdb'`", base, base_min),
        ("`python -c 'import _duckdb'` (the extension alone: the floor)", ext, ext_min),
        ("`explain --format json --no-findings`", bare, bare_min),
        ("`explain --format json` (with findings)", full, full_min),
    ]
    if args.served:
        served = [
            ("explain --format json --no-findings", bare_cmd),
            ("explain --format json", full_cmd),
        ]
        rows += time_served(db, served, args.runs)
    for label, median, best in rows:
        print(f"| {label} | {median * 1000:.0f} ms | {best * 1000:.0f} ms |")


def time_served(
    db: Path, commands: list[tuple[str, list[str]]], runs: int
) -> list[tuple[str, float, float]]:
    """The commands again while a server holds ``db`` (stopped by its pid afterwards)."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tracelens",
            "serve",
            "--db",
            str(db),
            "--grpc-port",
            "0",
            "--http-port",
            "0",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        server.stdout.readline()  # type: ignore[union-attr]  # the startup line
        subprocess.run(commands[-1][1], capture_output=True, check=True)  # warms the server
        out = []
        for label, command in commands:
            median, best, _ = time_command(command, runs)
            out.append((f"served: `{label}`", median, best))
        return out
    finally:
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    main()
