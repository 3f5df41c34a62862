"""Tail-latency attribution: which components own the excess latency of an endpoint's slow traces.

For each endpoint (root service + operation) the critical-path self time per (service,
operation) of its slow traces (≥ p95, or ≥ p99 with enough traces) is compared with that of
its typical traces (p40–p60). A component's excess is its mean self time in slow traces minus
its mean in typical ones; the components with positive excess share the total positive excess
(the shares add up to 100%). Only bounded, deterministic samples of each group get a call tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tracelens.calltree import PLACEHOLDER_SERVICE, is_placeholder
from tracelens.detectors.base import impact_share, make_finding

if TYPE_CHECKING:
    import polars as pl

    from tracelens.detectors.base import Rule, StoreContext, TraceContext
    from tracelens.model import Finding

KIND = "tail_latency"
SCOPE = "store"
PARAMS: dict[str, Any] = {
    "min_traces": 20,  # an endpoint needs this many traces for a finding
    "min_attribution_traces": 5,  # ... and this many for its attribution in endpoints[]
    "p99_min_traces": 1000,  # compare p99 instead of p95 from this many traces
    "min_ratio": 2.0,  # fire only when slow traces take ≥ min_ratio × the typical ones ...
    "min_excess_ms": 20.0,  # ... and at least this much longer
    "cover": 0.8,  # name the top components until they own this share of the excess
    "max_components": 5,
    "max_samples": 100,  # call trees built per group (slow / typical) and endpoint
    "max_evidence": 20,  # slow trace ids reported
}
FIELDS = (
    "endpoint",
    "percentile",
    "tail_ms",
    "p50_ms",
    "slow_ms",
    "typical_ms",
    "ratio",
    "excess_ms",
    "component",
    "share",
    "components",
    "slow_traces",
    "service",
    "operation",
)


MISSING = (PLACEHOLDER_SERVICE, "(uninstrumented)")


@dataclass(frozen=True)
class Component:
    service: str
    operation: str
    share: float  # of the total positive excess; the shares of one endpoint add up to 1
    excess_ms: float  # mean self time in slow traces minus mean in typical traces

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "operation": self.operation,
            "share": round(self.share, 4),
            "excess_ms": round(self.excess_ms, 3),
        }


@dataclass
class EndpointTail:
    service: str
    operation: str
    traces: int
    percentile: str  # "p95" or "p99"
    p50_ns: float
    tail_ns: float
    slow_ids: list[str]  # sampled slow traces, slowest first
    typical_ids: list[str]
    slow_mean_ns: float
    typical_mean_ns: float
    components: list[Component]  # positive excess, largest first


def detect(ctx: StoreContext, rule: Rule) -> list[Finding]:
    p = rule.params
    allowed = _matching_endpoints(ctx, rule)
    findings = []
    for key, tail in endpoint_tails(ctx, p).items():
        if allowed is not None and key not in allowed:
            continue
        if tail.traces < p["min_traces"] or not _material(tail, p):
            continue
        findings.append(_finding(ctx, rule, tail))
    return findings


def attribution(ctx: StoreContext, params: dict[str, Any] | None = None) -> dict:
    """(service, operation) of each endpoint → its components as dicts (for ``endpoints[]``)."""
    tails = endpoint_tails(ctx, params or PARAMS)
    return {key: [c.to_dict() for c in tail.components] for key, tail in tails.items()}


def endpoint_tails(ctx: StoreContext, params: dict[str, Any]) -> dict[tuple, EndpointTail]:
    """Every endpoint with enough traces, computed once per parameter set and run."""
    cache_key = (
        "tail_latency",
        params["min_attribution_traces"],
        params["p99_min_traces"],
        params["max_samples"],
    )
    if cache_key not in ctx.extra:
        ctx.extra[cache_key] = _all_tails(ctx, params)
    return ctx.extra[cache_key]


def _all_tails(ctx: StoreContext, p: dict[str, Any]) -> dict[tuple, EndpointTail]:
    import polars as pl

    out: dict[tuple, EndpointTail] = {}
    groups = ctx.traces.filter(pl.col("root_service").is_not_null()).partition_by(
        ["root_service", "root_name"], as_dict=True, maintain_order=True
    )
    plans = {
        key: _plan(key, frame, p)
        for key, frame in sorted(groups.items())
        if frame.height >= max(2, p["min_attribution_traces"])
    }
    prefetch = ctx.extra.get("prefetch")
    if prefetch is not None:  # one batched read for every sampled trace
        prefetch(
            [
                t
                for plan in plans.values()
                if plan.slow_ids
                for t in plan.slow_ids + plan.typical_ids
            ]
        )
    for key, plan in plans.items():
        out[key] = _attribute(ctx, plan) if plan.slow_ids else plan
    return out


def _plan(key: tuple, frame: pl.DataFrame, p: dict[str, Any]) -> EndpointTail:
    import polars as pl

    frame = frame.sort(["duration_ns", "trace_id"])
    dur = frame["duration_ns"]
    n = frame.height
    percentile = "p99" if n >= p["p99_min_traces"] else "p95"
    q = 0.99 if percentile == "p99" else 0.95
    tail_ns = float(dur.quantile(q, interpolation="linear"))
    p50 = float(dur.quantile(0.5, interpolation="linear"))
    lo, hi = (float(dur.quantile(x, interpolation="linear")) for x in (0.4, 0.6))
    # Slow means at or above the percentile and above the median: a uniform endpoint has none.
    slow = frame.filter((pl.col("duration_ns") >= tail_ns) & (pl.col("duration_ns") > p50))
    slow = slow.reverse()
    typical = frame.filter(pl.col("duration_ns").is_between(lo, hi))
    if typical.is_empty():
        typical = (
            frame.with_columns((pl.col("duration_ns") - p50).abs().alias("_d"))
            .sort(["_d", "trace_id"])
            .head(1)
        )
    typical = (
        typical.with_columns((pl.col("duration_ns") - p50).abs().alias("_d"))
        .sort(["_d", "trace_id"])
        .head(p["max_samples"])
    )
    return EndpointTail(
        service=key[0],
        operation=key[1],
        traces=n,
        percentile=percentile,
        p50_ns=p50,
        tail_ns=tail_ns,
        slow_ids=_spread(slow["trace_id"].to_list(), p["max_samples"]),
        typical_ids=typical["trace_id"].to_list(),
        slow_mean_ns=0.0,
        typical_mean_ns=0.0,
        components=[],
    )


def _spread(ids: list[str], limit: int) -> list[str]:
    """Up to ``limit`` items evenly spaced through ``ids`` (deterministic, keeps the first)."""
    if len(ids) <= limit:
        return ids
    step = len(ids) / limit
    return [ids[int(i * step)] for i in range(limit)]


def _attribute(ctx: StoreContext, tail: EndpointTail) -> EndpointTail:
    slow = [ctx.trace_context(tid) for tid in tail.slow_ids]
    typical = [ctx.trace_context(tid) for tid in tail.typical_ids]
    tail.slow_mean_ns = sum(c.duration_ns for c in slow) / len(slow)
    tail.typical_mean_ns = sum(c.duration_ns for c in typical) / len(typical)
    slow_mean, typ_mean = _mean_self_time(slow), _mean_self_time(typical)
    excess = {k: v - typ_mean.get(k, 0.0) for k, v in slow_mean.items()}
    positive = {k: v for k, v in excess.items() if v > 0}
    total = sum(positive.values())
    tail.components = sorted(
        (Component(k[0], k[1], v / total, v / 1e6) for k, v in positive.items()),
        key=lambda c: (-c.share, c.service, c.operation),
    )
    return tail


def _mean_self_time(contexts: list[TraceContext]) -> dict[tuple[str, str], float]:
    sums: dict[tuple[str, str], float] = {}
    for tc in contexts:
        for key, ns in operation_self_time(tc).items():
            sums[key] = sums.get(key, 0.0) + ns
    return {k: v / len(contexts) for k, v in sums.items()}


def operation_self_time(tc: TraceContext) -> dict[tuple[str, str], int]:
    """Critical-path self time per (service, operation); time under placeholder spans (no span
    was received for it) goes to one ``(missing)`` component."""
    out: dict[tuple[str, str], int] = {}
    for span_id, ns in tc.self_time.items():
        span = tc.tree.spans.get(span_id)
        if ns <= 0 or span is None:
            continue
        key = MISSING if is_placeholder(span_id) else (span.service, span.name)
        out[key] = out.get(key, 0) + ns
    return out


def _key(tc: TraceContext, span_id: str) -> tuple[str, str] | None:
    span = tc.tree.spans.get(span_id)
    if span is None:
        return None
    return MISSING if is_placeholder(span_id) else (span.service, span.name)


def _material(tail: EndpointTail, p: dict[str, Any]) -> bool:
    """A tail worth reporting: the slow traces clearly slower than the typical ones.

    The slow traces' mean is compared, not the percentile itself: a 2% slow path moves p99
    and the mean of the traces above p95, but not the p95 value.
    """
    return (
        bool(tail.components)
        and tail.slow_mean_ns >= p["min_ratio"] * tail.typical_mean_ns
        and tail.slow_mean_ns - tail.typical_mean_ns >= p["min_excess_ms"] * 1e6
    )


def _owners(tail: EndpointTail, p: dict[str, Any]) -> list[Component]:
    owners, covered = [], 0.0
    for comp in tail.components[: p["max_components"]]:
        owners.append(comp)
        covered += comp.share
        if covered >= p["cover"]:
            break
    return owners


def _finding(ctx: StoreContext, rule: Rule, tail: EndpointTail) -> Finding:
    p = rule.params
    owners = _owners(tail, p)
    evidence = tail.slow_ids[: p["max_evidence"]]
    keys = {(c.service, c.operation) for c in owners}
    span_ids = [
        sid
        for tid in evidence
        for sid, ns in sorted(ctx.trace_context(tid).self_time.items(), key=lambda kv: -kv[1])
        if ns > 0 and not is_placeholder(sid) and _key(ctx.trace_context(tid), sid) in keys
    ]
    top = owners[0]
    impact_ns = tail.slow_mean_ns - tail.typical_mean_ns
    endpoint = f"{tail.service} {tail.operation}"
    listing = ", ".join(f"{c.service} {c.operation} {c.share:.0%}" for c in owners)
    return make_finding(
        rule,
        service=tail.service,
        operation=tail.operation,
        resource=f"{top.service} {top.operation}",
        trace_ids=evidence,
        span_ids=span_ids[:100],
        count=len(tail.slow_ids),
        impact_ms=impact_ns / 1e6,
        impact_share=impact_share(impact_ns, tail.slow_mean_ns),
        details={
            "endpoint": endpoint,
            "percentile": tail.percentile,
            "traces": tail.traces,
            "p50_ms": round(tail.p50_ns / 1e6, 3),
            "tail_ms": round(tail.tail_ns / 1e6, 3),
            "slow_traces": len(tail.slow_ids),
            "typical_traces": len(tail.typical_ids),
            "slow_mean_ms": round(tail.slow_mean_ns / 1e6, 3),
            "typical_mean_ms": round(tail.typical_mean_ns / 1e6, 3),
            "components": [c.to_dict() for c in owners],
            "attribution": [c.to_dict() for c in tail.components],
            "services": sorted({c.service for c in owners}),
        },
        template_values={
            "endpoint": endpoint,
            "percentile": tail.percentile,
            "tail_ms": f"{tail.tail_ns / 1e6:.0f}",
            "p50_ms": f"{tail.p50_ns / 1e6:.0f}",
            "slow_ms": f"{tail.slow_mean_ns / 1e6:.0f}",
            "typical_ms": f"{tail.typical_mean_ns / 1e6:.0f}",
            "ratio": f"{tail.slow_mean_ns / tail.typical_mean_ns:.1f}",
            "excess_ms": f"{impact_ns / 1e6:.0f}",
            "component": f"{top.service} {top.operation}",
            "share": f"{top.share:.0%}",
            "components": listing,
            "slow_traces": len(tail.slow_ids),
        },
    )


def _matching_endpoints(ctx: StoreContext, rule: Rule) -> set[tuple] | None:
    """Endpoints whose root span the rule's matcher accepts (None: every endpoint)."""
    from tracelens.endpoints import root_spans
    from tracelens.rules import MATCH_ALL

    if rule.match == MATCH_ALL:
        return None
    roots = rule.match.filter(root_spans(ctx.spans, ctx.traces))
    return set(zip(roots["service"].to_list(), roots["name"].to_list(), strict=True))
