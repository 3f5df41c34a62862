"""pool_wait: a ceiling of K with queueing fires (within one trace, across traces, explicit
pool checkout spans); ample pools, healthy fan-outs, sequential loops, slow connection set-up
and single-slot serialization (a lock) stay silent."""

from __future__ import annotations

import heapq

import pyarrow as pa
import pytest
from synth import CLIENT, SERVER, Traces, rule, trace_id

from tracelens.analyze import analyze
from tracelens.detectors import pool_wait
from tracelens.detectors.base import StoreContext
from tracelens.model import Finding

HOTROD = "otlp-json/jaeger_hotrod_n_plus_one_full_concurrent.json"
DB = {"db.system": "postgresql", "server.address": "db"}
HANDOFF = 0.2  # ms between a slot freeing and the next waiter going


def schedule(ready: list[float], durations: list[float], k: int) -> list[float]:
    """Start times of FIFO work on k slots: at once when a slot is free, else at a release."""
    free: list[float] = [0.0] * k
    starts = []
    for at in ready:
        slot = heapq.heappop(free)
        start = at if slot <= at else slot + HANDOFF
        starts.append(start)
        heapq.heappush(free, start + durations[len(starts) - 1])
    return starts


def detect(t: Traces, **params) -> list[Finding]:
    import polars as pl

    from tracelens.endpoints import trace_table

    t.spans(0)  # flushes the builder
    spans = pl.from_arrow(pa.Table.from_batches(t.batches))
    ctx = StoreContext(spans, trace_table(spans), lambda tid: None)
    return pool_wait.detect(ctx, rule("pool-wait", **params))


def fan_out(t: Traces, trace: int, n: int, k: int, durations: list[float]) -> None:
    """One request sends n calls to one downstream through a k-worker pool (HotROD -W 3)."""
    root = t.span(trace, None, "GET /dispatch", 0, 1000, "frontend", kind=SERVER)
    t.span(
        trace,
        root,
        "FindNearest",
        1,
        20,
        "frontend",
        kind=CLIENT,
        attrs={"rpc.system": "grpc", "rpc.method": "FindNearest", "server.address": "driver"},
    )
    starts = schedule([21.0] * n, durations, k)
    for i, (start, dur) in enumerate(zip(starts, durations, strict=True)):
        t.http(trace, root, f"http://route:8083/route?pickup={i}", start, dur, "frontend")


def requests(
    t: Traces,
    arrivals: list[float],
    k: int,
    dur: float = 40.0,
    explicit: bool = False,
    service: str = "inventory",
) -> None:
    """One query per request through a pool of k connections; explicit: a ``connect`` span
    (SQLAlchemy's checkout) holds the wait, else the wait is a gap before the query."""
    ready = [a + 1 for a in arrivals]
    starts = schedule(ready, [dur + 0.3] * len(ready), k)
    for n, (arrival, start) in enumerate(zip(arrivals, starts, strict=True), 1):
        root = t.span(
            n, None, "GET /stock", arrival, start - arrival + dur + 2, service, kind=SERVER
        )
        if explicit:
            t.span(
                n,
                root,
                "connect",
                arrival + 1,
                start - arrival - 0.9,
                service,
                kind=CLIENT,
                attrs=DB,
            )
        t.db(n, root, "SELECT pg_sleep(0.04)", start + 0.1, dur, service)


def test_worker_pool_within_one_trace() -> None:
    t = Traces()
    fan_out(t, 1, 10, 3, [40.0 + (i * 7) % 20 for i in range(10)])
    [f] = detect(t)
    assert (f.kind, f.service, f.operation) == ("pool_wait", "frontend", "GET /dispatch")
    assert f.resource == "http://route:8083"
    assert f.details["ceiling"] == 3 and f.details["max_in_flight"] == 3
    assert f.count == 7 and f.details["evidence"] == "in-flight ceiling"
    assert f.details["max_queued"] == 7  # all seven waited at once, behind the first three
    assert f.trace_ids == [trace_id(1)]
    # The request had a call queued from the first dispatch until the last call started.
    assert 0.0 < f.impact_share < 1.0 and f.impact_ms > 100
    assert "never more than 3 in flight" in f.summary and "(now 3)" in f.fix


@pytest.mark.parametrize("k", [2, 4])
def test_ceiling_across_concurrent_traces(k: int) -> None:
    t = Traces()
    requests(t, [i * 2.0 for i in range(12)], k)  # 12 requests in 22 ms, 40 ms queries
    [f] = detect(t)
    assert f.details["ceiling"] == k and f.resource == "postgresql://db"
    assert f.count == 12 - k and f.details["traces_affected"] == 12 - k
    # Each later request waits longer: the wait grows with the queue ahead of it.
    waits = f.details["wait_total_ms"]
    assert waits > (12 - k) * 20 and f.details["wait_p95_ms"] <= f.details["wait_max_ms"]


def test_explicit_checkout_spans() -> None:
    t = Traces()
    requests(t, [i * 2.0 for i in range(8)], 2, explicit=True)
    [f] = detect(t)
    assert f.details["evidence"] == "acquire spans" and f.details["ceiling"] == 2
    assert f.count == 6 and f.operation == "GET /stock" and f.details["calls"] == 8
    names = {s.span_id: s.name for n in range(1, 9) for s in t.spans(n)}
    assert {names[sid] for sid in f.span_ids} == {"connect"}  # the evidence: the checkouts


