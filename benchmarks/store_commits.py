"""Serving-size commits into a growing store: how the duplicate check scales.

``tracelens serve`` commits a few thousand spans at a time, and every commit first asks the
store which of its (trace_id, span_id) pairs are there already. This writes the same decoded
requests (``benchmarks/ingest.py``'s realistic 500-span requests, fresh ids per send) through
``Store.write`` with each way of asking, alternating, on a fresh store each time:

- ``probe``: the trace ids in IN-lists, looked up in the ``trace_id`` index;
- ``semi-join``: one ``WHERE trace_id IN (SELECT trace_id FROM incoming)``, which scans the
  ``trace_id`` column;
- ``by cost`` (the default): whichever of the two costs less for the ids and the store's size
  (``store.PROBE_ROWS_PER_ID``).

    python benchmarks/store_commits.py [--commits 300] [--requests-per-commit 4] [--rounds 2]
                                       [--modes "by cost"]

With ``--requests-per-commit 100`` and more this also shows what a commit of the journaled
store's size (50-100k spans) costs a span, in CPU (DuckDB's own threads included).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ingest  # noqa: E402  (benchmarks/ingest.py: the request generator)

from tracelens import store as store_module  # noqa: E402
from tracelens.receiver.decode import decode  # noqa: E402
from tracelens.receiver.writer import _one_batch, tune_store  # noqa: E402

MODES = {"probe": 0, "semi-join": 10**12, "by cost": store_module.PROBE_ROWS_PER_ID}


def commits(count: int, per_commit: int) -> list:
    pool = ingest.templates(8)
    out, send = [], 0
    for _ in range(count):
        blocks = []
        for _ in range(per_commit):
            send += 1
            blocks += decode(pool[send % len(pool)].fresh(send, 0), "bench").blocks
        out.append(_one_batch(blocks))
    return out


def run(batches: list, mode: str, directory: str) -> dict:
    store_module.PROBE_ROWS_PER_ID = MODES[mode]
    path = os.path.join(directory, f"{mode}.duckdb")
    store = store_module.Store(path)
    tune_store(store)
    latencies = []
    started, cpu0 = time.perf_counter(), time.process_time()
    for batch in batches:
        t = time.perf_counter()
        store.write([batch])
        latencies.append(time.perf_counter() - t)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    rows = store.count_spans()
    store.close()
    for name in os.listdir(directory):
        os.remove(os.path.join(directory, name))
    tail = max(1, len(latencies) // 6)
    return {
        "mode": mode,
        "rows": rows,
        "rows_per_s": rows / wall,
        "cpu_us_per_span": cpu / rows * 1e6,
        "first_ms": sorted(latencies[:tail])[tail // 2] * 1e3,
        "last_ms": sorted(latencies[-tail:])[tail // 2] * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=300)
    parser.add_argument("--requests-per-commit", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset")
    args = parser.parse_args()
    batches = commits(args.commits, args.requests_per_commit)
    per = batches[0].num_rows
    print(f"{len(batches)} commits of {per:,} spans; load {os.getloadavg()[0]:.1f}")
    print(
        "| duplicate check | spans/s | CPU µs/span "
        "| median commit, first sixth | median commit, last sixth |"
    )
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="tracelens-commits-") as tmp:
        for _ in range(args.rounds):
            for mode in args.modes.split(","):
                r = run(batches, mode, tmp)
                print(
                    f"| {r['mode']} | {r['rows_per_s']:,.0f} | {r['cpu_us_per_span']:.2f} "
                    f"| {r['first_ms']:.0f} ms "
                    f"| {r['last_ms']:.0f} ms |"
                )


if __name__ == "__main__":
    main()
