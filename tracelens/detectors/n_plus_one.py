"""N+1: one parent issuing the same call again and again, where one batched call would do.

Calls are grouped under their parent by a *repeat key*:

- database and cache spans: the statement fingerprint (Redis ``GET ?``), with the span name
  added when the fingerprint is a bare verb (HotROD's ``GetDriver`` and ``FindDriverIDs`` are
  both just ``GET`` to redis);
- RPC client spans: the RPC method; HTTP client spans: method + URL with ids and the query
  values parameterized (``GET http://h/users/?``);
- other CLIENT/PRODUCER spans: span name + peer;
- SERVER/CONSUMER spans only when no client span stands between them and their parent (an
  uninstrumented caller); a server span under a client span is the callee of a call already
  counted at the caller, so the same repeats are never reported twice.

A group fires with ≥ ``min_repeats`` calls totalling ≥ ``min_total_ms`` (Sentry's defaults are
the floor). Unlike Sentry the repeats need not be consecutive: pool ``connect`` spans (or any
other spans) between them are listed as ``interleaved_with``; and they may overlap (a
concurrent N+1, ``concurrent: true`` with the largest number in flight).

Numbers reported (ms):

- ``total_ms``: the sum of the repeats' durations;
- ``critical_path_ms``: the trace's critical-path time attributed to the repeats and their
  descendants (the sum of their self time on the path), i.e. how much of the request's latency
  the repeats account for. This is the finding's ``impact_ms``;
- ``saving_ms``: ``critical_path_ms`` minus one typical call (the median duration): the latency
  saved if one batched call, costing about one round trip, replaced them.

The "1" of the N+1 — the earlier call to the same destination that fetched the list — is
named when present (``first_call``, ``calls_with_first``); it is not counted in ``count``, as
it cannot be folded into the batch.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tracelens.detectors.base import impact_share, make_finding
from tracelens.detectors.intervals import max_in_flight, median, union_ns
from tracelens.detectors.resource import url_template

if TYPE_CHECKING:
    import polars as pl

    from tracelens.detectors.base import Rule, StoreContext, TraceContext
    from tracelens.model import Finding, Span

KIND = "n_plus_one"
SCOPE = "trace"
# Spans that check a connection out of a pool (SQLAlchemy's ``connect`` wraps the checkout):
# interleaved with the repeats, never repeats themselves (pool_wait reads them).
ACQUIRE_NAMES = (
    r"(?i)(^connect$|checkout|check[ ._-]out|pool[ ._-]?(acquire|get|wait)"
    r"|acquire[ ._-]?conn|get[ ._-]?conn)"
)
PARAMS: dict[str, Any] = {
    "min_repeats": 5,  # calls with one repeat key under one parent (Sentry: 5)
    "min_total_ms": 50.0,  # their summed duration (Sentry: 50 ms)
    "acquire_names": ACQUIRE_NAMES,  # regex: pool checkout spans, never counted as repeats
}
FIELDS = (
    "count",
    "total_ms",
    "critical_path_ms",
    "saving_ms",
    "typical_ms",
    "resource",
    "parent",
    "service",
    "operation",
    "mode",
    "max_in_flight",
    "interleaved_with",
    "lead_in",
)
SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5
_CALLER_KINDS = (CLIENT, PRODUCER)
_CALLEE_KINDS = (SERVER, CONSUMER)


# --- the repeat key ---------------------------------------------------------------------------


def repeat_key(span: Span, parent: Span | None, acquire: re.Pattern[str]) -> tuple | None:
    """What makes two calls under one parent "the same call"; None for spans that never repeat."""
    if acquire.search(span.name):
        return None
    if span.kind in _CALLEE_KINDS:
        if parent is None or parent.kind in _CALLER_KINDS or parent.service == span.service:
            return None
        return ("callee", span.service, span.name)
    if span.db_fingerprint is not None:
        bare_verb = " " not in span.db_fingerprint
        return (
            "db",
            span.service,
            span.db_system,
            span.peer,
            span.db_fingerprint,
            span.name if bare_verb else None,
        )
    if span.kind not in _CALLER_KINDS:
        return None
    if span.rpc_method is not None:
        return ("rpc", span.service, span.rpc_method, span.peer)
    if span.http_method is not None or span.http_url is not None:
        return ("http", span.service, span.http_method, http_template(span.http_url, span.name))
    return ("call", span.service, span.name, span.peer)


def http_template(url: str | None, name: str) -> str:
    """URL with id-like path segments as ``?`` and query values as ``?`` (keys kept)."""
    if not url:
        return name
    base, _, query = url.partition("?")
    query = query.split("#", 1)[0]
    path = url_template(base) or name
    if not query:
        return path
    keys = sorted(part.split("=", 1)[0] for part in query.split("&") if part)
    return path + "?" + "&".join(f"{k}=?" for k in keys)


def describe(key: tuple, span: Span, caller: str | None = None) -> str:
    """The repeated call as one line for the finding's ``resource``."""
    what = key[0]
    if what == "db":
        target = span.db_fingerprint if key[5] is None else f"{span.name} ({key[4]})"
        system = f"{span.db_system} " if span.db_system else ""
        # Without a peer, a client span in its own service (HotROD's redis-manual) names it.
        peer = span.peer or (span.service if caller and span.service != caller else None)
        return f"{system}{target}" + (f" @ {peer}" if peer else "")
    if what == "rpc":
        return span.rpc_method or span.name
    if what == "http":
        return f"{span.http_method or ''} {key[3]}".strip()
    if what == "callee":
        return f"{span.service} {span.name}"
    return f"{span.name} @ {span.peer}" if span.peer else f"{span.name} ({span.service})"


