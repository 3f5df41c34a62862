"""Lock contention: work on one resource that serializes across concurrent requests.

Two shapes, both across traces (one trace alone never shows a convoy):

- **The wait is inside the span** (``SELECT … FOR UPDATE`` on a hot row, an ``UPDATE``, an
  application lock span named like lock/mutex/semaphore/latch). Spans are grouped by resource:
  ``<db system>://<peer> <fingerprint>`` — plus the literal values of the ``WHERE`` clause for
  row-locking statements when the statement text shows them (distinct rows, distinct locks) —
  or the lock span's name. The uncontended duration is a low quantile of the group's durations
  (``baseline_quantile``). A *waiter* lasts ≥ ``min_wait_ms`` more than that and ends right
  after another trace's holder released: within ``handoff_ms`` (plus one uncontended
  execution) of the holder span's end, of the end of its parent's last child (the
  transaction's last statement; commits are seldom traced) or of its parent's end. Waiters
  chain into convoys (holder → waiter → waiter…); their durations stack like a staircase,
  rising with the number of contenders already in flight when they started.
- **The wait is a gap before the span** (an untraced ``threading.Lock`` around it): spans of
  one (service, name) that never overlap across traces (concurrency never exceeds 1). A span
  that started within ``handoff_ms`` of another trace's span ending was handed the resource;
  a run of such handoffs is a *busy period*. A span waited for the time, from when its
  request was ready (its parent's start or its previous sibling's end) but not before its
  busy period began, during which another span of the group ran; a waiter waited ≥
  ``min_wait_ms``. Pool checkouts (``acquire_names``) count as readiness here, so a wait
  inside a pool ``connect`` span is never called a lock.

A group fires with a convoy of ≥ ``min_convoy`` (holder + waiters), ≥ ``min_chain_share`` of
its waiters chained, and ≥ ``min_lost_ms`` lost. Time lost: the sum of the waiters' durations
minus the uncontended baseline each (the gaps, in the second shape). Findings name the
resource, the longest convoy, the time lost, and the affected traces.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from typing import TYPE_CHECKING, Any

from tracelens.detectors.base import impact_share, make_finding
from tracelens.detectors.intervals import InFlight, quantile, queue, rank_correlation
from tracelens.detectors.n_plus_one import ACQUIRE_NAMES, matching_names
from tracelens.detectors.pool_wait import caller_operation, family, parent_times, with_ready

if TYPE_CHECKING:
    import polars as pl

    from tracelens.detectors.base import Rule, StoreContext
    from tracelens.model import Finding

KIND = "lock_contention"
SCOPE = "store"
COLUMNS = ("db_statement",)  # literal row values of row-locking statements
LOCK_WORDS = ("lock", "locks", "locked", "locking", "mutex", "semaphore", "latch", "flock")
PARAMS: dict[str, Any] = {
    "min_convoy": 3,  # holder + waiters in the longest chain
    "min_wait_ms": 5.0,  # a waiter lasts this much more than the uncontended duration
    "handoff_ms": 3.0,  # a waiter ends (gap shape: starts) this soon after a release
    "min_chain_share": 0.5,  # of the waiters, the share that chain to a release
    "min_lost_ms": 20.0,  # time lost to waiting, summed
    "min_staircase": 0.3,  # rank correlation of duration vs contenders ahead (≥ 5 spans)
    "baseline_quantile": 0.05,  # of durations: the uncontended duration
    "lock_words": list(LOCK_WORDS),  # span-name words that mark an application lock span
    "acquire_names": ACQUIRE_NAMES,  # regex: pool checkouts, never locks
    "max_evidence": 50,  # spans and traces reported
}
FIELDS = (
    "resource",
    "convoy",
    "lost_ms",
    "waiters",
    "traces",
    "baseline_ms",
    "hold_ms",
    "max_ms",
    "shape",
    "service",
    "operation",
    "count",
    "impact_ms",
)
SERVER, CONSUMER = 2, 5
_ROW_LOCKING_RUST = r"(?i)\bfor\s+(no\s+key\s+)?(update|share)\b|^\s*(update|delete)\b"
_ROW_LOCKING = re.compile(_ROW_LOCKING_RUST)
_LITERALS = re.compile(r"'(?:[^']|'')*'|(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")
_GAP_COLUMNS = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "kind",
    "start_ns",
    "end_ns",
    "duration_ns",
    "service",
)
_LOCK_COLUMNS = (*_GAP_COLUMNS, "db_system", "peer", "db_fingerprint", "db_statement")
_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


# --- which spans, which resource --------------------------------------------------------------


def is_lock_name(name: str, words: list[str] | tuple[str, ...] = LOCK_WORDS) -> bool:
    """``acquireLock``, ``with_mutex``, ``RLock``: yes; ``Clock``, ``block_io``: no."""
    tokens = {t.lower() for t in _WORD_SPLIT.split(name) if t}
    return any(w in tokens for w in words)


def row_values(statement: str | None) -> str:
    """The literal values after WHERE of a row-locking statement ('' when none are shown)."""
    if not statement or not _ROW_LOCKING.search(statement):
        return ""
    where = re.split(r"(?i)\bwhere\b", statement, maxsplit=1)
    if len(where) < 2:
        return ""
    return ",".join(_LITERALS.findall(where[1]))


def lock_spans(spans: pl.DataFrame, p: dict[str, Any]) -> pl.DataFrame:
    """Spans that may wait inside themselves, with their ``resource``."""
    import polars as pl

    names = spans["name"].unique().to_list()
    acquire = set(matching_names(spans, p["acquire_names"]))
    lock_names = [n for n in names if n and n not in acquire and is_lock_name(n, p["lock_words"])]
    db = pl.col("db_fingerprint").is_not_null() & ~pl.col("kind").is_in([SERVER, CONSUMER])
    spans = spans.select([c for c in _LOCK_COLUMNS if c in spans.columns])
    cand = spans.filter(
        (db & ~pl.col("name").is_in(sorted(acquire))) | pl.col("name").is_in(lock_names)
    )
    if cand.is_empty():
        return cand.with_columns(pl.lit("").alias("resource"))
    rows = _row_column(cand)
    peer = pl.col("peer").fill_null("")
    db_res = pl.col("db_system").fill_null("db") + "://" + peer + " " + pl.col("db_fingerprint")
    row = pl.col("_row").fill_null("")
    return (
        cand.with_columns(rows.alias("_row"))
        .with_columns(
            pl.when(pl.col("db_fingerprint").is_not_null() & ~pl.col("name").is_in(lock_names))
            .then(pl.when(row != "").then(db_res + " [" + row + "]").otherwise(db_res))
            .otherwise(pl.col("service") + " " + pl.col("name"))
            .alias("resource")
        )
        .drop("_row")
    )


def _row_column(cand: pl.DataFrame) -> pl.Series:
    """``row_values`` per span, computed once per distinct row-locking statement."""
    import polars as pl

    if "db_statement" not in cand.columns:
        return pl.Series("_row", [None] * cand.height, dtype=pl.String)
    statements = cand["db_statement"]
    locking = statements.filter(statements.str.contains(_ROW_LOCKING_RUST).fill_null(False))
    values = {s: row_values(s) for s in locking.unique().to_list()}
    values = {s: v for s, v in values.items() if v}
    if not values:
        return pl.Series("_row", [None] * cand.height, dtype=pl.String)
    return statements.replace_strict(values, default=None, return_dtype=pl.String)


# --- shape 1: the wait inside the span --------------------------------------------------------


class _Convoy:
    """A group's contention: waiters chained to the releases they waited for."""

    def __init__(
        self,
        shape: str,
        group: pl.DataFrame,
        waiters: list[int],
        lost_ns: float,
        pred: dict[int, int],
        baseline_ns: float,
        staircase: float,
        max_wait_ns: float,
    ) -> None:
        self.shape, self.group, self.waiters, self.lost_ns = shape, group, waiters, lost_ns
        self.pred, self.baseline_ns, self.staircase = pred, baseline_ns, staircase
        self.max_wait_ns = max_wait_ns
        self.depth = _depths(pred)

    @property
    def longest(self) -> int:
        return max(self.depth.values(), default=0) + 1


