"""lock_contention: convoys on a hot row, an application lock span or an untraced lock (a gap
before the span) fire; distinct rows, pool waits, sequential loops and a single trace stay
silent."""

from __future__ import annotations

import pyarrow as pa
import pytest
from synth import CLIENT, SERVER, Traces, rule, trace_id

from tracelens.analyze import analyze
from tracelens.detectors import lock_contention
from tracelens.detectors.base import StoreContext
from tracelens.model import Finding

HOTROD = "otlp-json/jaeger_hotrod_n_plus_one_full_concurrent.json"
HOLD = 25.0  # ms a holder keeps the lock
EXEC = 0.5  # ms of an uncontended statement
FOR_UPDATE = "SELECT balance FROM accounts WHERE id = {row} FOR UPDATE"
UPDATE = "UPDATE accounts SET balance = balance - 1 WHERE id = {row}"


def detect(t: Traces, **params) -> list[Finding]:
    import polars as pl

    from tracelens.endpoints import trace_table

    t.spans(0)  # flushes the builder
    spans = pl.from_arrow(pa.Table.from_batches(t.batches))
    ctx = StoreContext(spans, trace_table(spans), lambda tid: None)
    return lock_contention.detect(ctx, rule("lock-contention", **params))


def debits(
    t: Traces, arrivals: list[float], rows: list[int], first_trace: int = 1, literal: bool = False
) -> None:
    """accounts-api: SELECT … FOR UPDATE, a 25 ms check holding the row lock, UPDATE, commit.
    Waiters on a row get it in arrival order, 0.1 ms after the holder's commit."""
    free: dict[int, float] = {}
    for n, (arrival, row) in enumerate(zip(arrivals, rows, strict=True), first_trace):
        asked = arrival + 1
        granted = max(asked, free.get(row, 0.0) + 0.1)
        select_end = granted + EXEC
        update_start = select_end + HOLD
        commit = update_start + 1 + 0.3
        free[row] = commit
        root = t.span(
            n,
            None,
            "POST /accounts/{id}/debit",
            arrival,
            commit + 1 - arrival,
            "accounts",
            kind=SERVER,
        )
        fmt = {"row": row if literal else "%s"}
        t.db(n, root, FOR_UPDATE.format(**fmt), asked, select_end - asked, "accounts")
        t.db(n, root, UPDATE.format(**fmt), update_start, 1, "accounts")


def test_hot_row_convoy() -> None:
    t = Traces()
    debits(t, [i * 1.0 for i in range(6)], [7] * 6)
    [f] = detect(t)
    assert (f.kind, f.service, f.operation) == (
        "lock_contention",
        "accounts",
        "POST /accounts/{id}/debit",
    )
    assert f.resource == "postgresql://db SELECT balance FROM accounts WHERE id = ? FOR UPDATE"
    d = f.details
    assert d["shape"] == "inside" and d["longest_convoy"] == 6 and d["waiters"] == 5
    assert d["chained"] == 5 and d["baseline_ms"] == pytest.approx(EXEC, abs=0.01)
    assert d["staircase_rho"] > 0.9  # the k-th waiter waits k holds
    assert d["hold_ms"] == pytest.approx(HOLD + 1.3 + 0.1 + EXEC - 1, abs=1.5)
    # Waiter k (1..5) lasted about k x 26.4 ms - k ms of later arrival.
    assert f.impact_ms == pytest.approx(sum(k * (HOLD + 1.4) - k for k in range(1, 6)), rel=0.05)
    assert len(f.trace_ids) == 6 and f.count == 5
    assert "convoys of up to 6" in f.summary


def test_literal_row_values_name_the_row() -> None:
    t = Traces()
    debits(t, [i * 1.0 for i in range(4)], [7] * 4, literal=True)
    [f] = detect(t)
    assert f.resource.endswith("WHERE id = ? FOR UPDATE [7]")


def test_two_hot_rows_are_two_resources() -> None:
    t = Traces()
    debits(t, [i * 1.0 for i in range(8)], [1, 2] * 4, literal=True)
    found = detect(t)
    assert sorted(f.resource[-3:] for f in found) == ["[1]", "[2]"]
    assert all(f.details["longest_convoy"] == 4 for f in found)


def test_distinct_rows_stay_silent() -> None:
    t = Traces()
    debits(t, [i * 1.0 for i in range(8)], list(range(8)))
    assert detect(t) == []


def test_convoy_length_threshold() -> None:
    t = Traces()
    debits(t, [0.0, 1.0], [7, 7])  # one waiter: a convoy of 2
    assert detect(t) == []
    assert detect(t, min_convoy=2, min_lost_ms=10.0)


def test_application_lock_span() -> None:
    t = Traces()
    free = 0.0
    for n in range(1, 6):
        arrival = n * 1.0
        granted = max(arrival + 1, free + 0.1)
        root = t.span(
            n, None, "POST /rebalance", arrival, granted + 30 - arrival, "ledger", kind=SERVER
        )
        t.span(n, root, "acquire_lock ledger", arrival + 1, granted - arrival - 1, "ledger")
        t.span(n, root, "rebalance", granted, HOLD, "ledger")
        free = granted + HOLD
    [f] = detect(t)
    assert f.resource == "ledger acquire_lock ledger" and f.details["longest_convoy"] == 5


