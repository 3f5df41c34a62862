"""Error origin: in a chain of failing spans, the deepest one — where the error started.

A failing span with no failing child, whose failing ancestors form an unbroken chain upward,
is the origin the others propagated. One finding per origin (service, operation, resource)
and trace; repeated failures of one origin in a trace (retries) count into one finding.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from tracelens.detectors.base import impact_share, make_finding
from tracelens.detectors.resource import resource_key

if TYPE_CHECKING:
    from tracelens.detectors.base import Rule, StoreContext, TraceContext
    from tracelens.model import Finding, Span

KIND = "error_origin"
SCOPE = "trace"
PARAMS: dict[str, Any] = {
    "min_chain": 2,  # failing spans in the chain, origin included (1: report lone errors too)
}
FIELDS = (
    "message",
    "error_type",
    "chain",
    "depth",
    "top",
    "failures",
    "service",
    "operation",
    "resource",
    "count",
)
ERROR = 2


def candidates(ctx: StoreContext, rule: Rule) -> Iterable[str]:
    """Traces with ≥ min_chain failing spans, one of them matching the rule."""
    import polars as pl

    errors = ctx.spans.filter(pl.col("status_code") == ERROR)
    if errors.is_empty():
        return []
    matched = rule.match.filter(errors)["trace_id"].unique()
    counts = (
        errors.group_by("trace_id")
        .len()
        .filter(
            (pl.col("len") >= rule.params["min_chain"])
            & pl.col("trace_id").is_in(matched.implode())
        )
    )
    return counts["trace_id"].sort().to_list()


def detect(ctx: TraceContext, rule: Rule) -> list[Finding]:
    tree = ctx.tree
    failing = {sid for sid, span in tree.spans.items() if span.is_error}
    groups: dict[tuple[str, str, str], list[list[str]]] = {}
    for sid in sorted(failing):
        if any(child in failing for child in tree.children(sid)):
            continue  # not the deepest: the error came from below
        chain = error_chain(tree, sid, failing)
        origin = tree.spans[sid]
        if len(chain) < rule.params["min_chain"] or not rule.match.matches(origin):
            continue
        key = (origin.service, origin.name, resource_key(origin))
        groups.setdefault(key, []).append(chain)
    return [_finding(ctx, rule, chains) for _, chains in sorted(groups.items())]


def error_chain(tree: Any, span_id: str, failing: set[str]) -> list[str]:
    """``span_id`` and its unbroken run of failing ancestors, deepest first."""
    chain = [span_id]
    parent = tree.parent(span_id)
    while parent is not None and parent in failing and parent not in chain:
        chain.append(parent)
        parent = tree.parent(parent)
    return chain


def error_message(span: Span) -> tuple[str, str | None]:
    """The span's error message and exception type, from its status or exception event."""
    etype, emsg = None, None
    for event in span.events or ():
        if event.get("name") == "exception":
            attrs = event.get("attributes") or {}
            etype = attrs.get("exception.type") or etype
            emsg = attrs.get("exception.message") or emsg
    message = span.status_message or emsg or etype
    if not message and span.http_status:
        message = f"HTTP {span.http_status}"
    return (message or "error (no message)"), etype


def _finding(ctx: TraceContext, rule: Rule, chains: list[list[str]]) -> Finding:
    spans = ctx.tree.spans
    chain = max(chains, key=len)
    origin, top = spans[chain[0]], spans[chain[-1]]
    message, etype = error_message(origin)
    # A caller often records the exception the origin only set a status for (Flask, gRPC).
    etype = etype or next((t for s in chain[1:] if (t := error_message(spans[s])[1])), None)
    services = list(dict.fromkeys(spans[s].service for s in reversed(chain)))
    return make_finding(
        rule,
        service=origin.service,
        operation=origin.name,
        resource=resource_key(origin),
        trace_ids=[origin.trace_id],
        span_ids=list(dict.fromkeys(sid for c in chains for sid in c)),
        count=len(chains),
        impact_ms=top.duration_ns / 1e6,
        impact_share=impact_share(top.duration_ns, ctx.duration_ns),
        details={
            "message": message,
            "error_type": etype,
            "origin_span_ids": [c[0] for c in chains],
            "chain": [f"{spans[s].service} {spans[s].name}" for s in reversed(chain)],
            "depth": len(chain),
            "services": services,
        },
        template_values={
            "message": _one_line(message),
            "error_type": etype or "no exception recorded",
            "chain": " -> ".join(services),
            "depth": len(chain),
            "top": f"{top.service} {top.name}",
            "failures": len(chains),
        },
    )


def _one_line(text: str, limit: int = 160) -> str:
    """The first line of a message, shortened: summaries are one line."""
    line = text.strip().splitlines()[0] if text.strip() else text
    return line if len(line) <= limit else line[: limit - 1] + "…"