def _depths(pred: dict[int, int]) -> dict[int, int]:
    """Chain position of each waiter (1 = waited for an uncontended holder)."""
    depth: dict[int, int] = {}
    for start in pred:
        path, node = [], start
        while node in pred and node not in depth and node not in path:
            path.append(node)
            node = pred[node]
        base = depth.get(node, 0)
        for i, n in enumerate(reversed(path), 1):
            depth[n] = base + i
    return depth


def releases(group: pl.DataFrame, spans: pl.DataFrame) -> pl.DataFrame:
    """Per span of the group: its end, its parent's last child's end and its parent's end."""
    import polars as pl

    key = ["trace_id", "parent_span_id"]
    spans = family(spans, group)
    parents = group.select(key).unique()
    last_child = (
        spans.join(parents, on=key, how="semi")
        .group_by(key)
        .agg(pl.col("end_ns").max().alias("_last_child"))
    )
    parent_end = parent_times(spans, parents, "end_ns", "_parent_end")
    with_p = group.join(last_child, on=key, how="left").join(parent_end, on=key, how="left")
    return (
        with_p.select(
            pl.int_range(pl.len()).alias("idx"),
            "trace_id",
            "start_ns",
            pl.concat_list("end_ns", "_last_child", "_parent_end").alias("r"),
        )
        .explode("r")
        .drop_nulls("r")
        .unique(["idx", "r"])
        .sort("r")
    )