# --- prefilter --------------------------------------------------------------------------------


def candidates(ctx: StoreContext, rule: Rule) -> Iterable[str]:
    """Traces where some parent has ≥ min_repeats keyed calls of one coarse key.

    The coarse key (service + fingerprint / RPC method / HTTP method / name) is a function of
    the exact repeat key, so every group the exact key finds lies inside a coarse group that
    passes the same thresholds: this never drops a trace that ``detect`` would report.
    """
    import polars as pl

    p = rule.params
    spans = rule.match.filter(ctx.spans.filter(pl.col("parent_span_id").is_not_null()))
    if spans.is_empty():
        return []
    acquire = matching_names(spans, p["acquire_names"])
    kind, fp = pl.col("kind"), pl.col("db_fingerprint")
    caller = kind.is_in(_CALLER_KINDS)
    http = pl.col("http_method").is_not_null() | pl.col("http_url").is_not_null()
    # (what, value) mirrors repeat_key's branches; a hash of the whole key is grouped on (one
    # integer: several times faster than strings; a collision only merges groups, which keeps
    # this a superset).
    what = (
        pl.when(fp.is_not_null() & ~kind.is_in(_CALLEE_KINDS))
        .then(1)
        .when(caller & pl.col("rpc_method").is_not_null())
        .then(2)
        .when(caller & http)
        .then(3)
        .when(caller)
        .then(4)
        .when(kind.is_in(_CALLEE_KINDS))
        .then(5)
    )
    value = (
        pl.when(what == 1)
        .then(fp)
        .when(what == 2)
        .then(pl.col("rpc_method"))
        .when(what == 3)
        .then(pl.col("http_method"))
        .otherwise(pl.col("name"))
    )
    keyed = (
        spans.filter(~pl.col("name").is_in(acquire))
        .select(
            "trace_id",
            "duration_ns",
            what.alias("what"),
            value.alias("value"),
            pl.col("parent_span_id"),
            pl.col("service"),
        )
        .filter(pl.col("what").is_not_null())
    )
    groups = (
        keyed.select(
            "trace_id",
            "duration_ns",
            pl.struct("trace_id", "parent_span_id", "service", "what", "value").hash().alias("key"),
        )
        .group_by("key")
        .agg(
            pl.len().alias("n"),
            pl.col("duration_ns").sum().alias("total"),
            pl.col("trace_id").first(),
        )
        .filter((pl.col("n") >= p["min_repeats"]) & (pl.col("total") >= p["min_total_ms"] * 1e6))
    )
    return groups["trace_id"].unique().sort().to_list()


def matching_names(spans: pl.DataFrame, pattern: str) -> list[str]:
    """Distinct span names that ``pattern`` finds: classified once per name in Python, then
    ``is_in``, so vectorized prefilters and per-span code agree exactly."""
    regex = re.compile(pattern)
    return [n for n in spans["name"].unique().to_list() if n is not None and regex.search(n)]


# --- detection --------------------------------------------------------------------------------


def detect(ctx: TraceContext, rule: Rule) -> list[Finding]:
    p = rule.params
    min_total = p["min_total_ms"] * 1e6
    findings = []
    for (parent_id, key), calls in sorted(_groups(ctx, rule).items(), key=_group_order):
        if len(calls) >= p["min_repeats"] and sum(c.duration_ns for c in calls) >= min_total:
            findings.append(_finding(ctx, rule, parent_id, key, calls))
    return findings


def _group_order(item: tuple) -> tuple:
    (parent_id, _), calls = item
    return (min(c.start_ns for c in calls), parent_id, calls[0].span_id)


def _groups(ctx: TraceContext, rule: Rule) -> dict[tuple[str, tuple], list[Span]]:
    tree = ctx.tree
    acquire = re.compile(rule.params["acquire_names"])
    groups: dict[tuple[str, tuple], list[Span]] = defaultdict(list)
    for sid, span in tree.spans.items():
        parent_id = tree.parent(sid)
        if parent_id is None or tree.is_placeholder(sid) or not rule.match.matches(span):
            continue
        key = repeat_key(span, tree.spans.get(parent_id), acquire)
        if key is not None:
            groups[(parent_id, key)].append(span)
    return groups


