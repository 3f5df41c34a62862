"""Sequential calls: sibling client calls to different destinations that run one after another.

Under one parent, calls whose resource appears once among that parent's calls (repeats are
N+1, not this), that never overlap, each starting soon after the previous one ended (within
``max_gap_ms``, or ``max_gap_ratio`` of the shorter call) and each going to another destination
(an HTTP origin, a database, an RPC service: statements on one database connection cannot run
in parallel, and a pool ``connect`` belongs to the query after it) could have run in parallel.
Running them concurrently would save the sum of their durations minus the longest.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from tracelens.detectors.base import impact_share, make_finding
from tracelens.detectors.resource import destination, resource_expr, resource_key

if TYPE_CHECKING:
    from tracelens.detectors.base import Rule, StoreContext, TraceContext
    from tracelens.model import Finding, Span

KIND = "sequential_calls"
SCOPE = "trace"
PARAMS: dict[str, Any] = {
    "min_calls": 3,  # calls in one sequential run
    "min_call_ms": 5.0,  # shorter calls are not worth parallelizing
    "max_gap_ms": 5.0,  # longer gaps mean the caller computes between calls (a dependency) …
    "max_gap_ratio": 0.25,  # … unless shorter than this share of the shorter call (busy hosts)
    "min_saving_ms": 20.0,  # report only runs whose parallel version saves this much
}
FIELDS = (
    "calls",
    "resources",
    "sum_ms",
    "saving_ms",
    "longest_ms",
    "parent",
    "service",
    "operation",
    "resource",
    "count",
)
CLIENT = 3


def candidates(ctx: StoreContext, rule: Rule) -> Iterable[str]:
    """Traces where some parent has a run of ≥ min_calls back-to-back once-called resources
    (the test of :func:`sequential_runs` minus destinations and saving, vectorized; groups
    are keyed by 64-bit hashes, several times faster than by the id strings)."""
    import polars as pl

    p = rule.params
    calls = rule.match.filter(
        ctx.spans.filter(
            (pl.col("kind") == CLIENT)
            & pl.col("parent_span_id").is_not_null()
            & (pl.col("duration_ns") >= p["min_call_ms"] * 1e6)
        )
    )
    calls = calls.with_columns(pl.struct("trace_id", "parent_span_id").hash().alias("_p"))
    calls = calls.filter(pl.len().over("_p") >= p["min_calls"])
    if calls.is_empty():
        return []
    calls = calls.with_columns(resource_expr().hash().alias("_r"))
    singles = calls.filter(pl.len().over("_p", "_r") == 1)
    singles = singles.filter(pl.len().over("_p") >= p["min_calls"]).sort(
        ["_p", "start_ns", "end_ns", "span_id"]
    )
    # Sorted by parent, so a plain shift sees the previous call of the same parent unless the
    # parent changes (window expressions here are ~10x slower).
    first = (pl.col("_p") != pl.col("_p").shift(1)).fill_null(True)
    prev_dur = pl.col("duration_ns").shift(1)
    limit = pl.max_horizontal(
        pl.lit(p["max_gap_ms"] * 1e6),
        p["max_gap_ratio"] * pl.min_horizontal(prev_dur, "duration_ns"),
    )
    gap = pl.col("start_ns") - pl.col("end_ns").shift(1)
    follows = ~first & (gap >= 0) & (gap <= limit)
    runs = (
        singles.with_columns((~follows.fill_null(False)).cum_sum().alias("_run"))
        .group_by("_run")
        .agg(pl.col("trace_id").first(), pl.len())
        .filter(pl.col("len") >= p["min_calls"])
    )
    return runs["trace_id"].unique().sort().to_list()


def detect(ctx: TraceContext, rule: Rule) -> list[Finding]:
    findings = []
    for parent_id, calls in _calls_by_parent(ctx, rule).items():
        for run in sequential_runs(calls, rule.params):
            findings.append(_finding(ctx, rule, parent_id, run))
    return findings


def _calls_by_parent(ctx: TraceContext, rule: Rule) -> dict[str, list[Span]]:
    tree, min_ns = ctx.tree, rule.params["min_call_ms"] * 1e6
    by_parent: dict[str, list[Span]] = defaultdict(list)
    for sid, span in tree.spans.items():
        if span.kind != CLIENT or span.duration_ns < min_ns or tree.is_async(sid):
            continue
        parent = tree.parent(sid)
        if parent is not None and rule.match.matches(span):
            by_parent[parent].append(span)
    return {k: v for k, v in sorted(by_parent.items()) if len(v) >= rule.params["min_calls"]}


def sequential_runs(calls: list[Span], p: dict[str, Any]) -> list[list[Span]]:
    """Maximal runs of once-called resources back to back (no overlap, short gaps), each call
    to a destination not yet in the run."""
    counts = Counter(resource_key(c) for c in calls)
    singles = sorted(
        (c for c in calls if counts[resource_key(c)] == 1),
        key=lambda s: (s.start_ns, s.end_ns, s.span_id),
    )
    runs: list[list[Span]] = []
    current: list[Span] = []
    for call in singles:
        if current and not _continues(current, call, p):
            runs.append(current)
            current = []
        current.append(call)
    runs.append(current)
    return [r for r in runs if len(r) >= p["min_calls"] and _saving(r) >= p["min_saving_ms"] * 1e6]


def _continues(run: list[Span], call: Span, p: dict[str, Any]) -> bool:
    prev = run[-1]
    gap = call.start_ns - prev.end_ns
    limit = max(p["max_gap_ms"] * 1e6, p["max_gap_ratio"] * min(prev.duration_ns, call.duration_ns))
    return 0 <= gap <= limit and destination(call) not in {destination(s) for s in run}


def _saving(run: list[Span]) -> int:
    durations = [s.duration_ns for s in run]
    return sum(durations) - max(durations)


def _finding(ctx: TraceContext, rule: Rule, parent_id: str, run: list[Span]) -> Finding:
    parent = ctx.tree.spans.get(parent_id)
    saving = _saving(run)
    total = sum(s.duration_ns for s in run)
    resources = [resource_key(s) for s in run]
    return make_finding(
        rule,
        service=run[0].service,
        operation=parent.name if parent else run[0].name,
        resource=" -> ".join(resources),
        trace_ids=[run[0].trace_id],
        span_ids=[s.span_id for s in run],
        count=len(run),
        impact_ms=saving / 1e6,
        impact_share=impact_share(saving, ctx.duration_ns),
        details={
            "parent_span_id": parent_id,
            "resources": resources,
            "sum_ms": round(total / 1e6, 3),
            "longest_ms": round(max(s.duration_ns for s in run) / 1e6, 3),
            "saving_ms": round(saving / 1e6, 3),
            "on_critical_path": any(s.span_id in ctx.on_path for s in run),
        },
        template_values={
            "calls": len(run),
            "resources": ", ".join(resources),
            "sum_ms": f"{total / 1e6:.0f}",
            "saving_ms": f"{saving / 1e6:.0f}",
            "longest_ms": f"{max(s.duration_ns for s in run) / 1e6:.0f}",
            "parent": parent.name if parent else "(unknown parent)",
        },
    )
