"""The DuckDB store: schema, atomic writes, dedupe, lookups, listing, parameterized queries."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from tracelens import store as store_module
from tracelens.errors import StoreError
from tracelens.model import SPAN_SCHEMA, SpanBatchBuilder, spans_from_table
from tracelens.store import Store

RES = {"service.name": "orders-api", "host.name": "h1"}


def _batch(
    trace: str,
    n: int,
    *,
    start: int = 0,
    dur: int = 10,
    service: dict = RES,
    error_at: int | None = None,
) -> pa.RecordBatch:
    b = SpanBatchBuilder()
    for i in range(n):
        b.add(
            trace_id=trace,
            span_id=f"{i + 1:016x}",
            parent_span_id=None if i == 0 else f"{1:016x}",
            name="root" if i == 0 else "SELECT",
            kind=2 if i == 0 else 3,
            start_ns=start + i,
            end_ns=start + i + dur * (n - i),
            attributes={
                "db.system": "postgresql",
                "db.statement": f"SELECT x FROM t WHERE id={i}",
                "n": i,
                "ok": True,
                "ratio": 0.5,
                "tags": ["a", "b"],
            },
            resource=service,
            status_code=2 if i == error_at else 0,
            events=[{"time_ns": start, "name": "e", "attributes": {"k": 1}}],
        )
    batch = b.flush()
    assert batch is not None and batch.schema == SPAN_SCHEMA
    return batch


def test_write_dedupes_and_reads_back_typed(store: Store) -> None:
    t = "ab" * 16
    assert store.write([_batch(t, 5)]).inserted == 5
    again = store.write([_batch(t, 5)])
    assert (again.received, again.inserted) == (5, 0)
    spans = spans_from_table(store.get_trace(t.upper()))
    assert [s.span_id for s in spans] == [f"{i + 1:016x}" for i in range(5)]
    second = spans[1]
    assert second.attributes == {
        "db.system": "postgresql",
        "db.statement": "SELECT x FROM t WHERE id=1",
        "n": 1,
        "ok": True,
        "ratio": 0.5,
        "tags": ["a", "b"],
    }
    assert second.db_fingerprint == "SELECT x FROM t WHERE id=?"
    assert second.events == [{"time_ns": 0, "name": "e", "attributes": {"k": 1}}]
    assert spans[0].parent_span_id is None


@pytest.mark.parametrize(
    ("probe_ids", "rows_per_id"),
    [(256, 0), (2, 0), (256, 10**12), (512, 500)],
    ids=["probe", "chunks", "scan", "by cost"],
)
def test_dedupe_keeps_one_row_whichever_way_stored_ids_are_found(
    store: Store, monkeypatch: pytest.MonkeyPatch, probe_ids: int, rows_per_id: int
) -> None:
    """Index probes (in chunks) or a semi-join scan of the trace_id column: same rows."""
    monkeypatch.setattr(store_module, "PROBE_IDS", probe_ids)
    monkeypatch.setattr(store_module, "PROBE_ROWS_PER_ID", rows_per_id)
    old = [f"{i:032x}" for i in range(1, 6)]
    assert store.write([_batch(t, 3) for t in old]).inserted == 15
    mixed = [_batch(t, 4) for t in old[1:4] + [f"{i:032x}" for i in range(50, 53)]]
    again = store.write([*mixed, _batch(old[0], 2)])  # 3 old traces grew a span; 3 new
    assert (again.received, again.inserted) == (26, 3 + 12)
    assert store.count_spans() == 30
    assert (
        store.query("SELECT count(*) FROM (SELECT DISTINCT trace_id, span_id FROM spans)")
        .column(0)[0]
        .as_py()
        == 30
    )


def test_failed_iterator_rolls_back_everything(store: Store) -> None:
    store.write([_batch("01" * 16, 3)])

    def batches():
        yield _batch("02" * 16, 4)
        raise ValueError("bad input half-way")

    with pytest.raises(ValueError):
        store.write(batches())
    assert store.count_spans() == 3
    assert store.get_trace("02" * 16).num_rows == 0


def test_list_traces_slowest_first_with_filters(store: Store) -> None:
    store.write(
        [
            _batch("01" * 16, 3, dur=10),
            _batch("02" * 16, 3, dur=50, error_at=1),
            _batch("03" * 16, 2, dur=5, service={"service.name": "billing"}),
        ]
    )
    rows = store.list_traces()
    assert [r.trace_id for r in rows] == ["02" * 16, "01" * 16, "03" * 16]
    assert rows[0].error_count == 1 and rows[0].span_count == 3 and rows[0].name == "root"
    assert [r.trace_id for r in store.list_traces(service="billing")] == ["03" * 16]
    assert store.list_traces(operation="nope") == []
    assert len(store.list_traces(limit=1)) == 1
    assert store.count_traces() == 3


def test_time_window_keeps_whole_traces(store: Store) -> None:
    store.write([_batch("01" * 16, 3, start=1_000), _batch("02" * 16, 3, start=5_000)])
    assert [r.trace_id for r in store.list_traces(since_ns=2_000)] == ["02" * 16]
    assert store.scan(["trace_id"], until_ns=2_000).num_rows == 3
    assert store.scan(["span_id"], trace_ids=["02" * 16]).num_rows == 3


def test_scan_rejects_unknown_columns(store: Store) -> None:
    with pytest.raises(StoreError, match="unknown span columns: nope"):
        store.scan(["trace_id", "nope"])


def test_values_are_parameters_not_sql(store: Store) -> None:
    store.write([_batch("01" * 16, 2)])
    assert store.get_trace("x' OR '1'='1").num_rows == 0
    assert store.list_traces(service="' OR 1=1 --") == []


def test_read_only_missing_file_and_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such store"):
        Store(tmp_path / "absent.duckdb", read_only=True)
    junk = tmp_path / "junk.duckdb"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError):
        Store(junk)


def test_reopen_keeps_data_and_json_columns_are_queryable(db_path: Path) -> None:
    with Store(db_path) as s:
        s.write([_batch("01" * 16, 2)])
    with Store(db_path, read_only=True) as s:
        got = s.query("SELECT attributes->>'db.system' AS sys FROM spans LIMIT 1").to_pylist()
        assert got == [{"sys": "postgresql"}]


def test_get_trace_spans_equals_the_arrow_path(store: Store) -> None:
    store.write([_batch("ab" * 16, 4, error_at=2)])
    assert store.get_trace_spans("AB" * 16) == spans_from_table(store.get_trace("ab" * 16))
    assert store.get_trace_spans("cd" * 16) == []


def test_explain_imports_neither_pyarrow_nor_the_duckdb_package(db_path: Path) -> None:
    """Cold-start budget: pyarrow (≈ 150 ms) and the ``duckdb`` package's Python parts
    (≈ 150 ms) stay out of a plain explain; the DuckDB extension alone serves it."""
    import subprocess
    import sys

    with Store(db_path) as s:
        s.write([_batch("ab" * 16, 3)])
    code = (
        "import sys; from tracelens.store import Store; from tracelens.explain import explain;"
        f"explain(Store({str(db_path)!r}, read_only=True), {'ab' * 16!r}, with_findings=False);"
        "print('pyarrow' in sys.modules, 'duckdb' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
