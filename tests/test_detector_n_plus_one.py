"""n_plus_one: repeated calls under one parent fire (sequential, concurrent, interleaved with
connects; DB, cache, HTTP, RPC, bare client spans); different calls, spread parents and
callee-side spans do not; the prefilter never drops a trace detect would report."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest
from synth import CLIENT, SERVER, Traces, rule, trace_id

from tracelens import calltree
from tracelens.analyze import analyze, trace_context
from tracelens.detectors import n_plus_one
from tracelens.detectors.base import StoreContext
from tracelens.model import Finding

HOTROD = "otlp-json/jaeger_hotrod_n_plus_one_full_concurrent.json"
SELECT = "SELECT id, name FROM customers WHERE id = {i}"


def findings(t: Traces, trace: int = 1, **params) -> list[Finding]:
    ctx = trace_context(calltree.build(t.spans(trace)))
    return n_plus_one.detect(ctx, rule("n-plus-one", **params))


def loop(
    t: Traces,
    n: int,
    dur: float,
    *,
    gap: float = 1.0,
    trace: int = 1,
    statement: str = SELECT,
    root: str | None = None,
) -> str:
    root = root or t.span(trace, None, "GET /orders", 0, 1000, "api", kind=SERVER)
    for i in range(n):
        t.db(trace, root, statement.format(i=i), 5 + i * (dur + gap), dur)
    return root


def test_sequential_queries_fire_with_the_numbers() -> None:
    t = Traces()
    loop(t, 6, 10.0)
    [f] = findings(t)
    assert (f.kind, f.service, f.operation, f.count) == ("n_plus_one", "api", "GET /orders", 6)
    assert f.resource == "postgresql SELECT id, name FROM customers WHERE id = ? @ db"
    d = f.details
    assert d["total_ms"] == pytest.approx(60) and d["typical_ms"] == pytest.approx(10)
    # The root does nothing else: all 60 ms of the repeats are on the critical path.
    assert d["critical_path_ms"] == pytest.approx(60) and f.impact_ms == pytest.approx(60)
    assert d["saving_ms"] == pytest.approx(50)  # one call of ~10 ms instead of six
    assert f.impact_share == pytest.approx(0.06)
    assert not d["concurrent"] and d["max_in_flight"] == 1 and d["interleaved_with"] == []
    assert len(f.span_ids) == 6 and f.trace_ids == [trace_id(1)]
    assert "6 sequential calls" in f.summary and "50 ms" in f.fix


@pytest.mark.parametrize(
    ("n", "dur", "fires"),
    [
        (5, 10.0, True),  # exactly Sentry's floor: 5 repeats, 50 ms
        (4, 20.0, False),  # too few repeats
        (5, 9.9, False),  # too little time
    ],
)
def test_thresholds_are_inclusive(n: int, dur: float, fires: bool) -> None:
    t = Traces()
    loop(t, n, dur)
    assert bool(findings(t)) is fires


def test_params_move_the_thresholds() -> None:
    t = Traces()
    loop(t, 3, 5.0)
    assert findings(t) == []
    assert findings(t, min_repeats=3, min_total_ms=15.0)


def test_concurrent_repeats_fire_with_the_in_flight_count() -> None:
    t = Traces()
    root = t.span(1, None, "GET /orders", 0, 200, "api", kind=SERVER)
    for i in range(8):  # four lanes, two rounds of 40 ms
        t.db(1, root, SELECT.format(i=i), 5 + (i // 4) * 41 + i * 0.1, 40)
    [f] = findings(t)
    assert f.count == 8 and f.details["concurrent"] and f.details["max_in_flight"] == 4
    assert f.details["total_ms"] == pytest.approx(320)
    # The critical path runs through one call per round: 2 x 40 ms, not 320 ms (the parent's
    # own time between the rounds is not the repeats').
    assert f.details["critical_path_ms"] == pytest.approx(80)
    assert f.details["saving_ms"] == pytest.approx(40)
    assert "8 concurrent calls" in f.summary


def test_repeats_interleaved_with_pool_connects() -> None:
    t = Traces()
    root = t.span(1, None, "GET /orders", 0, 1000, "api", kind=SERVER)
    at = 1.0
    for i in range(6):
        t.span(
            1,
            root,
            "connect",
            at,
            9,
            "api",
            kind=CLIENT,
            attrs={"db.system": "postgresql", "server.address": "db"},
        )
        t.db(1, root, SELECT.format(i=i), at + 10, 10)
        at += 21
    [f] = findings(t)  # the six connects (54 ms) are not an N+1 of their own
    assert f.count == 6 and f.details["interleaved_with"] == ["connect"]
    assert "SELECT id, name" in f.resource


def test_other_statements_between_repeats_do_not_break_them() -> None:
    t = Traces()
    root = t.span(1, None, "GET /orders", 0, 1000, "api", kind=SERVER)
    for i in range(5):
        t.db(1, root, SELECT.format(i=i), 1 + i * 30, 12)
        t.db(1, root, f"UPDATE audit SET n = n + 1 WHERE k = {i}", 14 + i * 30, 2)
    [f] = findings(t)
    assert f.count == 5 and f.details["interleaved_with"] == ["UPDATE"]


def test_different_statements_and_spread_parents_stay_silent() -> None:
    t = Traces()
    root = t.span(1, None, "GET /orders", 0, 1000, "api", kind=SERVER)
    for i, table in enumerate(["users", "carts", "orders", "items", "prices", "stock"]):
        t.db(1, root, f"SELECT * FROM {table} WHERE id = {i}", 1 + i * 20, 15)
    a = t.span(1, root, "load_a", 200, 100, "api")
    b = t.span(1, root, "load_b", 300, 100, "api")
    for i in range(6):  # six repeats, but three under each parent
        t.db(1, a if i < 3 else b, SELECT.format(i=i), 201 + (i % 3) * 20 + (i >= 3) * 100, 15)
    assert findings(t) == []


def test_cache_commands_repeat_by_verb() -> None:
    t = Traces()
    root = t.span(1, None, "GET /cart", 0, 500, "api", kind=SERVER)
    for i in range(7):
        t.span(
            1,
            root,
            "GET",
            1 + i * 11,
            10,
            "api",
            kind=CLIENT,
            attrs={
                "db.system": "redis",
                "db.statement": f"GET cart:{i}",
                "server.address": "cache",
            },
        )
    [f] = findings(t)
    assert f.count == 7 and f.resource == "redis GET ? @ cache"


def test_bare_verb_fingerprints_keep_the_span_name() -> None:
    # HotROD's redis spans carry only db.operation.name=GET: the name tells the calls apart.
    t = Traces()
    root = t.span(1, None, "FindNearest", 0, 500, "driver", kind=SERVER)
    redis = {"db.system.name": "redis", "db.operation.name": "GET"}
    t.span(1, root, "FindDriverIDs", 1, 20, "redis-manual", kind=CLIENT, attrs=redis)
    for i in range(6):
        t.span(1, root, "GetDriver", 22 + i * 11, 10, "redis-manual", kind=CLIENT, attrs=redis)
    [f] = findings(t)
    assert f.count == 6 and f.resource == "redis GetDriver (GET) @ redis-manual"
    assert (f.service, f.details["call_service"]) == ("driver", "redis-manual")


def test_http_calls_repeat_by_parameterized_url() -> None:
    t = Traces()
    root = t.span(1, None, "GET /feed", 0, 500, "web", kind=SERVER)
    for i in range(5):
        t.http(
            1, root, f"http://users:8080/users/{1000 + i}?fields=name&v={i}", 1 + i * 21, 20, "web"
        )
    [f] = findings(t)
    assert f.count == 5 and f.resource == "GET http://users:8080/users/??fields=?&v=?"


def test_http_calls_to_different_endpoints_stay_silent() -> None:
    t = Traces()
    root = t.span(1, None, "GET /feed", 0, 500, "web", kind=SERVER)
    for i, path in enumerate(["users", "carts", "prices", "stock", "ads", "news"]):
        t.http(1, root, f"http://{path}:8080/{path}/1", 1 + i * 21, 20, "web")
    assert findings(t) == []


def test_rpc_calls_repeat_by_method() -> None:
    t = Traces()
    root = t.span(1, None, "GET /quote", 0, 500, "web", kind=SERVER)
    for i in range(5):
        t.span(
            1,
            root,
            "prices.Prices/Get",
            1 + i * 21,
            20,
            "web",
            kind=CLIENT,
            attrs={
                "rpc.system": "grpc",
                "rpc.service": "prices.Prices",
                "rpc.method": "Get",
                "server.address": "prices",
            },
        )
    [f] = findings(t)
    assert f.count == 5 and f.resource == "prices.Prices/Get"


def test_plain_client_spans_repeat_by_name_and_peer() -> None:
    t = Traces()
    root = t.span(1, None, "job", 0, 500, "worker", kind=SERVER)
    for i in range(5):
        t.span(
            1,
            root,
            "fetch_blob",
            1 + i * 21,
            20,
            "worker",
            kind=CLIENT,
            attrs={"peer.service": "blobstore"},
        )
    t.span(1, root, "fetch_blob", 200, 20, "worker", kind=CLIENT, attrs={"peer.service": "other"})
    [f] = findings(t)
    assert f.count == 5 and f.resource == "fetch_blob @ blobstore"


def test_reported_once_at_the_caller_not_again_at_the_callee() -> None:
    t = Traces()
    root = t.span(1, None, "GET /page", 0, 500, "web", kind=SERVER)
    for i in range(6):
        call = t.http(1, root, f"http://users:8080/users/{i}", 1 + i * 21, 20, "web")
        t.span(
            1,
            call,
            "GET /users/{id}",
            2 + i * 21,
            18,
            "users",
            kind=SERVER,
            attrs={"http.request.method": "GET", "http.route": "/users/{id}"},
        )
    [f] = findings(t)
    assert f.service == "web" and f.details["call_service"] == "web"


def test_callee_spans_repeat_when_the_caller_is_not_instrumented() -> None:
    t = Traces()
    root = t.span(1, None, "batch", 0, 500, "cron", kind=SERVER)
    for i in range(6):
        t.span(
            1,
            root,
            "GET /users/{id}",
            2 + i * 21,
            18,
            "users",
            kind=SERVER,
            attrs={"http.request.method": "GET", "http.route": "/users/{id}"},
        )
    [f] = findings(t)
    assert f.resource == "users GET /users/{id}" and f.count == 6


def test_repeats_off_the_critical_path_save_nothing() -> None:
    t = Traces()
    root = t.span(1, None, "GET /page", 0, 400, "web", kind=SERVER)
    t.http(1, root, "http://slow:8080/report", 1, 398, "web")  # the path runs through this
    branch = t.span(1, root, "prefetch", 1, 100, "web")
    for i in range(6):
        t.db(1, branch, SELECT.format(i=i), 2 + i * 11, 10, "web")
    [f] = findings(t)
    assert f.details["critical_path_ms"] == 0 and f.details["saving_ms"] == 0
    assert f.details["total_ms"] == pytest.approx(60)


# --- the prefilter ----------------------------------------------------------------------------


def _store_context(t: Traces) -> StoreContext:
    import polars as pl

    from tracelens.endpoints import trace_table

    t.spans(0)  # flushes the builder
    spans = pl.from_arrow(pa.Table.from_batches(t.batches))
    return StoreContext(spans, trace_table(spans), lambda tid: None)


def test_candidates_are_the_traces_with_repeats() -> None:
    t = Traces()
    loop(t, 6, 10.0, trace=1)
    loop(t, 4, 10.0, trace=2)
    loop(t, 6, 5.0, trace=3)
    ctx = _store_context(t)
    assert list(n_plus_one.candidates(ctx, rule("n-plus-one"))) == [trace_id(1)]


def test_candidates_never_drop_a_trace_detect_reports() -> None:
    rng = random.Random(7)
    t = Traces()
    names = ["GetDriver", "FindDriverIDs", "connect"]
    urls = ["http://a:1/users/{i}", "http://a:1/users/{i}?x={i}", "http://b:1/carts/{i}"]
    for trace in range(1, 61):
        root = t.span(trace, None, "root", 0, 2000, "svc", kind=SERVER)
        for j in range(rng.randint(0, 14)):
            at, dur = rng.uniform(1, 1900), rng.uniform(2, 25)
            pick = rng.random()
            if pick < 0.3:
                t.db(trace, root, SELECT.format(i=j % 3), at, dur)
            elif pick < 0.5:
                t.span(
                    trace,
                    root,
                    rng.choice(names),
                    at,
                    dur,
                    "redis-manual",
                    kind=CLIENT,
                    attrs={"db.system.name": "redis", "db.operation.name": "GET"},
                )
            elif pick < 0.8:
                t.http(trace, root, rng.choice(urls).format(i=j), at, dur)
            else:
                t.span(trace, root, "fetch", at, dur, "svc", kind=CLIENT)
    ctx = _store_context(t)
    r = rule("n-plus-one", min_repeats=3, min_total_ms=30.0)
    picked = set(n_plus_one.candidates(ctx, r))
    reported = {
        trace_id(n) for n in range(1, 61) if findings(t, n, min_repeats=3, min_total_ms=30.0)
    }
    assert reported and reported <= picked


def test_analyze_reports_through_the_prefilter(store) -> None:
    t = Traces()
    loop(t, 6, 10.0, trace=1)
    loop(t, 6, 10.0, trace=2)
    loop(t, 3, 10.0, trace=3)
    t.write(store)
    [f] = analyze(store, [rule("n-plus-one")]).findings
    assert f.count == 12 and sorted(f.trace_ids) == [trace_id(1), trace_id(2)]


# --- the real HotROD trace --------------------------------------------------------------------


def _hotrod(corpus) -> list[Finding]:
    from tracelens.importers import otlp_json
    from tracelens.model import spans_from_table

    path = corpus / HOTROD
    with path.open("rb") as stream:
        table = pa.Table.from_batches(list(otlp_json.read(stream, str(path))))
    ctx = trace_context(calltree.build(spans_from_table(table)))
    return n_plus_one.detect(ctx, rule("n-plus-one"))


def test_hotrod_getdriver_calls_are_a_sequential_n_plus_one(corpus) -> None:
    found = {f.resource: f for f in _hotrod(corpus)}
    f = found["redis GetDriver (GET) @ redis-manual"]
    # FindNearest makes 14 redis-manual calls: one FindDriverIDs, then 13 GetDriver (10
    # drivers, 3 of them retried after a redis timeout). The repeats are the 13 GetDriver.
    assert (f.service, f.operation) == ("driver", "driver.DriverService/FindNearest")
    assert f.count == 13 and f.details["call_service"] == "redis-manual"
    assert not f.details["concurrent"] and f.details["max_in_flight"] == 1
    assert f.details["critical_path_ms"] == pytest.approx(204.087, abs=0.01)
    assert 0.28 < f.impact_share < 0.31
    # The "1" of the N+1 is named: FindDriverIDs fetched the ids the GetDriver calls walk.
    assert f.details["first_call"]["name"] == "FindDriverIDs"
    assert f.details["calls_with_first"] == 14
    assert "after one FindDriverIDs (14 calls to redis-manual in all)" in f.summary


def test_hotrod_route_calls_are_a_concurrent_n_plus_one(corpus) -> None:
    found = {f.resource: f for f in _hotrod(corpus)}
    f = found["GET http://0.0.0.0:8083/route?dropoff=?&pickup=?"]
    assert f.count == 10 and f.details["concurrent"] and f.details["max_in_flight"] == 3
    # The earlier HTTP call went to another host:port (customer), so it is not the "1".
    assert f.details["first_call"] is None
    assert len(found) == 2
