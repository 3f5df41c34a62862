"""``analyze``: every rule over the stored traces; ``findings_for_trace``: the same for ``explain``.

One vectorized pass does the bulk: the needed span columns are scanned into polars once, the
per-trace and per-endpoint figures are computed there, store-scope detectors work on that
frame, and trace-scope detectors first name their candidate traces (a vectorized prefilter) so
that call trees are built only for those — in chunks, each chunk read with one query.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tracelens.detectors.base import SEVERITIES, StoreContext, TraceContext
from tracelens.errors import RuleError

if TYPE_CHECKING:
    import polars as pl

    from tracelens.calltree import CallTree
    from tracelens.detectors.base import Rule
    from tracelens.model import Finding, Span

# Columns every run reads; rules add what their matchers need (``attributes`` only then).
BASE_COLUMNS = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "kind",
    "start_ns",
    "end_ns",
    "duration_ns",
    "status_code",
    "follows_from",
    "service",
    "db_system",
    "db_fingerprint",
    "peer",
    "http_route",
    "http_method",
    "http_url",
    "rpc_method",
)
SKIPPED_IN_SPANS = ("resource_attributes", "links", "trace_state", "scope_name", "scope_version")
CHUNK_TRACES = 2_000  # traces read per query when building call trees
MAX_TRACE_IDS = 50  # evidence kept on a finding merged over many traces
MAX_SPAN_IDS = 200
WINDOW_LOOKBACK_NS = 10 * 10**9  # explain without SQL: traces started up to 10 s earlier
MAX_WINDOW_TRACES = 5_000  # explain: concurrent traces looked at, at most


# --- results ----------------------------------------------------------------------------------


@dataclass
class Endpoint:
    service: str
    operation: str
    traces: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    attribution: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "operation": self.operation,
            "traces": self.traces,
            "p50_ms": round(self.p50_ms, 3),
            "p95_ms": round(self.p95_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "attribution": [
                {
                    "service": a["service"],
                    "operation": a["operation"],
                    "share": a["share"],
                    "excess_ms": a.get("excess_ms"),
                }
                for a in self.attribution
            ],
        }


@dataclass
class AnalysisResult:
    findings: list[Finding]  # most impactful first
    endpoints: list[Endpoint]  # busiest first
    stats: dict[str, Any] = field(default_factory=dict)  # spans, traces, rules, timings

    def to_dict(self) -> dict[str, Any]:
        keep = ("spans", "traces", "rules", "trees_built")
        return {
            "findings": [f.to_dict() for f in self.findings],
            "endpoints": [e.to_dict() for e in self.endpoints],
            "stats": {k: self.stats[k] for k in keep if k in self.stats},
        }

    def worst_severity(self) -> str | None:
        return worst_severity(self.findings)


def severity_rank(severity: str) -> int:
    """0 for info … 4 for critical; unknown names fail with "did you mean"."""
    if severity not in SEVERITIES:
        from tracelens.rules import did_you_mean

        raise RuleError(
            f"unknown severity {severity!r}{did_you_mean(severity, SEVERITIES)} "
            f"(one of {', '.join(SEVERITIES)})"
        )
    return SEVERITIES.index(severity)


def worst_severity(findings: Iterable[Finding]) -> str | None:
    """The highest severity among ``findings`` (None when there are none): for ``--fail-on``."""
    ranks = [severity_rank(f.severity) for f in findings]
    return SEVERITIES[max(ranks)] if ranks else None


# --- call trees -------------------------------------------------------------------------------


def trace_context(tree: CallTree) -> TraceContext:
    """A call tree with its critical-path self time, ready for trace-scope detectors."""
    from tracelens.critical_path import self_time

    times = self_time(tree)
    return TraceContext(tree, times, frozenset(s for s, ns in times.items() if ns > 0))


class TraceCache:
    """Builds TraceContexts from the reader, batching reads and caching within one run."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self._spans: dict[str, list[Span]] = {}
        self._contexts: dict[str, TraceContext] = {}
        self.built = 0

    def seed(self, trace_id: str, ctx: TraceContext) -> None:
        self._contexts[trace_id] = ctx

    def prefetch(self, trace_ids: Iterable[str]) -> None:
        """Read the spans of many traces with one query per chunk."""
        from tracelens.model import SPAN_SCHEMA, spans_from_table

        # What Span holds: not the resource attributes and links (the largest JSON columns).
        columns = [c for c in SPAN_SCHEMA.names if c not in SKIPPED_IN_SPANS]
        missing = sorted({t for t in trace_ids if t not in self._contexts and t not in self._spans})
        for i in range(0, len(missing), CHUNK_TRACES):
            table = self.reader.scan(columns, trace_ids=missing[i : i + CHUNK_TRACES])
            for span in spans_from_table(table):
                self._spans.setdefault(span.trace_id, []).append(span)

    def context(self, trace_id: str) -> TraceContext:
        """The trace's context, cached for the rest of the run."""
        ctx = self._contexts.get(trace_id)
        if ctx is None:
            ctx = self._contexts[trace_id] = self.transient(trace_id)
        return ctx

    def transient(self, trace_id: str) -> TraceContext:
        """The trace's context without keeping it (unless it is cached already)."""
        from tracelens.calltree import build
        from tracelens.model import spans_from_table

        ctx = self._contexts.get(trace_id)
        if ctx is not None:
            return ctx
        spans = self._spans.pop(trace_id, None)
        if spans is None:
            spans = spans_from_table(self.reader.get_trace(trace_id))
        self.built += 1
        return trace_context(build(spans))


