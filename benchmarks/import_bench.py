"""Import benchmark: Jaeger JSON → span batches → DuckDB store, with its ceilings.

    python benchmarks/import_bench.py                 # ~500 MB generated file (made if missing)
    python benchmarks/import_bench.py --mb 50         # quick run
    python benchmarks/import_bench.py --file X.json   # any Jaeger JSON export

Each stage runs in a fresh Python process (so peak RSS is its own) and reports MB/s of input,
spans/s, wall and CPU seconds and peak RSS:

* ``parse``: the streaming splitter + ``orjson.loads`` of every trace, nothing else (ceiling);
* ``import``: the importer (``importers.read``) to record batches, no store;
* ``import+store``: the full import, ``Store.write`` into a fresh DuckDB file under /tmp;
* ``store only``: ``Store.write`` of batches prepared before the clock starts (not in the
  full import's process, so the importer's memory does not count in its RSS);
* ``2-process``: a prototype pipeline, not the product path: a child process runs the importer
  and streams Arrow IPC to this one, which runs ``Store.write``, so the two overlap. CPU and
  peak RSS add both processes.

CPU seconds count every thread of the process (DuckDB's too). The machine is shared: compare
wall and CPU, and repeat (``--repeat``) when others are busy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAGES = ("parse", "import", "import+store", "store only", "2-process")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _open(path: Path):
    from tracelens.importers.sources import Source, open_source

    return open_source(Source(str(path), path, path.stat().st_size))


def run_stage(stage: str, path: Path) -> dict:
    """One measurement, in this process. Returns spans, wall, cpu and peak RSS."""
    from tracelens import importers
    from tracelens.store import Store

    prepared = None
    if stage == "store only":
        with _open(path) as stream:
            prepared = list(importers.read(stream, str(path), "jaeger-json"))
    db = Path(tempfile.mkdtemp(prefix="tracelens-bench-")) / "bench.duckdb"
    rss_before = _peak_rss_mb()
    wall, cpu = time.perf_counter(), _cpu()
    child_rss = 0.0
    if stage == "2-process":
        spans, child_rss = _two_process(path, db)
    elif stage == "parse":
        spans = _parse_only(path)
    elif stage == "import":
        with _open(path) as stream:
            spans = sum(b.num_rows for b in importers.read(stream, str(path), "jaeger-json"))
    else:
        with Store(db) as store:
            if prepared is not None:
                spans = store.write(prepared).received
            else:
                with _open(path) as stream:
                    spans = store.write(importers.read(stream, str(path), "jaeger-json")).received
    wall, cpu = time.perf_counter() - wall, _cpu() - cpu
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu += children.ru_utime + children.ru_stime
    for leftover in db.parent.iterdir():
        leftover.unlink()
    db.parent.rmdir()
    return {
        "stage": stage,
        "spans": spans,
        "wall": wall,
        "cpu": cpu,
        "rss_mb": _peak_rss_mb() + child_rss,
        "rss_before_mb": rss_before,
    }


def _two_process(path: Path, db: Path) -> tuple[int, float]:
    """Importer in a child (Arrow IPC on its stdout), ``Store.write`` here."""
    import pyarrow as pa

    from tracelens.store import Store

    child = subprocess.Popen(
        [sys.executable, __file__, "--emit", "--file", str(path)], stdout=subprocess.PIPE
    )
    try:
        with Store(db) as store:
            spans = store.write(pa.ipc.open_stream(child.stdout)).received
    finally:
        child.stdout.close()  # type: ignore[union-attr]
        try:
            code = child.wait(timeout=600)
        except subprocess.TimeoutExpired:
            child.kill()
            raise
    if code:
        raise SystemExit(f"importer child failed with exit code {code}")
    return spans, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _emit(path: Path) -> None:
    """The child of ``2-process``: import ``path`` and write Arrow IPC to stdout."""
    import pyarrow as pa

    from tracelens import importers
    from tracelens.model import SPAN_SCHEMA

    with _open(path) as stream, pa.ipc.new_stream(sys.stdout.buffer, SPAN_SCHEMA) as out:
        for batch in importers.read(stream, str(path), "jaeger-json"):
            out.write_batch(batch)


def _parse_only(path: Path) -> int:
    from tracelens.importers.jaeger_json import _DATA_ARRAY
    from tracelens.importers.jsonstream import ArrayStream
    from tracelens.importers.sources import peek
    from tracelens.model import gc_paused

    spans = 0
    with _open(path) as stream, gc_paused():
        opening = _DATA_ARRAY.match(peek(stream))
        if not opening:
            raise SystemExit(f'{path}: not a {{"data":[…]}} Jaeger export')
        for _, trace in ArrayStream(stream, str(path), opening.group(0)):
            spans += len(trace.get("spans") or ())
    return spans


def measure(stage: str, path: Path) -> dict:
    """Run one stage in a fresh interpreter and read its JSON line."""
    out = subprocess.run(
        [sys.executable, __file__, "--stage", stage, "--file", str(path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: list[dict], size: int) -> str:
    lines = [
        "| stage | MB/s | spans/s | wall s | CPU s | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['stage']} | {size / r['wall'] / 1e6:.1f} | {r['spans'] / r['wall']:,.0f} | "
            f"{r['wall']:.2f} | {r['cpu']:.2f} | {r['rss_mb']:.0f} |"
        )
    prepared = [r for r in results if r["stage"] == "store only"]
    if prepared:
        lines.append(
            f"\n(store only: {prepared[0]['rss_before_mb']:.0f} MB of that RSS are the batches "
            "prepared before the clock started.)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=500.0, help="size of the generated file")
    parser.add_argument("--file", type=Path, help="benchmark this file instead of generating one")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset")
    parser.add_argument("--repeat", type=int, default=1, help="runs per stage; the best is shown")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage here
    parser.add_argument("--emit", action="store_true", help=argparse.SUPPRESS)  # internal
    args = parser.parse_args(argv)
    if args.emit:
        _emit(args.file)
        return 0
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.file)))
        return 0
    path = args.file
    if path is None:
        sys.path.insert(0, str(HERE))
        from gen_jaeger import DATA_DIR, generate

        path = DATA_DIR / f"jaeger_{args.mb:g}mb.json"
        if not path.exists():
            print(f"generating {path} …", file=sys.stderr)
            generate(path, args.mb)
    size = path.stat().st_size
    results = []
    for stage in args.stages.split(","):
        runs = [measure(stage.strip(), path) for _ in range(max(1, args.repeat))]
        results.append(min(runs, key=lambda r: r["wall"]))
        print(f"{stage}: {results[-1]}", file=sys.stderr)
    load = os.getloadavg()
    print(
        f"{path.name}: {size / 1e6:.1f} MB, {results[0]['spans']:,} spans, "
        f"{os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}\n"
    )
    print(table(results, size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
