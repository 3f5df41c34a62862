"""Connection-pool wait: requests queue for one of K pooled resources (connections, workers).

Calls are grouped per (calling service, pool resource): the origin of an HTTP URL
(``http://host:port``), ``<db system>://<peer>`` for databases, ``rpc://<peer>`` for RPC,
else the peer or the span name. Two kinds of evidence, per group:

- **Explicit acquire spans** (names matching ``acquire_names``: SQLAlchemy's ``connect`` CLIENT
  span wraps the pool checkout; ``pool.acquire``, ``checkout``…). Each acquire opens a *hold*:
  the connection is surely in use from the acquire's end to the end of the last call of that
  trace before its next acquire, and comes back (untraced) by the end of the acquire's parent.
  K is the peak number of holds at once. An acquire *queued* when all K holds were taken by
  others for ≥ ``min_wait_ms`` (and ≥ ``min_busy_share`` of its duration) and it ended while
  another trace's connection was coming back (between that hold's last call and its parent's
  end, or ≤ ``handoff_ms`` later). Its wait is its duration. A slow acquire that is not queued
  (opening a new connection, NullPool) is not a pool wait. K = 1 is allowed here: the acquire
  spans prove there is a pool.
- **Inferred** (groups without acquire spans): K is the peak number of calls in flight (one
  sweep over start/end events, across all traces and within each). A call *queued* when, from
  the moment it could have started (its parent's start or its previous sibling's end; for a
  parent that dispatches the group's calls concurrently, siblings of that fan-out do not count)
  to its start, all K slots were busy for ≥ ``min_wait_ms`` (and for ≥ ``min_busy_share`` of
  that time), and it started within ``handoff_ms`` of another call ending. Its wait is that
  busy time. K must be ≥ ``min_ceiling``: K = 1 with such gaps is serialization on one
  resource, which ``lock_contention`` reports; a sequential loop never queues (each call is
  ready only when the previous one ended).

A group fires with ≥ ``min_waits`` queued calls waiting ≥ ``min_total_wait_ms`` in all.
``impact_ms`` is the wall time requests spent with a call queued (per trace, the union of the
waits), ``impact_share`` its share of those requests' latency.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from tracelens.detectors.base import impact_share, make_finding
from tracelens.detectors.intervals import (
    InFlight,
    Queue,
    max_in_flight,
    quantile,
    queue,
    union_ns,
)
from tracelens.detectors.n_plus_one import ACQUIRE_NAMES, matching_names

if TYPE_CHECKING:
    import polars as pl

    from tracelens.detectors.base import Rule, StoreContext
    from tracelens.model import Finding

KIND = "pool_wait"
SCOPE = "store"
PARAMS: dict[str, Any] = {
    "min_ceiling": 2,  # inferred pools: K ≥ this (K = 1 serialization is lock_contention's)
    "handoff_ms": 3.0,  # a queued call starts (an acquire ends) this soon after a slot frees
    "min_wait_ms": 1.0,  # per queued call: time with all K slots busy before it could go
    "min_busy_share": 0.5,  # ... and all K were busy for this share of its whole wait
    "min_waits": 3,  # queued calls needed
    "min_total_wait_ms": 20.0,  # their summed wait
    "acquire_names": ACQUIRE_NAMES,  # regex: spans that check a resource out of a pool
    "max_evidence": 50,  # queued spans and affected traces reported (longest waits first)
}
FIELDS = (
    "ceiling",
    "resource",
    "service",
    "operation",
    "queued",
    "calls",
    "wait_total_ms",
    "wait_p95_ms",
    "wait_max_ms",
    "share",
    "evidence",
    "max_queued",
    "traces",
    "count",
    "impact_ms",
)
SERVER, CLIENT, CONSUMER = 2, 3, 5
_CALL_COLUMNS = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "kind",
    "start_ns",
    "end_ns",
    "service",
    "db_system",
    "db_fingerprint",
    "peer",
    "http_url",
    "rpc_method",
)
_MAX_LOOKBACK = 256  # releases examined per acquire (bounds the work in a saturated pool)
_ORIGIN = r"^([A-Za-z][A-Za-z0-9+.-]*://[^/?#]+)"


# --- frames -----------------------------------------------------------------------------------


def pool_resource() -> pl.Expr:
    """What one pool serves: HTTP origin, ``system://peer`` for databases, ``rpc://peer``…"""
    import polars as pl

    peer = pl.when(pl.col("peer") == "").then(None).otherwise(pl.col("peer"))
    system = pl.col("db_system").str.to_lowercase()
    return pl.coalesce(
        pl.col("http_url").str.extract(_ORIGIN, 1),
        pl.when(system.is_not_null()).then(system + "://" + peer.fill_null("")),
        pl.when(pl.col("rpc_method").is_not_null() & peer.is_not_null()).then("rpc://" + peer),
        peer,
        pl.col("name"),
    ).alias("resource")