def _inside(group: pl.DataFrame, spans: pl.DataFrame, p: dict[str, Any]) -> _Convoy | None:
    group = group.sort("start_ns", "span_id")
    durations = group["duration_ns"].to_list()
    baseline = quantile(durations, p["baseline_quantile"], lower=True)
    min_wait = p["min_wait_ms"] * 1e6
    waiters = [i for i, d in enumerate(durations) if d >= baseline + min_wait]
    lost = sum(durations[w] - baseline for w in waiters)
    if len(waiters) < p["min_convoy"] - 1 or lost < p["min_lost_ms"] * 1e6:
        return None
    tids, starts = group["trace_id"].to_list(), group["start_ns"].to_list()
    ends = group["end_ns"].to_list()
    ahead = InFlight(starts, ends).before(starts).to_list()
    stair = rank_correlation(durations, ahead)
    if group.height >= 5 and stair < p["min_staircase"]:
        return None  # durations do not rise with the queue: no convoy (and no joins needed)
    rel = releases(group, spans)
    times, owners = rel["r"].to_list(), rel["idx"].to_list()
    handoff = p["handoff_ms"] * 1e6
    pred = {}
    for w in waiters:
        lo = max(ends[w] - baseline - handoff, starts[w] + 1)
        h = _closest_release(times, owners, tids, starts, w, lo, ends[w] + handoff, ends[w])
        if h is not None:
            pred[w] = h
    longest = max(durations[w] for w in waiters) - baseline
    return _Convoy("inside", group, waiters, lost, pred, baseline, stair, longest)


def _closest_release(
    times: list[int],
    owners: list[int],
    tids: list[str],
    starts: list[int],
    w: int,
    lo: float,
    hi: float,
    target: int,
) -> int | None:
    """The other-trace span whose release in [lo, hi] is closest to ``target``."""
    best, best_gap = None, None
    i = bisect.bisect_left(times, lo)
    while i < len(times) and times[i] <= hi:
        h = owners[i]
        if tids[h] != tids[w] and starts[h] < target:
            gap = abs(target - times[i])
            if best_gap is None or gap < best_gap:
                best, best_gap = h, gap
        i += 1
    return best


# --- shape 2: the wait is a gap before the span -----------------------------------------------


