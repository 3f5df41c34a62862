"""Import benchmark: Jaeger JSON → span batches → DuckDB store, with its ceilings.

    python benchmarks/import_bench.py                 # ~500 MB generated file (made if missing)
    python benchmarks/import_bench.py --mb 50         # quick run
    python benchmarks/import_bench.py --file X.json   # any Jaeger JSON export

Each stage runs in a fresh Python process and reports MB/s of input, spans/s, wall and CPU
seconds, CPU µs per span and peak RSS:

* ``parse``: the streaming splitter + ``orjson.loads`` of every trace, nothing else (ceiling);
* ``parse (typed)``: the splitter + the importer's msgspec Struct decoder, nothing else (the
  importer's own ceiling; it then flattens the Structs);
* ``import``: the importer (``importers.read``) to record batches in one process, no store;
* ``store only``: ``Store.write`` of batches prepared before the clock starts (their memory is
  in the RSS; the line under the table says how much);
* ``import+store, 1 process``: the product path (``ingest.import_paths``) with ``workers=0``;
* ``import+store``: the product path as ``tracelens import`` runs it: worker processes parse and
  flatten runs of traces while this process writes to DuckDB.

CPU seconds count every thread of the process and its worker processes (DuckDB's threads too).
Peak RSS is the largest sum over the process and its workers, sampled every 50 ms (RSS counts
shared library pages once per process, so the sum overstates a little). The machine is shared:
each stage prints the load average around it; compare CPU µs/span, and repeat (``--repeat``)
when others are busy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAGES = (
    "parse",
    "parse (typed)",
    "import",
    "store only",
    "import+store (1 process)",
    "import+store",
)


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # workers, once they are reaped
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class RssPeak:
    """Largest RSS of this process plus its children, sampled in a thread."""

    def __init__(self, every_s: float = 0.05) -> None:
        self.peak = 0
        self._every = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self._sample()

    def _sample(self) -> None:
        try:
            import psutil
        except ImportError:  # without psutil only this process's own peak is known
            self.peak = max(self.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10)
            return
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)


def _open(path: Path):
    from tracelens.importers.sources import Source, open_source

    return open_source(Source(str(path), path, path.stat().st_size))


def run_stage(stage: str, path: Path, workers: int | None) -> dict:
    """One measurement, in this process. Returns spans, wall, cpu and peak RSS."""
    from tracelens import importers

    prepared = None
    if stage == "store only":
        with _open(path) as stream:
            prepared = list(importers.read(stream, str(path), "jaeger-json"))
    db = Path(tempfile.mkdtemp(prefix="tracelens-bench-")) / "bench.duckdb"
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with RssPeak() as rss:
        wall, cpu = time.perf_counter(), _cpu()
        spans = _stage_body(stage, path, db, prepared, workers)
        wall, cpu = time.perf_counter() - wall, _cpu() - cpu
    for leftover in db.parent.iterdir():
        leftover.unlink()
    db.parent.rmdir()
    return {
        "stage": stage,
        "spans": spans,
        "wall": wall,
        "cpu": cpu,
        "rss_mb": rss.peak / 2**20,
        "rss_before_mb": rss_before,
    }


def _stage_body(stage: str, path: Path, db: Path, prepared: list | None, workers: int | None):
    from tracelens import importers
    from tracelens.ingest import import_paths
    from tracelens.store import Store

    if stage in ("parse", "parse (typed)"):
        return _parse_only(path, typed=stage == "parse (typed)")
    if stage == "import":
        with _open(path) as stream:
            return sum(b.num_rows for b in importers.read(stream, str(path), "jaeger-json"))
    with Store(db) as store:
        if stage == "store only":
            return store.write(prepared).received  # type: ignore[arg-type]
        count = 0 if stage == "import+store (1 process)" else workers
        return import_paths(store, [str(path)], "jaeger-json", workers=count).spans


def _parse_only(path: Path, typed: bool) -> int:
    import orjson

    from tracelens.importers.jaeger_json import _DATA_ARRAY
    from tracelens.importers.jaeger_structs import Trace, decode_structs
    from tracelens.importers.jsonstream import ArrayStream
    from tracelens.importers.sources import peek
    from tracelens.model import gc_paused

    spans = 0
    decode = decode_structs if typed else orjson.loads
    with _open(path) as stream, gc_paused():
        opening = _DATA_ARRAY.match(peek(stream))
        if not opening:
            raise SystemExit(f'{path}: not a {{"data":[…]}} Jaeger export')
        for _, trace in ArrayStream(stream, str(path), opening.group(0), decode=decode):
            if type(trace) is Trace:
                spans += len(trace.spans or ())
            else:
                spans += len(trace.get("spans") or ())
    return spans


def measure(stage: str, path: Path, workers: int | None) -> dict:
    """Run one stage in a fresh interpreter and read its JSON line."""
    command = [sys.executable, __file__, "--stage", stage, "--file", str(path)]
    if workers is not None:
        command += ["--workers", str(workers)]
    load = os.getloadavg()[0]
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=1800)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["load"] = (load, os.getloadavg()[0])
    return result


def table(results: list[dict], size: int) -> str:
    lines = [
        "| stage | MB/s | spans/s | wall s | CPU s | CPU µs/span | peak RSS MB | load |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['stage']} | {size / r['wall'] / 1e6:.1f} | {r['spans'] / r['wall']:,.0f} | "
            f"{r['wall']:.2f} | {r['cpu']:.2f} | {r['cpu'] / r['spans'] * 1e6:.1f} | "
            f"{r['rss_mb']:.0f} | {r['load'][0]:.1f} / {r['load'][1]:.1f} |"
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
    parser.add_argument("--workers", type=int, help="worker processes (default: tracelens's)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage here
    args = parser.parse_args(argv)
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.file, args.workers)))
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
        runs = [measure(stage.strip(), path, args.workers) for _ in range(max(1, args.repeat))]
        results.append(min(runs, key=lambda r: r["wall"]))
        print(f"{stage}: {results[-1]}", file=sys.stderr)
    from tracelens.ingest import default_workers

    workers = default_workers() if args.workers is None else args.workers
    print(
        f"{path.name}: {size / 1e6:.1f} MB, {results[0]['spans']:,} spans, "
        f"{os.cpu_count()} CPUs, {workers} import worker process(es)\n"
    )
    print(table(results, size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
