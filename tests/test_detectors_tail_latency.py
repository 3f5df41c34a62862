"""tail_latency: the components owning an endpoint's slow traces, with shares that add up."""

from __future__ import annotations

import pytest
from synth import CLIENT, SERVER, Traces, rule, trace_id

from tracelens.analyze import analyze


def checkout(
    t: Traces,
    n: int,
    *,
    slow_every: int = 0,
    slow_ms: float = 400.0,
    jitter: bool = True,
    first: int = 0,
) -> list[int]:
    """``n`` checkout requests: auth 10 ms, db 20 ms, payments 30 ms (+slow_ms every k-th)."""
    slow = []
    for i in range(first, first + n):
        extra = 0.0
        if slow_every and i % slow_every == slow_every - 1:
            extra = slow_ms
            slow.append(i)
        wobble = (i * 7 % 11) / 10 if jitter else 0.0  # 0–1 ms, deterministic
        start = i * 1000.0
        total = 70 + extra + wobble
        root = t.span(i, None, "POST /checkout", start, total, "shop", kind=SERVER)
        t.span(i, root, "auth", start + 1, 10, "shop")
        t.db(i, root, "SELECT * FROM carts WHERE id = 1", start + 12, 20 + wobble, "shop")
        call = t.http(i, root, "http://payments/charge", start + 34, 30 + extra, "shop")
        t.span(i, call, "POST /charge", start + 35, 28 + extra, "payments", kind=SERVER)
    return slow


def test_slow_path_owns_the_tail(store) -> None:
    t = Traces()
    slow = checkout(t, 100, slow_every=25)  # 4% of requests: payments takes 400 ms more
    t.write(store)
    result = analyze(store, [rule("tail-latency")])
    [finding] = result.findings
    assert finding.kind == "tail_latency"
    assert (finding.service, finding.operation) == ("shop", "POST /checkout")
    assert finding.resource == "payments POST /charge"
    assert set(finding.trace_ids) == {trace_id(i) for i in slow} | set(finding.trace_ids)
    assert set(finding.trace_ids[: len(slow)]) == {trace_id(i) for i in slow}
    components = finding.details["components"]
    assert components[0]["service"] == "payments" and components[0]["share"] > 0.9
    shares = [c["share"] for c in finding.details["attribution"]]
    assert sum(shares) == pytest.approx(1.0, abs=1e-3)
    assert 100 < finding.impact_ms < 400  # mean excess of the traces at or above p95
    assert "payments POST /charge" in finding.summary
    [endpoint] = result.endpoints
    assert endpoint.traces == 100
    assert endpoint.attribution[0]["service"] == "payments"
    assert sum(a["share"] for a in endpoint.attribution) == pytest.approx(1.0, abs=1e-3)


def test_uniform_endpoint_stays_silent_but_is_attributed(store) -> None:
    t = Traces()
    checkout(t, 60)
    t.write(store)
    result = analyze(store, [rule("tail-latency")])
    assert result.findings == []
    [endpoint] = result.endpoints
    assert endpoint.traces == 60 and endpoint.p99_ms < 72
    assert endpoint.attribution, "attribution is reported even without a finding"


def test_too_few_traces_for_a_finding(store) -> None:
    t = Traces()
    checkout(t, 15, slow_every=5)
    t.write(store)
    assert analyze(store, [rule("tail-latency")]).findings == []
    assert analyze(store, [rule("tail-latency", min_traces=10)]).findings


def test_p99_with_enough_traces(store) -> None:
    t = Traces()
    slow = checkout(t, 300, slow_every=100)  # 1%: the p99 traces
    t.write(store)
    [finding] = analyze(store, [rule("tail-latency", p99_min_traces=200)]).findings
    assert finding.details["percentile"] == "p99"
    assert set(finding.trace_ids) == {trace_id(i) for i in slow}
    assert finding.details["components"][0]["operation"] == "POST /charge"


def test_rule_matcher_selects_endpoints(store) -> None:
    t = Traces()
    checkout(t, 100, slow_every=25)
    t.write(store)
    other = rule("tail-latency")
    from dataclasses import replace

    from tracelens.rules import Matcher

    assert analyze(store, [replace(other, match=Matcher(services=frozenset({"x"})))]).findings == []
    assert analyze(store, [replace(other, match=Matcher(kinds=frozenset({SERVER})))]).findings
    assert not analyze(store, [replace(other, match=Matcher(kinds=frozenset({CLIENT})))]).findings
