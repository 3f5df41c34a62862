"""analyze / findings_for_trace orchestration: JSON shape, filters, prefilters, severities."""

from __future__ import annotations

import polars as pl
import pytest
from synth import MS, SERVER, Traces, rule, trace_id

from tracelens.analyze import analyze, findings_for_trace, severity_rank, worst_severity
from tracelens.calltree import build
from tracelens.endpoints import trace_table
from tracelens.errors import RuleError

FINDING_KEYS = {
    "rule",
    "kind",
    "severity",
    "service",
    "operation",
    "resource",
    "trace_ids",
    "span_ids",
    "count",
    "impact_ms",
    "impact_share",
    "summary",
    "fix",
}
ENDPOINT_KEYS = {"service", "operation", "traces", "p50_ms", "p95_ms", "p99_ms", "attribution"}
REPORT = "SELECT sum(total) FROM orders WHERE day = {i}"


def dashboard(t: Traces, n: int, *, spacing_ms: float = 1000.0, report_ms: float = 80.0) -> None:
    """``n`` requests of ``api GET /dashboard``: three fast queries and a slow report."""
    for i in range(n):
        start = i * spacing_ms
        root = t.span(i, None, "GET /dashboard", start, 200, "api", kind=SERVER)
        for j, table in enumerate(("users", "carts", "prefs")):
            t.db(i, root, f"SELECT * FROM {table} WHERE id = {i}", start + 1 + 3 * j, 2)
        t.db(i, root, REPORT.format(i=i), start + 10, report_ms + i % 5)


def sequential(t: Traces, trace: int, start: float, service: str = "web") -> None:
    root = t.span(trace, None, "GET /product", start, 400, service, kind=SERVER)
    for k, url in enumerate(("http://users/u/1", "http://stock/s", "http://prices/p/1")):
        t.http(trace, root, url, start + 1 + 51 * k, 50, service)


def test_json_has_the_documented_shape(store) -> None:
    t = Traces()
    dashboard(t, 12)
    sequential(t, 100, 50_000)
    t.write(store)
    out = analyze(store, [rule("slow-query"), rule("sequential-calls")]).to_dict()
    assert {f["kind"] for f in out["findings"]} == {"slow_query", "sequential_calls"}
    for finding in out["findings"]:
        assert FINDING_KEYS <= set(finding)
        assert finding["severity"] in ("info", "low", "medium", "high", "critical")
        assert isinstance(finding["trace_ids"], list) and isinstance(finding["count"], int)
    assert [f["impact_ms"] for f in out["findings"]] == sorted(
        (f["impact_ms"] for f in out["findings"]), reverse=True
    )
    assert {(e["service"], e["operation"]) for e in out["endpoints"]} == {
        ("api", "GET /dashboard"),
        ("web", "GET /product"),
    }
    for endpoint in out["endpoints"]:
        assert ENDPOINT_KEYS <= set(endpoint)
    assert out["stats"]["traces"] == 13


def test_endpoint_percentiles(store) -> None:
    t = Traces()
    for i in range(1, 101):  # durations 1..100 ms
        t.span(i, None, "GET /x", i * 1000.0, float(i), "api", kind=SERVER)
    t.write(store)
    [endpoint] = analyze(store, []).endpoints
    assert endpoint.traces == 100
    assert endpoint.p50_ms == pytest.approx(50.5)
    assert endpoint.p95_ms == pytest.approx(95.05)
    assert endpoint.p99_ms == pytest.approx(99.01)


def test_only_candidate_traces_get_a_call_tree(store) -> None:
    t = Traces()
    dashboard(t, 50)
    sequential(t, 100, 90_000)
    sequential(t, 101, 95_000)
    t.write(store)
    baseline = analyze(store, []).stats["trees_built"]  # endpoint attribution samples
    result = analyze(store, [rule("sequential-calls"), rule("error-origin")])
    assert result.stats["trees_built"] - baseline == 2
    assert result.stats["traces"] == 52


def test_service_filter_selects_traces_and_findings(store) -> None:
    t = Traces()
    dashboard(t, 12)
    sequential(t, 100, 50_000, service="web")
    t.write(store)
    rules = [rule("slow-query"), rule("sequential-calls")]
    web = analyze(store, rules, service="web")
    assert [f.kind for f in web.findings] == ["sequential_calls"]
    assert [(e.service, e.traces) for e in web.endpoints] == [("web", 1)]
    assert [f.kind for f in analyze(store, rules, service="api").findings] == ["slow_query"]
    assert analyze(store, rules, service="nobody").findings == []


