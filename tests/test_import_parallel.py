"""Large-file import across processes: raw runs, rewinding, worker pools, and what the store
does with the result (dedupe without a primary key, all-or-nothing per file)."""

from __future__ import annotations

import importlib.util
import io
import os
from concurrent.futures import Future
from functools import partial
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa
import pytest
from conftest import REPO

from tracelens import ingest
from tracelens.errors import InputFormatError
from tracelens.importers import jaeger_json
from tracelens.importers.jsonstream import ArrayStream, farm_out
from tracelens.model import SPAN_SCHEMA, SpanBatchBuilder
from tracelens.store import Store

OPENING = b'{"data":['


def _generate(path: Path, mb: float, seed: int = 11, indent: bool = False) -> tuple[int, int]:
    spec = importlib.util.spec_from_file_location(
        "gen_jaeger", REPO / "benchmarks" / "gen_jaeger.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.generate(path, mb, seed=seed, indent=indent)


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("gen") / "gen.json"
    _generate(path, 0.4)
    return path.read_bytes()


def _stream(data: bytes) -> io.BufferedReader:
    return io.BufferedReader(io.BytesIO(data))


def _table(batches) -> pa.Table:
    return pa.Table.from_batches(list(batches), schema=SPAN_SCHEMA)


def _in_process(fn, *args) -> Future:
    """A ``submit`` that runs the job at once (what a worker would return, no process)."""
    future: Future = Future()
    try:
        future.set_result(fn(*args))
    except Exception as exc:  # noqa: BLE001
        future.set_exception(exc)
    return future


def _read_parallel(data: bytes, submit=_in_process, source: str = "t.json") -> pa.Table:
    return _table(jaeger_json.read_parallel(_stream(data), source, submit, ahead=3))


# --- runs and rewinding ---------------------------------------------------------------------------


def test_runs_are_whole_elements_and_iteration_goes_on_after_them(export):
    elements = ArrayStream(_stream(export), "t.json", OPENING)
    runs = list(elements.runs(20_000))
    assert len(runs) > 5
    expected = orjson.loads(export)["data"]
    parsed = [t for run in runs for t in orjson.loads(b"[" + run.data + b"]")]
    assert parsed == expected[: len(parsed)]
    assert runs[0].offset == len(OPENING)
    for run, following in zip(runs, runs[1:], strict=False):  # contiguous: run, comma, run
        assert following.offset == run.offset + len(run.data) + 1
    elements.rewind(elements.position, len(parsed), b"")
    rest = list(elements)
    assert [i for i, _ in rest] == list(range(len(parsed), len(expected)))
    assert [t for _, t in rest] == expected[len(parsed) :]
    assert elements.tail["total"] == 0


def test_rewind_to_a_run_reads_from_there_on(export):
    elements = ArrayStream(_stream(export), "t.json", OPENING)
    runs = list(elements.runs(20_000))
    before = sum(len(orjson.loads(b"[" + r.data + b"]")) for r in runs[:2])
    elements.rewind(runs[2].offset, before, b"".join(r.data + b"," for r in runs[2:]))
    expected = orjson.loads(export)["data"]
    assert [t for _, t in elements] == expected[before:]


def test_rewind_refuses_bytes_that_do_not_end_where_the_runs_stopped(export):
    elements = ArrayStream(_stream(export), "t.json", OPENING)
    runs = list(elements.runs(20_000))
    with pytest.raises(ValueError):
        elements.rewind(runs[0].offset, 0, runs[0].data)


def test_no_runs_without_a_signature_everything_is_read_in_order():
    doc = orjson.dumps({"data": [[1, 2], [3]] * 50})  # arrays, not objects: no signature
    elements = ArrayStream(_stream(doc), "t.json", OPENING)
    assert list(elements.runs(64)) == []
    assert [v for _, v in elements] == [[1, 2], [3]] * 50


# --- read_parallel equals read --------------------------------------------------------------------


@pytest.mark.parametrize("indent", [False, True])
def test_parallel_read_equals_sequential_read(tmp_path, monkeypatch, indent):
    path = tmp_path / "gen.json"
    _generate(path, 0.3, seed=5, indent=indent)
    data = path.read_bytes()
    monkeypatch.setattr(jaeger_json, "RUN_BYTES", 16_384)
    calls = []

    def submit(fn, *args):
        calls.append(len(args[0]))
        return _in_process(fn, *args)

    parallel = _read_parallel(data, submit)
    assert len(calls) > 3  # most of the file went through runs
    assert parallel.equals(_table(jaeger_json.read(_stream(data), "t.json")))


def test_a_bad_cut_is_read_again_in_order(monkeypatch):
    # A tag value holding objects that start like a trace fools the signature (strings cannot:
    # their quotes are escaped); the worker's parse of that run fails and the run is read here,
    # so nothing is lost or invented.
    lookalike = [{"traceID": "ff", "spans": []}] * 40
    spans = [
        {
            "traceID": f"{i:032x}",
            "spanID": f"{j + 1:016x}",
            "operationName": "op",
            "startTime": 1,
            "duration": 2,
            "tags": [{"key": "note", "type": "string", "value": lookalike}],
        }
        for i in range(60)
        for j in range(3)
    ]
    traces = [{"traceID": f"{i:032x}", "spans": spans[3 * i : 3 * i + 3]} for i in range(60)]
    data = orjson.dumps({"data": traces})
    monkeypatch.setattr(jaeger_json, "RUN_BYTES", 3_000)
    failures = []

    def submit(fn, *args):
        future = _in_process(fn, *args)
        if future.result() is None:
            failures.append(1)
        return future

    assert _read_parallel(data, submit).equals(_table(jaeger_json.read(_stream(data), "t.json")))
    assert failures  # the lookalike really produced a bad cut


def _same_error_both_ways(data: bytes) -> str:
    """The error reading ``data`` in one process and with workers; they must be the same."""
    with pytest.raises(InputFormatError) as sequential:
        _table(jaeger_json.read(_stream(data), "t.json"))
    with pytest.raises(InputFormatError) as parallel:
        _read_parallel(data)
    assert str(parallel.value) == str(sequential.value)
    return str(parallel.value)


def test_a_bad_trace_is_named_as_without_workers(export, monkeypatch):
    doc = orjson.loads(export)
    bad = len(doc["data"]) - 4  # after several runs
    doc["data"][bad]["spans"][1].pop("startTime")
    data = orjson.dumps(doc)
    monkeypatch.setattr(jaeger_json, "RUN_BYTES", 16_384)
    message = _same_error_both_ways(data)
    assert f"data[{bad}].spans[1]: missing field 'startTime'" in message


def test_broken_json_after_the_runs_names_the_byte(export, monkeypatch):
    data = export[: len(export) // 2] + b"}" + export[len(export) // 2 :]
    monkeypatch.setattr(jaeger_json, "RUN_BYTES", 16_384)
    _same_error_both_ways(data)


def test_failing_workers_leave_the_work_to_this_process(export, monkeypatch):
    monkeypatch.setattr(jaeger_json, "RUN_BYTES", 16_384)

    def broken(fn, *args):
        future: Future = Future()
        future.set_exception(RuntimeError("import worker died"))
        return future

    def refusing(fn, *args):
        raise RuntimeError("every import worker process has died")

    expected = _table(jaeger_json.read(_stream(export), "t.json"))
    assert _read_parallel(export, broken).equals(expected)
    assert _read_parallel(export, refusing).equals(expected)


def test_farm_out_stops_its_thread_when_the_consumer_stops(export):
    elements = ArrayStream(_stream(export), "t.json", OPENING)
    work = partial(jaeger_json.read_run, source="t.json")
    payloads = farm_out(elements, work, _in_process, run_bytes=16_384, ahead=2)
    next(payloads)
    payloads.close()  # the finally block joins the feeder thread; nothing hangs


# --- real worker processes ------------------------------------------------------------------------


def test_worker_processes_return_results_and_report_errors():
    with ingest.Workers(2) as workers:
        assert workers.submit(sorted, [3, 1, 2]).result(timeout=60) == [1, 2, 3]
        with pytest.raises(RuntimeError, match="ValueError"):
            workers.submit(int, "x").result(timeout=60)


def test_a_killed_worker_fails_its_job_and_then_the_pool_refuses():
    with ingest.Workers(1) as workers:
        assert workers.submit(abs, -1).result(timeout=60) == 1
        workers._procs[0].kill()
        with pytest.raises(RuntimeError, match="died"):
            workers.submit(abs, -2).result(timeout=60)
        with pytest.raises(RuntimeError, match="died"):
            workers.submit(abs, -3)


def test_import_with_workers_equals_import_without(tmp_path, monkeypatch):
    path = tmp_path / "gen.json"
    _, spans = _generate(path, 0.6, seed=9)
    monkeypatch.setattr(ingest, "PARALLEL_BYTES", 0)
    monkeypatch.setattr(jaeger_json, "RUN_BYTES", 64_000)
    tables = []
    for workers in (0, 2):
        with Store(tmp_path / f"w{workers}.duckdb") as store:
            report = ingest.import_paths(store, [str(path)], workers=workers)
            assert report.spans == report.inserted == spans == store.count_spans()
            tables.append(store.scan())
    assert tables[0].equals(tables[1])


def test_gzip_input_is_sized_by_its_trailer_and_imports_with_workers(tmp_path, monkeypatch):
    import gzip

    from tracelens.importers.sources import expand

    plain = tmp_path / "gen.json"
    _, spans = _generate(plain, 0.5, seed=4)
    packed = tmp_path / "gen.json.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert ingest._input_bytes(expand([str(packed)])[0]) == plain.stat().st_size
    assert ingest._input_bytes(expand([str(plain)])[0]) == plain.stat().st_size
    monkeypatch.setattr(ingest, "PARALLEL_BYTES", plain.stat().st_size)  # only the .gz qualifies
    monkeypatch.setattr(jaeger_json, "RUN_BYTES", 64_000)
    runs = []
    farm = jaeger_json.farm_out

    def counting(*args, **kwargs):
        for payload in farm(*args, **kwargs):
            runs.append(1)
            yield payload

    monkeypatch.setattr(jaeger_json, "farm_out", counting)
    with Store(tmp_path / "gz.duckdb") as store:
        assert ingest.import_paths(store, [str(packed)], workers=1).inserted == spans
    assert runs


def test_a_bad_file_with_workers_leaves_the_store_unchanged(tmp_path, monkeypatch):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    _generate(good, 0.2, seed=1)
    _generate(bad, 0.4, seed=2)
    doc = orjson.loads(bad.read_bytes())
    doc["data"][-3]["spans"][0]["spanID"] = None  # late in the file: runs before it are stored
    bad.write_bytes(orjson.dumps(doc))
    monkeypatch.setattr(ingest, "PARALLEL_BYTES", 0)
    monkeypatch.setattr(jaeger_json, "RUN_BYTES", 32_000)
    monkeypatch.setattr("tracelens.store.INSERT_ROWS", 500)  # several INSERTs before the error
    with Store(tmp_path / "s.duckdb") as store:
        ingest.import_paths(store, [str(good)], workers=2)
        before = store.count_spans()
        with pytest.raises(InputFormatError, match=r"bad\.json at data\[\d+\]\.spans\[0\]: bad id"):
            ingest.import_paths(store, [str(bad)], workers=2)
        assert store.count_spans() == before


def test_default_workers_fit_the_machine():
    assert 0 <= ingest.default_workers() <= ingest.MAX_WORKERS
    assert ingest.default_workers() == 0 or (os.cpu_count() or 1) > 1


# --- the store's dedupe ---------------------------------------------------------------------------


def _spans(trace: str, ids: list[int], name: str = "op") -> pa.RecordBatch:
    builder = SpanBatchBuilder()
    for i in ids:
        builder.add(
            trace_id=trace,
            span_id=f"{i:016x}",
            parent_span_id=None,
            name=name,
            kind=1,
            start_ns=i,
            end_ns=i + 1,
            attributes={},
            resource={"service.name": "s"},
        )
    return builder.flush()  # type: ignore[return-value]


def test_repeats_within_a_write_keep_the_first_row(store):
    t = "ab" * 16
    stats = store.write([_spans(t, [1, 2], "first"), _spans(t, [2, 3], "second")])
    assert (stats.received, stats.inserted) == (4, 3)
    names = {r["span_id"][-1]: r["name"] for r in store.get_trace(t).to_pylist()}
    assert names == {"1": "first", "2": "first", "3": "second"}


def test_rows_already_stored_are_skipped_and_new_ones_of_the_trace_kept(store, monkeypatch):
    monkeypatch.setattr("tracelens.store.INSERT_ROWS", 2)  # one INSERT per batch
    t, u = "cd" * 16, "ef" * 16
    store.write([_spans(t, [1, 2])])
    stats = store.write([_spans(u, [1]), _spans(t, [2, 3], "late"), _spans(u, [1], "again")])
    assert (stats.received, stats.inserted) == (4, 2)
    assert sorted(r["name"] for r in store.get_trace(t).to_pylist()) == ["late", "op", "op"]
    assert [r["name"] for r in store.get_trace(u).to_pylist()] == ["op"]


def test_a_store_with_the_old_primary_key_still_dedupes(db_path):
    from tracelens.store import _create_table_sql

    con = duckdb.connect(str(db_path))
    con.execute(
        _create_table_sql().replace("span_key UBIGINT NOT NULL", "span_key UBIGINT PRIMARY KEY")
    )
    con.close()
    with Store(db_path) as store:
        assert store._keyed
        t = "01" * 16
        assert store.write([_spans(t, [1, 2])]).inserted == 2
        assert store.write([_spans(t, [2, 3])]).inserted == 1
        assert store.count_spans() == 3


def test_a_new_store_has_no_primary_key_but_the_trace_id_index(store):
    assert not store._keyed
    indexes = store.con.execute("SELECT index_name FROM duckdb_indexes()").fetchall()
    assert ("spans_trace_id",) in indexes


def _threads(store: Store) -> int:
    return int(store.con.execute("SELECT current_setting('threads')").fetchall()[0][0])


def _memory_limit(store: Store) -> str:
    return store.con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]


def test_a_large_write_inserts_with_one_thread_and_restores_the_setting(store, monkeypatch):
    monkeypatch.setattr("tracelens.store.INSERT_ROWS", 2)
    store.con.execute("SET threads = 3")  # as the receiver tunes its store: kept exactly
    before, limit = _threads(store), _memory_limit(store)
    seen = []
    insert = Store._insert

    def spy(self, batches):
        seen.append(_threads(self))
        return insert(self, batches)

    monkeypatch.setattr(Store, "_insert", spy)
    store.write([_spans("01" * 16, [1, 2]), _spans("02" * 16, [1])])
    assert seen == [1, 1] and _threads(store) == before and _memory_limit(store) == limit

    def failing():
        yield _spans("03" * 16, [1, 2])
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        store.write(failing())
    assert _threads(store) == before and _memory_limit(store) == limit
    assert store.count_spans() == 3
    monkeypatch.setattr("tracelens.store.INSERT_ROWS", 1_000)
    seen.clear()
    store.write([_spans("04" * 16, [1])])  # a small write keeps every thread
    assert seen == [before]
