"""What the serve journal costs: the same spans stored directly, or journaled then stored.

``tracelens serve`` commits each group of requests to its write-ahead journal and moves the
spans into the store in large commits behind it (``receiver.journaled``). This writes the
same decoded requests (``benchmarks/ingest.py``'s realistic 500-span requests) both ways on
one thread, alternating, on a fresh store each time:

- ``direct``: ``Store.write`` of 10k-span groups (the writer before the journal);
- ``journaled``: ``JournaledStore.write`` of 1k-span groups (a journal commit each, as under
  load), its store thread writing up to 100k spans at a time; timed until all are stored.

CPU is the process's (both threads); wall is until the last span is in the store.

    python benchmarks/journal_cost.py [--groups 400] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import store_commits  # noqa: E402  (the decoded-request generator)

from tracelens.journal import Journal  # noqa: E402
from tracelens.receiver.journaled import JournaledStore  # noqa: E402
from tracelens.receiver.writer import tune_store  # noqa: E402
from tracelens.store import Store  # noqa: E402

DIRECT_GROUP = 10  # 1k-span batches per direct commit


def run(batches: list, mode: str, directory: str) -> dict:
    import pyarrow as pa

    path = os.path.join(directory, f"{mode}.duckdb")
    store = Store(path)
    tune_store(store)
    started, cpu0 = time.perf_counter(), time.process_time()
    if mode == "direct":
        for at in range(0, len(batches), DIRECT_GROUP):
            store.write([pa.concat_batches(batches[at : at + DIRECT_GROUP])])
    else:
        journaled = JournaledStore(store, Journal(path))
        for batch in batches:
            journaled.write([batch])
        assert journaled.close()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    rows = store.count_spans()
    store.close()
    for name in os.listdir(directory):
        os.remove(os.path.join(directory, name))
    return {"mode": mode, "rows": rows, "wall_us": wall / rows * 1e6, "cpu_us": cpu / rows * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=400, help="1k-span groups")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    batches = store_commits.commits(args.groups, 2)
    print(f"{len(batches)} groups of {batches[0].num_rows:,} spans; load {os.getloadavg()[0]:.1f}")
    print("| path | spans | wall µs/span | CPU µs/span |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="tracelens-journal-") as tmp:
        for _ in range(args.rounds):
            for mode in ("direct", "journaled"):
                r = run(batches, mode, tmp)
                print(f"| {r['mode']} | {r['rows']:,} | {r['wall_us']:.2f} | {r['cpu_us']:.2f} |")


if __name__ == "__main__":
    main()