def gap_spans(spans: pl.DataFrame, p: dict[str, Any]) -> pl.DataFrame:
    """Spans of the (service, name) groups that never overlap themselves across ≥ 2 traces and
    hand over from one trace to the next.

    In such a group, sorted by start, a *busy period* is a run of spans each starting within
    ``handoff_ms`` of the previous one's end, in another trace; ``_period_start`` is its first
    start. ``_maybe`` marks spans that may have waited ≥ min_wait_ms: handed over to, at least
    that long into their period (a cut before the joins that find when they were ready).
    Only groups with such a span are returned.
    """
    import polars as pl

    cand = spans.select(_GAP_COLUMNS).filter(
        ~pl.col("kind").is_in([SERVER, CONSUMER]) & pl.col("parent_span_id").is_not_null()
    )
    cand = cand.filter(~pl.col("name").is_in(matching_names(cand, p["acquire_names"])))
    # Sorted by group then start, a group never overlaps itself when every span starts at or
    # after the previous one's end (the ends then rise too): shifts, no window functions.
    cand = cand.with_row_index("_i").with_columns(pl.struct("service", "name").hash().alias("_g"))
    # Two stable single-key sorts are ~3x faster than one sort on (group, start).
    narrow = (
        cand.select("_i", "_g", "trace_id", "start_ns", "end_ns")
        .sort("start_ns")
        .sort("_g", maintain_order=True)
    )
    same = pl.col("_g") == pl.col("_g").shift(1)
    gap = pl.col("start_ns") - pl.col("end_ns").shift(1)
    handed = (
        same
        & (gap >= 0)
        & (gap <= p["handoff_ms"] * 1e6)
        & (pl.col("trace_id") != pl.col("trace_id").shift(1))
    )
    marked = (
        narrow.with_columns(
            (same & (gap < 0)).fill_null(False).alias("_overlap"),
            handed.fill_null(False).alias("_handed"),
        )
        .with_columns(
            pl.when(~pl.col("_handed"))
            .then(pl.col("start_ns"))
            .forward_fill()
            .alias("_period_start"),
        )
        .with_columns(
            (
                pl.col("_handed")
                & (pl.col("start_ns") - pl.col("_period_start") >= p["min_wait_ms"] * 1e6)
            ).alias("_maybe")
        )
    )
    # A span handed over from another trace: the group spans ≥ 2 traces.
    groups = (
        marked.group_by("_g")
        .agg(
            pl.len().alias("n"),
            pl.col("_overlap").any().alias("overlap"),
            pl.col("_maybe").any().alias("maybe"),
        )
        .filter((pl.col("n") >= p["min_convoy"]) & ~pl.col("overlap") & pl.col("maybe"))
    )
    keep = marked.filter(pl.col("_g").is_in(groups["_g"].implode())).select(
        "_i", "_period_start", "_maybe"
    )
    out = cand.join(keep, on="_i", how="inner").drop("_i", "_g")
    return out.with_columns((pl.col("service") + " " + pl.col("name")).alias("group"))


def _gaps(group: pl.DataFrame, p: dict[str, Any]) -> _Convoy | None:
    import polars as pl

    group = group.sort("start_ns", "span_id")
    # Waiting for the lock starts when the request was ready and the lock already taken: not
    # before the busy period (a lock free in between would have been taken).
    lo = group.select(pl.max_horizontal("ready_ns", "_period_start"))[:, 0]
    q = queue(group["start_ns"], group["end_ns"], lo, group["start_ns"], 1)
    tids = group["trace_id"].to_list()
    busy, handoff, release = q.busy_ns.to_list(), q.handoff_ns.to_list(), q.release.to_list()
    min_wait, max_handoff = p["min_wait_ms"] * 1e6, p["handoff_ms"] * 1e6
    waiters = [i for i, b in enumerate(busy) if b >= min_wait]
    pred = {
        i: release[i]
        for i in waiters
        if 0 <= handoff[i] <= max_handoff and release[i] >= 0 and tids[release[i]] != tids[i]
    }
    if len(waiters) < p["min_convoy"] - 1:
        return None
    lost = sum(busy[i] for i in waiters)
    # Staircase, gap shape: a request's wait vs how many were already waiting when it arrived.
    ready, starts = group["ready_ns"], group["start_ns"]
    ahead = InFlight(ready, starts).before(ready).to_list()
    stair = rank_correlation([busy[i] for i in waiters], [ahead[i] for i in waiters])
    return _Convoy("gap", group, waiters, lost, pred, 0.0, stair, max(busy[i] for i in waiters))


# --- detection --------------------------------------------------------------------------------


def detect(ctx: StoreContext, rule: Rule) -> list[Finding]:
    import polars as pl

    p = rule.params
    spans = rule.match.filter(ctx.spans)
    if spans.is_empty():
        return []
    found = []
    for _res, group in _candidate_groups(lock_spans(spans, p), "resource", p):
        convoy = _inside(group, ctx.spans, p)
        if convoy is not None and _fires(convoy, p):
            found.append(convoy)
    gaps = gap_spans(spans, p)
    if not gaps.is_empty():
        maybe = gaps.filter(pl.col("_maybe"))
        ready = pl.concat(
            [
                with_ready(maybe, ctx.spans, fanned=maybe.clear().select("trace_id", "span_id")),
                gaps.filter(~pl.col("_maybe")).with_columns(pl.col("start_ns").alias("ready_ns")),
            ],
            how="diagonal_relaxed",
        ).drop("_maybe")
        for _res, group in _candidate_groups(ready, "group", p):
            convoy = _gaps(group, p)
            if convoy is not None and _fires(convoy, p):
                found.append(convoy)
    return [_finding(ctx, rule, c) for c in found]