def test_single_connection_pool_counts_with_checkout_spans() -> None:
    t = Traces()
    requests(t, [i * 2.0 for i in range(6)], 1, explicit=True)
    [f] = detect(t)
    assert f.details["ceiling"] == 1 and f.count == 5


def test_single_slot_without_checkout_spans_is_not_a_pool() -> None:
    # K = 1 with gaps is serialization on one resource: lock_contention reports it.
    t = Traces()
    requests(t, [i * 2.0 for i in range(6)], 1)
    assert detect(t) == []
    assert detect(t, min_ceiling=1)


def test_ample_pool_stays_silent() -> None:
    t = Traces()
    requests(t, [i * 2.0 for i in range(8)], 8)  # never more requests than connections
    assert detect(t) == []
    t2 = Traces()
    requests(t2, [i * 2.0 for i in range(8)], 8, explicit=True)
    assert detect(t2) == []


def test_slow_connection_setup_is_not_a_wait() -> None:
    # NullPool: each checkout opens a new connection (8 ms) while others run their queries.
    t = Traces()
    for n in range(1, 9):
        root = t.span(n, None, "GET /stock", n * 3.0, 60, "inventory", kind=SERVER)
        t.span(n, root, "connect", n * 3.0 + 1, 8, "inventory", kind=CLIENT, attrs=DB)
        t.db(n, root, "SELECT qty FROM stock WHERE sku = 'a'", n * 3.0 + 9.2, 40, "inventory")
    assert detect(t) == []


def test_healthy_parallel_fan_out_stays_silent() -> None:
    t = Traces()
    for n in range(1, 6):
        root = t.span(n, None, "GET /home", n * 10.0, 100, "web", kind=SERVER)
        for j, host in enumerate(["users", "carts", "prices"]):
            t.http(n, root, f"http://{host}:8080/x", n * 10.0 + 1 + j * 0.1, 60 + j * 5, "web")
    assert detect(t) == []


def test_sequential_loop_is_not_a_ceiling() -> None:
    t = Traces()
    for n in range(1, 4):  # three overlapping requests, each a loop of back-to-back calls
        root = t.span(n, None, "GET /report", n * 5.0, 400, "api", kind=SERVER)
        for i in range(10):
            t.db(n, root, f"SELECT * FROM t WHERE id = {i}", n * 5.0 + 1 + i * 20.1, 20)
    assert detect(t) == []


def test_thresholds() -> None:
    t = Traces()
    fan_out(t, 1, 5, 3, [40.0] * 5)  # two calls wait: below min_waits (3)
    assert detect(t) == []
    assert detect(t, min_waits=2)
    assert detect(t, min_waits=2, min_total_wait_ms=1000.0) == []


def test_analyze_reports_it(store) -> None:
    t = Traces()
    requests(t, [i * 2.0 for i in range(8)], 2, explicit=True)
    t.write(store)
    [f] = analyze(store, [rule("pool-wait")]).findings
    assert f.kind == "pool_wait" and f.details["ceiling"] == 2


def test_hotrod_route_calls_queue_behind_three_workers(corpus) -> None:
    import polars as pl

    from tracelens.endpoints import trace_table
    from tracelens.importers import otlp_json

    path = corpus / HOTROD
    with path.open("rb") as stream:
        spans = pl.from_arrow(pa.Table.from_batches(list(otlp_json.read(stream, str(path)))))
    ctx = StoreContext(spans, trace_table(spans), lambda tid: None)
    [f] = pool_wait.detect(ctx, rule("pool-wait"))
    assert (f.service, f.operation, f.resource) == (
        "frontend",
        "GET /dispatch",
        "http://0.0.0.0:8083",
    )
    assert f.details["ceiling"] == 3 and f.details["calls"] == 10 and f.count == 7
    assert f.details["handoff_p50_ms"] < 0.5  # each waiter went the moment a call returned
    assert 0.15 < f.impact_share < 0.3


def test_lock_convoys_are_not_pool_waits() -> None:
    from test_detector_lock_contention import debits, reservations

    t = Traces()
    debits(t, [i * 1.0 for i in range(6)], [7] * 6)
    reservations(t, [i * 2.0 for i in range(6)], first_trace=20)
    assert detect(t) == []


# --- the interval math ------------------------------------------------------------------------


def test_in_flight_sweep_and_busy_time() -> None:
    from tracelens.detectors.intervals import InFlight, max_in_flight, merge, queue, union_ns

    starts, ends = [0, 10, 10, 20, 35], [10, 30, 25, 40, 35]  # [35, 35) never counts
    slots = InFlight(starts, ends)
    # Back to back at 10 is not an overlap: two open on [10, 20), three on [20, 25), two on
    # [25, 30), one on [30, 40).
    assert slots.peak == 3 and max_in_flight(zip(starts, ends, strict=True)) == 3
    assert slots.before([10, 20, 21, 40]).to_list() == [1, 2, 3, 1]
    assert slots.time_at_least(2, [0, 12, 28], [40, 22, 28]).to_list() == [20, 10, 0]
    q = queue(starts, ends, [5, 31], [31, 41], ceiling=2)
    assert q.busy_ns.to_list() == [20, 0] and q.handoff_ns.to_list() == [1, 1]
    assert q.release.to_list() == [1, 3] and q.waited_ns.to_list() == [26, 10]
    assert merge([(5, 8), (0, 3), (3, 4)]) == [(0, 4), (5, 8)] and union_ns([(0, 3), (1, 5)]) == 5
