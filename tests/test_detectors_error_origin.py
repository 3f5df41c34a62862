"""error_origin: the deepest span of an error chain; lone handled errors stay silent."""

from __future__ import annotations

from synth import CLIENT, SERVER, Traces, rule, trace_id

from tracelens.analyze import analyze

ERROR = 2
EXC = [
    {
        "time_ns": 0,
        "name": "exception",
        "attributes": {
            "exception.type": "psycopg2.errors.DeadlockDetected",
            "exception.message": "deadlock detected",
        },
    }
]


def failing_order(t: Traces, trace: int) -> None:
    root = t.span(
        trace,
        None,
        "POST /orders",
        0,
        120,
        "web",
        kind=SERVER,
        status=ERROR,
        attrs={"http.response.status_code": 500},
    )
    call = t.span(
        trace,
        root,
        "POST",
        2,
        100,
        "web",
        kind=CLIENT,
        status=ERROR,
        attrs={"http.request.method": "POST", "url.full": "http://orders/orders"},
    )
    handler = t.span(trace, call, "POST /orders", 3, 95, "orders", kind=SERVER, status=ERROR)
    t.db(trace, handler, "SELECT 1", 4, 2, "orders")
    t.span(
        trace,
        handler,
        "UPDATE",
        10,
        80,
        "orders",
        kind=CLIENT,
        status=ERROR,
        attrs={"db.system": "postgresql", "db.statement": "UPDATE stock SET n = n - 1"},
        events=EXC,
    )


def test_deepest_failing_span_is_the_origin(store) -> None:
    t = Traces()
    failing_order(t, 1)
    t.write(store)
    [finding] = analyze(store, [rule("error-origin")]).findings
    assert (finding.service, finding.operation) == ("orders", "UPDATE")
    assert finding.resource == "UPDATE stock SET n = n - ?"
    assert finding.details["message"] == "deadlock detected"
    assert finding.details["error_type"] == "psycopg2.errors.DeadlockDetected"
    assert finding.details["depth"] == 4
    assert finding.details["chain"][0] == "web POST /orders"
    assert finding.trace_ids == [trace_id(1)] and len(finding.span_ids) == 4
    assert "web -> orders" in finding.summary
    assert finding.impact_ms == 120 and finding.impact_share == 1.0


def test_lone_handled_error_stays_silent(store) -> None:
    t = Traces()
    root = t.span(1, None, "GET /", 0, 50, "web", kind=SERVER)
    t.span(1, root, "GET", 1, 5, "web", kind=CLIENT, status=ERROR, message="cache miss")
    t.write(store)
    assert analyze(store, [rule("error-origin")]).findings == []
    [lone] = analyze(store, [rule("error-origin", min_chain=1)]).findings
    assert lone.details["message"] == "cache miss"


def test_two_origins_under_one_failure(store) -> None:
    t = Traces()
    root = t.span(1, None, "GET /", 0, 50, "web", kind=SERVER, status=ERROR)
    t.span(
        1,
        root,
        "GET",
        1,
        5,
        "web",
        kind=CLIENT,
        status=ERROR,
        message="users down",
        attrs={"url.full": "http://users/u/1"},
    )
    t.span(
        1,
        root,
        "GET",
        7,
        5,
        "web",
        kind=CLIENT,
        status=ERROR,
        message="stock down",
        attrs={"url.full": "http://stock/s/1"},
    )
    t.write(store)
    findings = analyze(store, [rule("error-origin")]).findings
    assert sorted(f.details["message"] for f in findings) == ["stock down", "users down"]


def test_retries_of_one_origin_count_into_one_finding(store) -> None:
    t = Traces()
    for trace in (1, 2):
        root = t.span(trace, None, "GET /", 0, 50, "web", kind=SERVER, status=ERROR)
        for attempt in range(3):
            t.span(
                trace,
                root,
                "GET",
                1 + 10 * attempt,
                5,
                "web",
                kind=CLIENT,
                status=ERROR,
                message="timeout",
                attrs={"url.full": "http://users/u/1"},
            )
    t.write(store)
    [finding] = analyze(store, [rule("error-origin")]).findings
    assert finding.count == 6 and finding.details["occurrences"] == 2
    assert finding.trace_ids == [trace_id(1), trace_id(2)]