def _candidate_groups(df: pl.DataFrame, col: str, p: dict[str, Any]) -> list[tuple[str, Any]]:
    """Groups with enough spans over ≥ 2 traces and some spread of durations."""
    import polars as pl

    if df.is_empty():
        return []
    ok = (
        df.group_by(col)
        .agg(
            pl.len().alias("n"),
            pl.col("trace_id").n_unique().alias("traces"),
        )
        .filter((pl.col("n") >= p["min_convoy"]) & (pl.col("traces") >= 2))
    )
    keep = df.filter(pl.col(col).is_in(ok[col].implode()))
    if keep.is_empty():
        return []
    parts = keep.partition_by(col, as_dict=True)
    return sorted(((k[0], v) for k, v in parts.items()), key=lambda kv: kv[0])


def _fires(c: _Convoy, p: dict[str, Any]) -> bool:
    if not c.waiters or c.longest < p["min_convoy"]:
        return False
    if len(c.pred) / len(c.waiters) < p["min_chain_share"] or c.lost_ns < p["min_lost_ms"] * 1e6:
        return False
    if c.shape == "inside" and c.group.height >= 5 and c.staircase < p["min_staircase"]:
        return False
    return True


def _finding(ctx: StoreContext, rule: Rule, c: _Convoy) -> Finding:
    import polars as pl

    p, g = rule.params, c.group
    involved = sorted(set(c.pred) | set(c.pred.values()))
    tids, sids = g["trace_id"].to_list(), g["span_id"].to_list()
    durations = g["duration_ns"].to_list()
    by_wait = sorted(c.waiters, key=lambda i: (-durations[i], sids[i]))
    traces = list(dict.fromkeys(tids[i] for i in sorted(involved, key=lambda i: -durations[i])))
    latency = int(ctx.traces.filter(pl.col("trace_id").is_in(traces))["duration_ns"].sum() or 0)
    resource = g["resource" if c.shape == "inside" else "group"][0]
    hold = _hold_ns(g, c)
    service = Counter(g["service"].to_list()).most_common(1)[0][0]
    values = {
        "resource": resource,
        "convoy": c.longest,
        "lost_ms": f"{c.lost_ns / 1e6:.0f}",
        "waiters": len(c.waiters),
        "traces": len(traces),
        "baseline_ms": f"{c.baseline_ns / 1e6:.1f}",
        "hold_ms": f"{hold / 1e6:.1f}",
        "max_ms": f"{max(durations) / 1e6:.0f}",
        "shape": "inside the span" if c.shape == "inside" else "as a gap before the span",
    }
    return make_finding(
        rule,
        service=service,
        operation=caller_operation(ctx.spans, g),
        resource=resource,
        trace_ids=traces[: p["max_evidence"]],
        span_ids=[sids[i] for i in by_wait[: p["max_evidence"]]],
        count=len(c.waiters),
        impact_ms=c.lost_ns / 1e6,
        impact_share=impact_share(c.lost_ns, latency),
        details={
            "shape": c.shape,
            "longest_convoy": c.longest,
            "waiters": len(c.waiters),
            "chained": len(c.pred),
            "spans": g.height,
            "lost_ms": round(c.lost_ns / 1e6, 3),
            "baseline_ms": round(c.baseline_ns / 1e6, 3),
            "hold_ms": round(hold / 1e6, 3),
            "max_ms": round(max(durations) / 1e6, 3),
            "max_wait_ms": round(c.max_wait_ns / 1e6, 3),
            "staircase_rho": round(c.staircase, 3),
            "traces_affected": len(traces),
        },
        template_values=values,
    )


def _hold_ns(g: pl.DataFrame, c: _Convoy) -> float:
    """Typical time one holder keeps the resource: median spacing of chained releases."""
    ends = g["end_ns"].to_list()
    starts = g["start_ns"].to_list()
    if c.shape == "gap":
        return quantile([ends[h] - starts[h] for h in c.pred.values()], 0.5)
    return quantile([ends[w] - ends[h] for w, h in c.pred.items() if ends[w] > ends[h]], 0.5)