# --- analyze ----------------------------------------------------------------------------------


def analyze(
    reader: Any,
    rules: Sequence[Rule] | None = None,
    *,
    service: str | None = None,
    since_ns: int | None = None,
    until_ns: int | None = None,
) -> AnalysisResult:
    """Run every rule over the stored traces (those touching ``service``, started in the window).

    ``reader`` is a :class:`tracelens.store.Store` or anything with its read methods.
    """
    from tracelens.endpoints import trace_table

    if rules is None:
        from tracelens.rules import load_rules

        rules = load_rules()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    spans = load_spans(reader, rules, since_ns=since_ns, until_ns=until_ns, service=service)
    traces = trace_table(spans)
    timings["load_s"] = time.perf_counter() - t0
    cache = TraceCache(reader)
    ctx = StoreContext(spans, traces, cache.context, extra={"prefetch": cache.prefetch})
    per_rule: dict[str, float] = {}
    findings = _run_store_rules(ctx, rules, per_rule)
    findings += _run_trace_rules(ctx, rules, cache, per_rule)
    t1 = time.perf_counter()
    endpoints = endpoint_list(ctx, rules)
    timings["endpoints_s"] = time.perf_counter() - t1
    if service:
        findings = [f for f in findings if _involves(f, service)]
    timings["total_s"] = time.perf_counter() - t0
    stats = {
        "spans": spans.height,
        "traces": traces.height,
        "rules": len(rules),
        "trees_built": cache.built,
        **{k: round(v, 3) for k, v in timings.items()},
        "rule_s": {k: round(v, 3) for k, v in per_rule.items()},
    }
    return AnalysisResult(sort_findings(findings), endpoints, stats)


def load_spans(
    reader: Any,
    rules: Sequence[Rule],
    *,
    since_ns: int | None = None,
    until_ns: int | None = None,
    service: str | None = None,
) -> pl.DataFrame:
    """The span columns the rules need, as polars (only traces touching ``service``)."""
    import polars as pl

    columns = needed_columns(rules)
    spans = pl.from_arrow(_scan(reader, columns, since_ns=since_ns, until_ns=until_ns))
    assert isinstance(spans, pl.DataFrame)
    if service:
        touching = spans.filter(pl.col("service") == service)["trace_id"].unique()
        spans = spans.filter(pl.col("trace_id").is_in(touching.implode()))
    return spans


def _scan(reader: Any, columns: list[str], **window: Any) -> Any:
    """``reader.scan`` without its ORDER BY when the reader offers that (≈1 s per 1M spans):
    nothing here depends on the row order."""
    import inspect

    if "ordered" in inspect.signature(reader.scan).parameters:
        return reader.scan(columns, ordered=False, **window)
    return reader.scan(columns, **window)


def needed_columns(rules: Sequence[Rule]) -> list[str]:
    from tracelens import detectors

    cols = dict.fromkeys(BASE_COLUMNS)
    for rule in rules:
        cols.update(dict.fromkeys(sorted(rule.match.columns)))
        cols.update(dict.fromkeys(getattr(detectors.get(rule.kind), "COLUMNS", ())))
    return list(cols)