def critical_path_ns(ctx: TraceContext, span_ids: Iterable[str]) -> int:
    """Critical-path self time of the spans and all their descendants."""
    tree, total = ctx.tree, 0
    stack = list(span_ids)
    seen: set[str] = set()
    while stack:
        sid = stack.pop()
        if sid in seen:
            continue
        seen.add(sid)
        total += ctx.self_time.get(sid, 0)
        stack.extend(tree.children(sid))
    return total


def interleaved_names(ctx: TraceContext, parent_id: str, calls: list[Span]) -> list[str]:
    """Names of the parent's other children that start while the repeats run."""
    ids = {c.span_id for c in calls}
    first = min(c.start_ns for c in calls)
    last = max(c.end_ns for c in calls)
    names = set()
    for sid in ctx.tree.children(parent_id):
        span = ctx.tree.spans[sid]
        if sid not in ids and first <= span.start_ns < last:
            names.add(span.name)
    return sorted(names)


def the_one(ctx: TraceContext, parent_id: str, calls: list[Span]) -> Span | None:
    """The "1" of the N+1: the call that fetched the list the repeats iterate over.

    The parent's last other child to the same service and destination (peer, database system)
    that ended before the first repeat started — HotROD's ``FindDriverIDs`` before its
    ``GetDriver`` calls, the ``SELECT … FROM orders`` before the per-order lookups."""
    first = calls[0]
    ids = {c.span_id for c in calls}
    best: Span | None = None
    for sid in ctx.tree.children(parent_id):
        span = ctx.tree.spans[sid]
        if (
            sid not in ids
            and span.end_ns <= first.start_ns
            and span.kind == first.kind
            and span.service == first.service
            and _destination(span) == _destination(first)
            and (best is None or span.end_ns > best.end_ns)
        ):
            best = span
    return best


def _destination(span: Span) -> tuple:
    """Where a call goes: peer and database, and for HTTP the URL's host:port."""
    netloc = urlsplit(span.http_url).netloc if span.http_url else None
    return (span.peer, span.db_system, netloc)


def _finding(
    ctx: TraceContext, rule: Rule, parent_id: str, key: tuple, calls: list[Span]
) -> Finding:
    calls = sorted(calls, key=lambda s: (s.start_ns, s.span_id))
    parent = ctx.tree.spans.get(parent_id)
    durations = [c.duration_ns for c in calls]
    total, typical = sum(durations), median(durations)
    on_path = critical_path_ns(ctx, [c.span_id for c in calls])
    if not ctx.self_time:  # no critical path computed: the wall time the repeats cover
        on_path = union_ns((c.start_ns, c.end_ns) for c in calls)
    saving = max(0.0, on_path - typical)
    in_flight = max_in_flight((c.start_ns, c.end_ns) for c in calls)
    interleaved = interleaved_names(ctx, parent_id, calls)
    service = parent.service if parent else calls[0].service
    resource = describe(key, calls[0], service)
    operation = parent.name if parent else calls[0].name
    one = the_one(ctx, parent_id, calls)
    lead_in = ""
    if one is not None:
        # HotROD's redis-manual spans carry no peer: the emitting service is the destination.
        callee = calls[0].service if calls[0].service != service else None
        destination = calls[0].peer or callee or calls[0].db_system or "it"
        lead_in = f" after one {one.name} ({len(calls) + 1} calls to {destination} in all)"
    details = {
        "count": len(calls),
        "total_ms": _ms(total),
        "critical_path_ms": _ms(on_path),
        "saving_ms": _ms(saving),
        "typical_ms": _ms(typical),
        "concurrent": in_flight > 1,
        "max_in_flight": in_flight,
        "interleaved_with": interleaved,
        "parent_span_id": parent_id,
        "call_service": calls[0].service,
        "call_name": calls[0].name,
        "distinct_statements": len({c.db_statement or c.http_url or "" for c in calls}),
        "first_call": None if one is None else {"span_id": one.span_id, "name": one.name},
        "calls_with_first": len(calls) + (one is not None),
    }
    return make_finding(
        rule,
        service=service,
        operation=operation,
        resource=resource,
        trace_ids=[calls[0].trace_id],
        span_ids=[c.span_id for c in calls],
        count=len(calls),
        impact_ms=on_path / 1e6,
        impact_share=impact_share(on_path, ctx.duration_ns),
        details=details,
        template_values={
            "count": len(calls),
            "total_ms": f"{total / 1e6:.0f}",
            "critical_path_ms": f"{on_path / 1e6:.0f}",
            "saving_ms": f"{saving / 1e6:.0f}",
            "typical_ms": f"{typical / 1e6:.1f}",
            "resource": resource,
            "parent": operation,
            "mode": "concurrent" if in_flight > 1 else "sequential",
            "max_in_flight": in_flight,
            "interleaved_with": ", ".join(interleaved) or "nothing",
            "lead_in": lead_in,
        },
    )


def _ms(ns: float) -> float:
    return round(ns / 1e6, 3)
