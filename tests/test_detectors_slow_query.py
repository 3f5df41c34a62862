"""slow_query: fingerprints slow by threshold or against their peers; fast ones stay silent."""

from __future__ import annotations

from synth import SERVER, Traces, rule

from tracelens.analyze import analyze

FAST = (
    "SELECT * FROM users WHERE id = {i}",
    "SELECT * FROM carts WHERE user_id = {i}",
    "UPDATE sessions SET seen = now() WHERE id = {i}",
)
REPORT = "SELECT sum(total) FROM orders WHERE created > '2024-01-{i:02d}' GROUP BY day"


def requests(t: Traces, n: int, report_ms: float | None, fast_ms: float = 2.0) -> None:
    for i in range(n):
        start = i * 1000.0
        root = t.span(i, None, "GET /dashboard", start, 900, "api", kind=SERVER)
        at = start + 1
        for sql in FAST:
            t.db(i, root, sql.format(i=i), at, fast_ms + (i % 3) * 0.5)
            at += 5
        if report_ms is not None:
            t.db(i, root, REPORT.format(i=i % 28 + 1), at, report_ms + i % 5)


def test_query_far_above_its_peers(store) -> None:
    t = Traces()
    requests(t, 12, report_ms=80.0)
    t.write(store)
    [finding] = analyze(store, [rule("slow-query")]).findings
    assert finding.kind == "slow_query" and finding.service == "api"
    assert finding.resource.startswith("SELECT sum(total) FROM orders WHERE created > ?")
    assert finding.count == 12
    assert finding.details["reason"] == "peers" and finding.details["peers"] == 3
    assert finding.details["p95_ms"] >= 80
    assert len(finding.trace_ids) == 12 and len(finding.span_ids) == 12
    assert finding.operation == "GET /dashboard"  # the endpoint, not the span name
    assert finding.impact_ms > 12 * 80
    assert "x its peers" in finding.summary


def test_query_above_threshold_without_peers(store) -> None:
    t = Traces()
    for i in range(6):
        root = t.span(i, None, "GET /report", i * 2000.0, 1500, "reports", kind=SERVER)
        t.db(i, root, REPORT.format(i=i + 1), i * 2000.0 + 1, 700, "reports")
    t.write(store)
    [finding] = analyze(store, [rule("slow-query")]).findings
    assert finding.details["reason"] == "threshold" and finding.details["peers"] == 0
    assert finding.service == "reports"


def test_uniform_queries_stay_silent(store) -> None:
    t = Traces()
    requests(t, 12, report_ms=3.0)
    t.write(store)
    assert analyze(store, [rule("slow-query")]).findings == []


def test_too_few_samples_stay_silent(store) -> None:
    t = Traces()
    requests(t, 4, report_ms=900.0)
    t.write(store)
    assert analyze(store, [rule("slow-query")]).findings == []
    assert analyze(store, [rule("slow-query", min_samples=3)]).findings


def test_fast_queries_are_never_slow_relative_to_faster_peers(store) -> None:
    t = Traces()
    requests(t, 12, report_ms=8.0, fast_ms=0.2)  # 40x its peers, but 8 ms
    t.write(store)
    assert analyze(store, [rule("slow-query")]).findings == []
    assert analyze(store, [rule("slow-query", min_p95_ms=5.0)]).findings