def _run_store_rules(
    ctx: StoreContext, rules: Sequence[Rule], timings: dict[str, float] | None = None
) -> list[Finding]:
    from tracelens import detectors

    out: list[Finding] = []
    for rule in rules:
        module = detectors.get(rule.kind)
        if module.SCOPE == "store":
            t0 = time.perf_counter()
            out += module.detect(ctx, rule)
            if timings is not None:
                timings[rule.id] = time.perf_counter() - t0
    return out


def _run_trace_rules(
    ctx: StoreContext, rules: Sequence[Rule], cache: TraceCache, timings: dict[str, float]
) -> list[Finding]:
    """Trace-scope rules on their candidate traces; findings merged per rule and resource.

    ``timings`` gets each rule's prefilter and detect time; building the trees is counted
    separately (``trees``) since the rules share them."""
    from tracelens import detectors

    wanted: dict[str, list[Rule]] = defaultdict(list)
    for rule in rules:
        module = detectors.get(rule.kind)
        if module.SCOPE != "trace":
            continue
        t0 = time.perf_counter()
        if hasattr(module, "candidates"):
            ids: Iterable[str] = module.candidates(ctx, rule)
        else:
            ids = ctx.traces["trace_id"].to_list()
        for tid in ids:
            wanted[tid].append(rule)
        timings[rule.id] = time.perf_counter() - t0
    found: list[Finding] = []
    order = sorted(wanted)
    trees = 0.0
    for i in range(0, len(order), CHUNK_TRACES):
        chunk = order[i : i + CHUNK_TRACES]
        t0 = time.perf_counter()
        cache.prefetch(chunk)
        trees += time.perf_counter() - t0
        for tid in chunk:
            t0 = time.perf_counter()
            tctx = cache.transient(tid)
            trees += time.perf_counter() - t0
            for rule in wanted[tid]:
                t0 = time.perf_counter()
                found += detectors.get(rule.kind).detect(tctx, rule)
                timings[rule.id] += time.perf_counter() - t0
    timings["(trace trees)"] = trees
    return merge_across_traces(found, _durations(ctx.traces))


def _durations(traces: pl.DataFrame) -> dict[str, int]:
    return dict(zip(traces["trace_id"].to_list(), traces["duration_ns"].to_list(), strict=True))


def merge_across_traces(findings: list[Finding], durations: dict[str, int]) -> list[Finding]:
    """One finding per (rule, service, operation, resource): counts and impact add up."""
    groups: dict[tuple, list[Finding]] = defaultdict(list)
    for f in findings:
        groups[(f.rule, f.service, f.operation, f.resource)].append(f)
    return [_merge(group, durations) for group in groups.values()]


def _merge(group: list[Finding], durations: dict[str, int]) -> Finding:
    if len(group) == 1:
        return group[0]
    group = sorted(group, key=lambda f: (-f.impact_ms, f.trace_ids))
    worst = group[0]
    trace_ids = list(dict.fromkeys(t for f in group for t in f.trace_ids))
    impact = sum(f.impact_ms for f in group)
    total_ms = sum(durations.get(t, 0) for t in trace_ids) / 1e6
    details = dict(worst.details)
    details.update(
        occurrences=len(group),
        traces_affected=len(trace_ids),
        worst_impact_ms=round(worst.impact_ms, 3),
    )
    return type(worst)(
        rule=worst.rule,
        kind=worst.kind,
        severity=worst.severity,
        service=worst.service,
        operation=worst.operation,
        resource=worst.resource,
        trace_ids=trace_ids[:MAX_TRACE_IDS],
        span_ids=list(dict.fromkeys(s for f in group for s in f.span_ids))[:MAX_SPAN_IDS],
        count=sum(f.count for f in group),
        impact_ms=impact,
        impact_share=min(1.0, impact / total_ms) if total_ms > 0 else worst.impact_share,
        summary=f"{worst.summary} (in {len(trace_ids)} traces)",
        fix=worst.fix,
        details=details,
    )


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    return sorted(
        findings,
        key=lambda f: (
            -f.impact_ms,
            -severity_rank(f.severity),
            f.kind,
            f.service,
            f.operation,
            f.resource or "",
            f.trace_ids[:1],
        ),
    )


def _involves(finding: Finding, service: str) -> bool:
    return finding.service == service or service in finding.details.get("services", ())