def split_calls(spans: pl.DataFrame, acquire_pattern: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(client calls, acquire spans), each with ``resource`` and ``group`` columns."""
    import polars as pl

    acquire = pl.col("name").is_in(matching_names(spans, acquire_pattern))
    kind = pl.col("kind")
    client = (kind == CLIENT) | (
        pl.col("db_fingerprint").is_not_null() & ~kind.is_in([SERVER, CONSUMER])
    )
    keyed = (
        spans.select(_CALL_COLUMNS)
        .filter(client | acquire)
        .with_columns(pool_resource(), acquire.alias("acquire"))
    )
    # The group key is a hash: grouping on one integer is several times faster than on strings.
    keyed = keyed.with_columns(pl.struct("service", "resource").hash().alias("group"))
    return keyed.filter(~pl.col("acquire")), keyed.filter(pl.col("acquire"))


def fanned_calls(calls: pl.DataFrame) -> pl.DataFrame:
    """(trace_id, span_id) of calls in a concurrent fan-out: their parent has other calls of
    the same group overlapping them (dispatched together, none waits for another)."""
    import polars as pl

    key = ["trace_id", "parent_span_id", "group"]
    return (
        calls.select(*key, "span_id", "start_ns", "end_ns")
        .sort("start_ns")
        .with_columns(pl.col("end_ns").cum_max().shift(1).over(key).alias("_prev_end"))
        .with_columns((pl.col("start_ns") < pl.col("_prev_end")).fill_null(False).alias("_ov"))
        .filter(pl.col("_ov").any().over(key))
        .select("trace_id", "span_id")
    )


def family(spans: pl.DataFrame, calls: pl.DataFrame) -> pl.DataFrame:
    """The spans of the traces ``calls`` belong to (a cheap cut before joins)."""
    import polars as pl

    return spans.filter(pl.col("trace_id").is_in(calls["trace_id"].unique().implode()))


def parent_times(
    spans: pl.DataFrame, parents: pl.DataFrame, column: str, alias: str
) -> pl.DataFrame:
    """``column`` of each parent in ``parents`` (``trace_id``, ``parent_span_id``) as ``alias``."""
    import polars as pl

    key = ["trace_id", "parent_span_id"]
    return (
        spans.select(
            "trace_id", pl.col("span_id").alias("parent_span_id"), pl.col(column).alias(alias)
        )
        .join(parents, on=key, how="semi")
        .unique(key)
    )


def with_ready(
    calls: pl.DataFrame,
    spans: pl.DataFrame,
    skip_names: list[str] | None = None,
    fanned: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Adds ``ready_ns``: when each call could have started.

    That is the latest of its parent's start and the end of the last earlier sibling, where
    siblings named in ``skip_names`` (pool checkouts: waiting, not work) and siblings in a
    concurrent fan-out of one group (``fanned``, by default computed from ``calls``:
    dispatched together, so not prerequisites) do not count. Without a parent or siblings,
    the call's own start.
    """
    import polars as pl

    key = ["trace_id", "parent_span_id"]
    fanned = fanned_calls(calls) if fanned is None else fanned
    spans = family(spans, calls)
    parents = calls.select(key).unique()
    siblings = spans.join(parents, on=key, how="semi").join(
        fanned, on=["trace_id", "span_id"], how="anti"
    )
    if skip_names:
        siblings = siblings.filter(~pl.col("name").is_in(skip_names))
    siblings = siblings.select(*key, pl.col("end_ns").alias("_sib_end")).sort("_sib_end")
    parent_start = parent_times(spans, parents, "start_ns", "_parent_start")
    out = (
        calls.join(parent_start, on=key, how="left")
        .sort("start_ns")
        .join_asof(
            siblings,
            left_on="start_ns",
            right_on="_sib_end",
            by=key,
            strategy="backward",
            check_sortedness=False,
        )
    )
    ready = pl.max_horizontal("_parent_start", "_sib_end").fill_null(pl.col("start_ns"))
    return out.with_columns(pl.min_horizontal(ready, pl.col("start_ns")).alias("ready_ns")).drop(
        "_parent_start", "_sib_end"
    )


def holds(calls: pl.DataFrame, acquires: pl.DataFrame, spans: pl.DataFrame) -> pl.DataFrame:
    """Per acquire, when its connection came back: between ``hold_end_ns`` (the end of the
    last call of its trace and group after the acquire, before the trace's next acquire; the
    acquire's end when no call follows) and ``parent_end_ns`` (the end of the acquire's parent:
    the connection is returned when the unit of work that took it finishes, and the return
    itself — a rollback, a round trip — is not traced)."""
    import polars as pl

    by = ["trace_id", "group"]
    acq = acquires.sort("end_ns").select(*by, "span_id", pl.col("end_ns").alias("_acq_end"))
    owned = (
        calls.sort("start_ns")
        .select(*by, "start_ns", "end_ns")
        .join_asof(
            acq,
            left_on="start_ns",
            right_on="_acq_end",
            by=by,
            strategy="backward",
            check_sortedness=False,
        )
        .drop_nulls("span_id")
        .group_by("trace_id", "span_id")
        .agg(pl.col("end_ns").max().alias("_last_end"))
    )
    pkey = ["trace_id", "parent_span_id"]
    parents = (
        family(spans, acquires)
        .select(
            "trace_id",
            pl.col("span_id").alias("parent_span_id"),
            pl.col("end_ns").alias("_parent_end"),
        )
        .join(acquires.select(pkey), on=pkey, how="semi")
        .unique(pkey)
    )
    return (
        acquires.join(owned, on=["trace_id", "span_id"], how="left")
        .join(parents, on=["trace_id", "parent_span_id"], how="left")
        .with_columns(pl.max_horizontal("end_ns", "_last_end").alias("hold_end_ns"))
        .with_columns(pl.max_horizontal("hold_end_ns", "_parent_end").alias("parent_end_ns"))
        .drop("_last_end", "_parent_end")
        .sort("start_ns", "trace_id", "span_id")
    )


def release_gaps(held: pl.DataFrame, lo: list[int], handoff_ns: float) -> list[int]:
    """Per acquire: how long after another trace's connection came back it ended (0 inside
    that hold's release window ``[hold_end, parent_end]``, −1 when no release fell in
    ``[lo, end]``). Only acquires with ``lo`` ≥ 0 are looked at (the others get −1)."""
    import bisect

    order = sorted(range(held.height), key=held["hold_end_ns"].to_list().__getitem__)
    hold_end = [held["hold_end_ns"][i] for i in order]
    parent_end = [held["parent_end_ns"][i] for i in order]
    owner = [held["trace_id"][i] for i in order]
    tids, ends = held["trace_id"].to_list(), held["end_ns"].to_list()
    gaps = []
    for i, (tid, end) in enumerate(zip(tids, ends, strict=True)):
        best = -1
        j = bisect.bisect_right(hold_end, end) - 1
        looked = 0
        while lo[i] >= 0 and j >= 0 and hold_end[j] >= lo[i] and looked < _MAX_LOOKBACK:
            if owner[j] != tid:
                gap = max(0, end - parent_end[j])
                if gap <= handoff_ns and (best < 0 or gap < best):
                    best = gap
            j -= 1
            looked += 1
        gaps.append(best)
    return gaps


# --- detection --------------------------------------------------------------------------------


def detect(ctx: StoreContext, rule: Rule) -> list[Finding]:
    p = rule.params
    spans = rule.match.filter(ctx.spans)
    if spans.is_empty():
        return []
    calls, acquires = split_calls(spans, p["acquire_names"])
    explicit = set(acquires["group"].unique().to_list())
    findings = []
    for group, acq in _partition(acquires):
        found = _explicit(calls.filter(_eq_group(group)), acq, ctx.spans, p)
        if found is not None:
            findings.append(_finding(ctx, rule, found))
    inferred = calls.filter(~_in_groups(explicit))
    inferred = inferred.filter(_busy_groups(inferred, p))
    findings += [_finding(ctx, rule, f) for f in _inferred(inferred, ctx.spans, p)]
    return findings


def _partition(df: pl.DataFrame) -> list[tuple[int, pl.DataFrame]]:
    """The frame per group, in (service, resource) order."""
    if df.is_empty():
        return []
    parts = df.partition_by("group", as_dict=True, maintain_order=True)
    return sorted(
        ((key[0], part) for key, part in parts.items()),
        key=lambda kv: (kv[1]["service"][0], kv[1]["resource"][0]),
    )


def _eq_group(group: int) -> pl.Expr:
    import polars as pl

    return pl.col("group") == group


def _in_groups(groups: set[int]) -> pl.Expr:
    import polars as pl

    return pl.col("group").is_in(sorted(groups))


def _busy_groups(calls: pl.DataFrame, p: dict[str, Any]) -> pl.Expr:
    """Groups with enough calls to ever show min_waits queued calls (cheap prefilter)."""
    import polars as pl

    counts = (
        calls.group_by("group").len().filter(pl.col("len") >= p["min_waits"] + p["min_ceiling"])
    )
    return pl.col("group").is_in(counts["group"].implode())


class _Found:
    """One group's queued items, ready for the finding."""

    def __init__(
        self,
        group: pl.DataFrame,
        items: pl.DataFrame,
        waits: pl.Series,
        ceiling: int,
        evidence: str,
        calls: int,
        handoffs: pl.Series,
    ) -> None:
        self.group, self.items, self.waits = group, items, waits
        self.ceiling, self.evidence, self.calls, self.handoffs = ceiling, evidence, calls, handoffs


def _explicit(
    calls: pl.DataFrame, acquires: pl.DataFrame, spans: pl.DataFrame, p: dict[str, Any]
) -> _Found | None:
    import polars as pl

    held = holds(calls, acquires, spans)
    # Slots: the surely-held part of each hold (acquire end → its last call's end).
    q = queue(held["end_ns"], held["hold_end_ns"], held["start_ns"], held["end_ns"])
    if q.ceiling < 1:
        return None
    busy = q.busy_ns.to_list()
    lo = [
        s if b >= p["min_wait_ms"] * 1e6 else -1
        for s, b in zip(held["start_ns"].to_list(), busy, strict=True)
    ]
    q.handoff_ns = pl.Series(release_gaps(held, lo, p["handoff_ms"] * 1e6), dtype=pl.Int64)
    ok = queued_mask(q, p)
    durations = held["end_ns"] - held["start_ns"]
    return _accept(held, ok, durations, q, "acquire spans", held.height, p)


def _inferred(calls: pl.DataFrame, spans: pl.DataFrame, p: dict[str, Any]) -> list[_Found]:
    """Groups without checkout spans: a ceiling of K calls in flight with queueing."""
    import polars as pl

    if calls.is_empty():
        return []
    groups, candidates = [], []
    for name, part in _partition(calls):
        slots = InFlight(part["start_ns"], part["end_ns"])
        if slots.peak < p["min_ceiling"]:
            continue
        groups.append((name, part, slots))
        candidates.append(part.filter(_maybe_queued(part, slots, p)))
    todo = pl.concat(candidates) if candidates else calls.clear()
    if todo.is_empty():
        return []
    skip = matching_names(spans, p["acquire_names"])
    key = ["trace_id", "parent_span_id", "group"]
    siblings = calls.join(todo.select(key).unique(), on=key, how="semi")
    ready = with_ready(todo, spans, skip, fanned_calls(siblings))
    found = []
    for name, part, slots in groups:
        items = ready.filter(_eq_group(name))
        if items.height < p["min_waits"]:
            continue
        q = Queue(slots, part["end_ns"], items["ready_ns"], items["start_ns"], slots.peak)
        hit = _accept(
            items, queued_mask(q, p), q.busy_ns, q, "in-flight ceiling", part.height, p, whole=part
        )
        if hit is not None:
            found.append(hit)
    return found


def _maybe_queued(part: pl.DataFrame, slots: InFlight, p: dict[str, Any]) -> pl.Series:
    """Calls that started within handoff_ms of a call ending while K were in flight: the only
    ones that can have queued (a cut before the joins that find when calls were ready)."""
    q = Queue(slots, part["end_ns"], part["start_ns"], part["start_ns"], slots.peak)
    release = _gather_ends(part["end_ns"], q.release)
    at_ceiling = slots.before(release) >= slots.peak
    return (q.handoff_ns >= 0) & (q.handoff_ns <= p["handoff_ms"] * 1e6) & at_ceiling


def _gather_ends(ends: pl.Series, idx: pl.Series) -> pl.Series:
    import polars as pl

    picked = ends.gather(idx.clip(0, max(len(ends) - 1, 0)))
    return picked.zip_with(idx >= 0, pl.Series([0] * len(idx), dtype=picked.dtype))


def queued_mask(q: Queue, p: dict[str, Any]) -> pl.Series:
    """Items that waited ≥ min_wait_ms with every slot busy (for ≥ min_busy_share of their
    wait) and went within handoff_ms of a slot freeing."""
    busy, handoff = q.busy_ns, q.handoff_ns
    return (
        (busy >= p["min_wait_ms"] * 1e6)
        & (busy >= p["min_busy_share"] * q.waited_ns)
        & (handoff >= 0)
        & (handoff <= p["handoff_ms"] * 1e6)
    )


def _accept(
    items: pl.DataFrame,
    ok: pl.Series,
    waits: pl.Series,
    q: Queue,
    evidence: str,
    calls: int,
    p: dict[str, Any],
    whole: pl.DataFrame | None = None,
) -> _Found | None:
    waits = waits.filter(ok)
    if len(waits) < p["min_waits"] or (waits.sum() or 0) < p["min_total_wait_ms"] * 1e6:
        return None
    return _Found(
        items if whole is None else whole,
        items.filter(ok),
        waits,
        q.ceiling,
        evidence,
        calls,
        q.handoff_ns.filter(ok),
    )


# --- the finding ------------------------------------------------------------------------------


def wait_impact(trace_ids: list[str], starts: list[int], ends: list[int]) -> dict[str, int]:
    """Per trace, the wall time during which at least one of its calls was waiting."""
    per: dict[str, list[tuple[int, int]]] = {}
    for tid, s, e in zip(trace_ids, starts, ends, strict=True):
        per.setdefault(tid, []).append((s, e))
    return {tid: union_ns(iv) for tid, iv in per.items()}


def _finding(ctx: StoreContext, rule: Rule, found: _Found) -> Finding:
    import polars as pl

    p, items, waits = rule.params, found.items, found.waits.to_list()
    ends = items["end_ns" if found.evidence == "acquire spans" else "start_ns"].to_list()
    starts = [int(e - w) for e, w in zip(ends, waits, strict=True)]
    tids = items["trace_id"].to_list()
    per_trace = wait_impact(tids, starts, ends)
    impact = sum(per_trace.values())
    traces = ctx.traces.filter(pl.col("trace_id").is_in(list(per_trace)))
    latency = int(traces["duration_ns"].sum() or 0)
    order = sorted(range(len(waits)), key=lambda i: (-waits[i], tids[i]))[: p["max_evidence"]]
    span_ids = items["span_id"].to_list()
    row = found.group.row(0, named=True)
    operation = caller_operation(ctx.spans, items)
    total, p95, top = float(sum(waits)), quantile(waits, 0.95), float(max(waits))
    max_queued = max_in_flight(zip(starts, ends, strict=True))
    share = impact_share(impact, latency)
    values = {
        "ceiling": found.ceiling,
        "resource": row["resource"],
        "queued": len(waits),
        "calls": found.calls,
        "wait_total_ms": f"{total / 1e6:.0f}",
        "wait_p95_ms": f"{p95 / 1e6:.1f}",
        "wait_max_ms": f"{top / 1e6:.1f}",
        "share": f"{share:.0%}",
        "evidence": found.evidence,
        "max_queued": max_queued,
        "traces": len(per_trace),
    }
    return make_finding(
        rule,
        service=row["service"],
        operation=operation,
        resource=row["resource"],
        trace_ids=sorted(per_trace, key=lambda t: -per_trace[t])[: p["max_evidence"]],
        span_ids=[span_ids[i] for i in order],
        count=len(waits),
        impact_ms=impact / 1e6,
        impact_share=share,
        details={
            "ceiling": found.ceiling,
            "max_in_flight": found.ceiling,
            "evidence": found.evidence,
            "calls": found.calls,
            "queued": len(waits),
            "max_queued": max_queued,
            "wait_total_ms": round(total / 1e6, 3),
            "wait_p95_ms": round(p95 / 1e6, 3),
            "wait_max_ms": round(top / 1e6, 3),
            "handoff_p50_ms": round(quantile(found.handoffs.to_list(), 0.5) / 1e6, 3),
            "traces_affected": len(per_trace),
            "latency_share": round(share, 4),
        },
        template_values=values,
    )


def caller_operation(spans: pl.DataFrame, items: pl.DataFrame) -> str:
    """The most common name of the items' parents (the request that waits)."""
    import polars as pl

    parents = spans.select(
        "trace_id", pl.col("span_id").alias("parent_span_id"), pl.col("name").alias("_pname")
    )
    named = items.join(parents, on=["trace_id", "parent_span_id"], how="left")
    names = Counter(n for n in named["_pname"].to_list() if n is not None)
    if not names:
        return items["name"][0]
    return sorted(names.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
