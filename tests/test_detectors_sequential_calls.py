"""sequential_calls: independent calls back to back fire; fan-outs, repeats and gaps do not."""

from __future__ import annotations

import pytest
from synth import SERVER, Traces, rule, trace_id

from tracelens.analyze import analyze

SERVICES = (
    "http://users:8080/users/42",
    "http://stock:8080/items?sku=7",
    "http://prices:8080/quote/7",
)


def page(
    t: Traces, trace: int, starts: list[float], durs: list[float], urls: tuple[str, ...] = SERVICES
) -> str:
    root = t.span(trace, None, "GET /product", 0, 400, "web", kind=SERVER)
    for url, start, dur in zip(urls, starts, durs, strict=True):
        t.http(trace, root, url, start, dur, "web")
    return root


def test_back_to_back_calls_to_different_services(store) -> None:
    t = Traces()
    page(t, 1, [1, 52, 123], [50, 70, 40])  # 1 ms gaps
    t.write(store)
    [finding] = analyze(store, [rule("sequential-calls")]).findings
    assert finding.kind == "sequential_calls"
    assert (finding.service, finding.operation, finding.count) == ("web", "GET /product", 3)
    assert finding.resource == (
        "http://users:8080/users/? -> http://stock:8080/items -> http://prices:8080/quote/?"
    )
    assert finding.impact_ms == pytest.approx(50 + 70 + 40 - 70)
    assert finding.trace_ids == [trace_id(1)] and len(finding.span_ids) == 3
    assert "saving" not in finding.summary and "90 ms" in finding.fix


def test_parallel_fan_out_stays_silent(store) -> None:
    t = Traces()
    page(t, 1, [1, 1.2, 1.4], [50, 70, 40])
    t.write(store)
    assert analyze(store, [rule("sequential-calls")]).findings == []


def test_repeats_of_one_resource_are_not_this_detector(store) -> None:
    t = Traces()
    urls = tuple(f"http://users:8080/users/{i}" for i in range(6))
    page(t, 1, [1 + 31 * i for i in range(6)], [30] * 6, urls)
    t.write(store)
    assert analyze(store, [rule("sequential-calls")]).findings == []


def test_work_between_calls_means_a_dependency(store) -> None:
    t = Traces()
    page(t, 1, [1, 81, 181], [50, 70, 40])  # 30 ms gaps: the caller computes in between
    t.write(store)
    assert analyze(store, [rule("sequential-calls")]).findings == []
    assert analyze(store, [rule("sequential-calls", max_gap_ms=40.0)]).findings


def test_findings_merge_across_traces(store) -> None:
    t = Traces()
    for trace in range(1, 5):
        page(t, trace, [1, 52, 123], [50, 70, 40])
    t.write(store)
    [finding] = analyze(store, [rule("sequential-calls")]).findings
    assert finding.count == 12 and len(finding.trace_ids) == 4
    assert finding.details["occurrences"] == 4
    assert finding.impact_ms == pytest.approx(4 * 90)
    assert finding.summary.endswith("(in 4 traces)")