def endpoint_list(ctx: StoreContext, rules: Sequence[Rule]) -> list[Endpoint]:
    """Endpoints with percentiles and the tail attribution of the first tail_latency rule."""
    from tracelens.detectors import tail_latency
    from tracelens.endpoints import endpoint_stats

    tail_rule = next((r for r in rules if r.kind == tail_latency.KIND), None)
    shares = tail_latency.attribution(ctx, tail_rule.params if tail_rule else None)
    return [
        Endpoint(
            row["root_service"],
            row["root_name"],
            row["traces"],
            row["p50_ms"],
            row["p95_ms"],
            row["p99_ms"],
            shares.get((row["root_service"], row["root_name"]), []),
        )
        for row in endpoint_stats(ctx.traces).iter_rows(named=True)
    ]


# --- explain ----------------------------------------------------------------------------------


def findings_for_trace(
    reader: Any, trace_id: str, tree: CallTree, rules: Sequence[Rule] | None = None
) -> list[Finding]:
    """Findings for one trace: trace-scope rules on its tree, store-scope rules on the trace
    alone and over the traces overlapping it in time (kept when they involve this trace)."""
    from tracelens import detectors

    if rules is None:
        from tracelens.rules import load_rules

        rules = load_rules()
    tctx = trace_context(tree)
    cache = TraceCache(reader)
    cache.seed(trace_id, tctx)
    out: list[Finding] = []
    for rule in rules:
        if detectors.get(rule.kind).SCOPE == "trace":
            out += detectors.get(rule.kind).detect(tctx, rule)
    store_rules = [r for r in rules if detectors.get(r.kind).SCOPE == "store"]
    if store_rules:
        own = set(tree.spans)
        found = []
        for ctx in _store_contexts(reader, trace_id, rules, cache):
            found += [
                f
                for f in _run_store_rules(ctx, store_rules)
                if trace_id in f.trace_ids or own.intersection(f.span_ids)
            ]
        out += _new_only(found, out)
    return sort_findings(out)


def _store_contexts(
    reader: Any, trace_id: str, rules: Sequence[Rule], cache: TraceCache
) -> Iterator[StoreContext]:
    """(a) the trace alone; (b) the traces overlapping its time window, when there are others."""
    import polars as pl

    from tracelens.endpoints import trace_table

    columns = needed_columns(rules)
    alone = pl.from_arrow(reader.get_trace(trace_id)).select(columns)
    if alone.is_empty():
        return
    own = trace_table(alone)
    yield StoreContext(alone, own, cache.context, extra={"prefetch": cache.prefetch})
    t0, t1 = int(own["start_ns"][0]), int(own["end_ns"][0])
    ids = _overlapping_traces(reader, t0, t1)
    if ids is not None and len(ids) <= 1:
        return
    if ids is not None:
        window = pl.from_arrow(reader.scan(columns, trace_ids=ids))
    else:  # a reader without SQL: traces that started shortly before, then by overlap
        window = pl.from_arrow(
            reader.scan(columns, since_ns=t0 - WINDOW_LOOKBACK_NS, until_ns=t1 + 1)
        )
    traces = trace_table(window).filter((pl.col("start_ns") <= t1) & (pl.col("end_ns") >= t0))
    if traces.height <= 1:
        return
    window = window.filter(pl.col("trace_id").is_in(traces["trace_id"].implode()))
    yield StoreContext(window, traces, cache.context, extra={"prefetch": cache.prefetch})


def _overlapping_traces(reader: Any, t0: int, t1: int) -> list[str] | None:
    """Ids of the traces with a span overlapping [t0, t1] (None if the reader cannot say).

    A span-level range query (``Store.overlapping_trace_ids``) reads only the row groups of
    that moment, where the store's trace-start window groups the whole table."""
    overlapping = getattr(reader, "overlapping_trace_ids", None)
    if overlapping is None:
        return None
    return overlapping(t0, t1, MAX_WINDOW_TRACES)


def _new_only(findings: list[Finding], known: list[Finding]) -> list[Finding]:
    """Store-scope findings not already reported: the first per (rule, service, operation,
    resource) wins, the single-trace ones (found first) before the cross-trace ones."""
    seen = {(f.rule, f.service, f.operation, f.resource) for f in known}
    out = []
    for f in findings:
        key = (f.rule, f.service, f.operation, f.resource)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out