def reservations(t: Traces, arrivals: list[float], first_trace: int = 1) -> None:
    """An untraced threading.Lock around ``reserve_stock``: the wait is a gap before it."""
    free = 0.0
    for n, arrival in enumerate(arrivals, first_trace):
        start = max(arrival + 0.5, free + 0.1)
        free = start + HOLD
        root = t.span(
            n,
            None,
            "POST /reservations/{sku}",
            arrival,
            free + 1 - arrival,
            "reservations",
            kind=SERVER,
        )
        t.span(
            n,
            root,
            "reserve_stock",
            start,
            HOLD,
            "reservations",
            attrs={"app.lock": "reservation_book"},
        )


def test_untraced_lock_shows_as_gaps() -> None:
    t = Traces()
    reservations(t, [i * 2.0 for i in range(6)])
    [f] = detect(t)
    assert f.resource == "reservations reserve_stock" and f.details["shape"] == "gap"
    assert f.details["longest_convoy"] == 6 and f.count == 5
    assert f.details["hold_ms"] == pytest.approx(HOLD)
    # Request k arrived at 2k ms and started at 0.5 + 25.1k: k holders ran meanwhile, with
    # 0.1 ms handoffs between them (nobody held the lock then): a wait of 0.5 + 23k ms.
    assert f.impact_ms == pytest.approx(sum(0.5 + 23 * k for k in range(1, 6)), abs=0.01)
    assert "as a gap before the span" in f.summary


def test_spaced_requests_never_wait() -> None:
    t = Traces()
    reservations(t, [i * 40.0 for i in range(6)])  # each arrives after the last one left
    debits(t, [i * 40.0 for i in range(6)], [7] * 6, first_trace=10)
    assert detect(t) == []


def test_sequential_loop_in_one_trace_is_not_a_lock() -> None:
    t = Traces()
    root = t.span(1, None, "job", 0, 300, "worker", kind=SERVER)
    for i in range(8):
        t.span(1, root, "step", 1 + i * 30, 29.9, "worker")
        t.db(1, root, UPDATE.format(row=1), 2 + i * 30, 20, "worker")
    assert detect(t) == []


def test_a_pool_wait_is_not_a_lock() -> None:
    # Eight requests through two pooled connections: the wait is in the connect span, and the
    # queries themselves never wait.
    t = Traces()
    free = [0.0, 0.0]
    for n in range(1, 9):
        arrival = n * 2.0
        slot = min(range(2), key=lambda i: free[i])
        got = max(arrival + 1, free[slot] + 0.2)
        root = t.span(n, None, "GET /stock", arrival, got + 45 - arrival, "inventory", kind=SERVER)
        t.span(
            n,
            root,
            "connect",
            arrival + 1,
            got - arrival - 1,
            "inventory",
            kind=CLIENT,
            attrs={"db.system": "postgresql", "server.address": "db"},
        )
        t.db(n, root, "SELECT qty FROM stock WHERE sku = 'a'", got + 0.1, 0.5, "inventory")
        t.db(n, root, "SELECT pg_sleep(0.04)", got + 0.7, 40, "inventory")
        free[slot] = got + 40.8
    assert detect(t) == []


def test_analyze_reports_it(store) -> None:
    t = Traces()
    debits(t, [i * 1.0 for i in range(5)], [7] * 5)
    t.write(store)
    [f] = analyze(store, [rule("lock-contention")]).findings
    assert f.kind == "lock_contention" and trace_id(5) in f.trace_ids


def test_hotrod_single_trace_shows_no_lock(corpus) -> None:
    import polars as pl

    from tracelens.endpoints import trace_table
    from tracelens.importers import otlp_json

    path = corpus / HOTROD
    with path.open("rb") as stream:
        spans = pl.from_arrow(pa.Table.from_batches(list(otlp_json.read(stream, str(path)))))
    ctx = StoreContext(spans, trace_table(spans), lambda tid: None)
    assert lock_contention.detect(ctx, rule("lock-contention")) == []


@pytest.mark.parametrize(
    ("name", "is_lock"),
    [
        ("acquire_lock", True),
        ("acquireLock", True),
        ("RLock", True),
        ("with mutex", True),
        ("Semaphore.acquire", True),
        ("redis.lock", True),
        ("Clock sync", False),
        ("block_io", False),
        ("unlocked_read", False),
        ("connect", False),
    ],
)
def test_lock_span_names(name: str, is_lock: bool) -> None:
    assert lock_contention.is_lock_name(name) is is_lock


@pytest.mark.parametrize(
    ("statement", "values"),
    [
        ("SELECT * FROM a WHERE id = 7 FOR UPDATE", "7"),
        ("select * from a where id = 7 and k = 'x' for no key update", "7,'x'"),
        ("UPDATE a SET n = n + 1 WHERE id = 42", "42"),
        ("DELETE FROM a WHERE id = %s", ""),
        ("SELECT * FROM a WHERE id = 7", ""),  # not row-locking
        ("UPDATE a SET n = 0", ""),  # the whole table: no row values
    ],
)
def test_row_values(statement: str, values: str) -> None:
    assert lock_contention.row_values(statement) == values


def test_explain_finds_the_convoy_through_overlapping_traces(store) -> None:
    from tracelens.explain import explain

    t = Traces()
    debits(t, [i * 1.0 for i in range(5)], [7] * 5)
    t.write(store)
    result = explain(store, trace_id(4), rules=[rule("lock-contention")])
    [f] = result.findings
    assert f.kind == "lock_contention" and trace_id(4) in f.trace_ids