def test_time_window_selects_traces_by_start(store) -> None:
    t = Traces()
    dashboard(t, 12)  # starts at 0 … 11 s
    t.write(store)
    base = 1_700_000_000_000_000_000
    early = analyze(store, [rule("slow-query")], until_ns=base + 4_500 * MS)
    assert early.stats["traces"] == 5 and early.findings[0].count == 5
    late = analyze(store, [rule("slow-query")], since_ns=base + 8_000 * MS)
    assert late.stats["traces"] == 4 and late.findings == []  # 4 samples < min_samples


def test_findings_for_trace_adds_cross_trace_findings_that_involve_it(store) -> None:
    t = Traces()
    dashboard(t, 12, spacing_ms=50.0)  # overlapping requests
    sequential(t, 100, 300.0)  # concurrent, but without the slow query
    t.write(store)
    rules = [rule("slow-query"), rule("sequential-calls")]
    slowest = trace_id(9)  # report_ms + 9 % 5: among the slowest runs
    tree = build(_spans(store, slowest))
    found = findings_for_trace(store, slowest, tree, rules)
    assert [f.kind for f in found] == ["slow_query"]
    # Traces 5-11 overlap trace 9 (450-650 ms): the window's finding, not the trace alone's.
    assert found[0].count == 7 and found[0].details["traces"] == 7
    other = trace_id(100)
    kinds = [f.kind for f in findings_for_trace(store, other, build(_spans(store, other)), rules)]
    assert kinds == ["sequential_calls"]


class ReaderWithoutSql:
    """The read methods a remote reader has, without ``query``."""

    def __init__(self, store) -> None:
        self.scan, self.get_trace = store.scan, store.get_trace
        self.list_traces, self.count_spans = store.list_traces, store.count_spans


@pytest.mark.parametrize("sql", [True, False], ids=["store", "reader-without-sql"])
def test_cross_trace_window_with_and_without_sql(store, sql: bool) -> None:
    t = Traces()
    dashboard(t, 12, spacing_ms=50.0)
    t.write(store)
    reader = store if sql else ReaderWithoutSql(store)
    slowest = trace_id(9)
    found = findings_for_trace(reader, slowest, build(_spans(store, slowest)), [rule("slow-query")])
    assert [(f.kind, f.count) for f in found] == [("slow_query", 7)]
    assert analyze(reader, [rule("slow-query")]).findings[0].count == 12


def _spans(store, tid: str):
    from tracelens.model import spans_from_table

    return spans_from_table(store.get_trace(tid))


def test_trace_table_finds_roots_of_broken_traces() -> None:
    spans = pl.DataFrame(
        {
            "trace_id": ["a", "a", "b", "b", "b"],
            "span_id": ["1", "2", "3", "4", "5"],
            "parent_span_id": [None, "1", "lost", "3", "lost2"],
            "service": ["s"] * 5,
            "name": ["root", "child", "orphan-early", "kid", "orphan-late"],
            "start_ns": [0, 1, 10, 11, 12],
            "end_ns": [5, 4, 20, 19, 30],
            "status_code": [0, 2, 0, 0, 2],
        }
    )
    table = trace_table(spans)
    assert table["root_name"].to_list() == ["root", "orphan-early"]
    assert table["duration_ns"].to_list() == [5, 20]
    assert table["error_count"].to_list() == [1, 1]


def test_severity_helpers() -> None:
    assert [severity_rank(s) for s in ("info", "low", "medium", "high", "critical")] == [
        0,
        1,
        2,
        3,
        4,
    ]
    with pytest.raises(RuleError, match="did you mean 'high'"):
        severity_rank("hgih")

    class F:
        def __init__(self, severity: str) -> None:
            self.severity = severity

    assert worst_severity([F("low"), F("high"), F("medium")]) == "high"
    assert worst_severity([]) is None


def test_empty_store_gives_an_empty_report(store) -> None:
    out = analyze(store).to_dict()
    assert out["findings"] == [] and out["endpoints"] == []
    assert out["stats"]["spans"] == 0
