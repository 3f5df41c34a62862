"""Slow query: a statement fingerprint whose p95 is above a threshold or far above its peers.

Peers are the other fingerprints the same service sends to the same database system; a query
is "far above" them when its p95 is ``peer_ratio`` times their median p95, or its p50 that many
times their median p50 (typical against typical: one noisy peer execution does not hide it).
The operation is the service's endpoint (entry span) that runs the query most. Impact is the
total time the analyzed traces spent in the query.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tracelens.detectors.base import impact_share, make_finding

if TYPE_CHECKING:
    import polars as pl

    from tracelens.detectors.base import Rule, StoreContext
    from tracelens.model import Finding

KIND = "slow_query"
SCOPE = "store"
PARAMS: dict[str, Any] = {
    "min_samples": 5,  # executions of one fingerprint needed to judge it
    "threshold_ms": 500.0,  # p95 above this is slow whatever its peers do
    "peer_ratio": 5.0,  # ... or p95 (p50) ≥ peer_ratio × the median p95 (p50) of its peers
    "min_peers": 2,  # peers needed for the relative test
    "min_p95_ms": 20.0,  # never call a query slow below this p95
    "max_evidence": 50,  # slowest executions (and their traces) reported
}
FIELDS = (
    "statement",
    "db_system",
    "p50_ms",
    "p95_ms",
    "samples",
    "peer_p95_ms",
    "ratio",
    "threshold_ms",
    "reason",
    "service",
    "operation",
    "resource",
    "total_ms",
)
_GROUP = ["service", "db_system", "db_fingerprint"]


def detect(ctx: StoreContext, rule: Rule) -> list[Finding]:
    db = rule.match.filter(_db_spans(ctx.spans))
    if db.is_empty():
        return []
    slow = _slow(fingerprint_stats(db), rule.params)
    if slow.is_empty():
        return []
    return [
        _finding(ctx, rule, row, _executions(ctx, db, row))
        for row in _with_operations(ctx, db, slow).iter_rows(named=True)
    ]


def _db_spans(spans: pl.DataFrame) -> pl.DataFrame:
    import polars as pl

    return spans.filter(pl.col("db_fingerprint").is_not_null())


def fingerprint_stats(db: pl.DataFrame) -> pl.DataFrame:
    """Per (service, db_system, fingerprint): samples, p50/p95 and total duration (ns)."""
    import polars as pl

    dur = pl.col("duration_ns")
    return (
        db.with_columns(pl.col("db_system").fill_null(""))
        .group_by(_GROUP)
        .agg(
            pl.len().alias("samples"),
            dur.quantile(0.5, interpolation="linear").alias("p50"),
            dur.quantile(0.95, interpolation="linear").alias("p95"),
            dur.sum().alias("total"),
            pl.col("trace_id").n_unique().alias("traces"),
        )
        .sort(_GROUP)
    )


def _slow(stats: pl.DataFrame, p: dict[str, Any]) -> pl.DataFrame:
    """Rows that are slow by threshold or relative to their peers; adds peer_p95 and reason."""
    import polars as pl

    judged = stats.filter(pl.col("samples") >= p["min_samples"])
    peers = _peer_p95(judged)
    ms = 1e6
    by_threshold = pl.col("p95") >= p["threshold_ms"] * ms
    by_peers = (pl.col("peers") >= p["min_peers"]) & (
        (pl.col("p95") >= p["peer_ratio"] * pl.col("peer_p95"))
        | (pl.col("p50") >= p["peer_ratio"] * pl.col("peer_p50"))
    )
    return (
        peers.filter((pl.col("p95") >= p["min_p95_ms"] * ms) & (by_threshold | by_peers))
        .with_columns(
            pl.when(by_threshold)
            .then(pl.lit("threshold"))
            .otherwise(pl.lit("peers"))
            .alias("reason")
        )
        .sort(["total", "db_fingerprint"], descending=[True, False])
    )


def _peer_p95(judged: pl.DataFrame) -> pl.DataFrame:
    """Each row's peers' median p50 and p95 (the other fingerprints of its service and db)."""
    import polars as pl

    pairs = (
        judged.select("service", "db_system", "db_fingerprint")
        .join(
            judged.select(
                "service",
                "db_system",
                pl.col("db_fingerprint").alias("peer"),
                pl.col("p50").alias("other50"),
                pl.col("p95").alias("other95"),
            ),
            on=["service", "db_system"],
        )
        .filter(pl.col("peer") != pl.col("db_fingerprint"))
    )
    agg = pairs.group_by(_GROUP).agg(
        pl.col("other50").median().alias("peer_p50"),
        pl.col("other95").median().alias("peer_p95"),
        pl.len().alias("peers"),
    )
    return judged.join(agg, on=_GROUP, how="left").with_columns(pl.col("peers").fill_null(0))


def _executions(ctx: StoreContext, db: pl.DataFrame, row: dict[str, Any]) -> pl.DataFrame:
    """The query's executions, slowest first."""
    import polars as pl

    return db.filter(
        (pl.col("service") == row["service"])
        & (pl.col("db_fingerprint") == row["db_fingerprint"])
        & (pl.col("db_system").fill_null("") == row["db_system"])
    ).sort(["duration_ns", "span_id"], descending=[True, False])


def _with_operations(ctx: StoreContext, db: pl.DataFrame, slow: pl.DataFrame) -> pl.DataFrame:
    """Adds the endpoint running each slow query most (``operation``) and all (``operations``)."""
    import polars as pl

    from tracelens.endpoints import attach_entry

    runs = db.with_columns(pl.col("db_system").fill_null("")).join(
        slow.select(_GROUP), on=_GROUP, how="semi"
    )
    ops = (
        attach_entry(runs, ctx.spans, ctx.traces)
        .group_by(_GROUP)
        .agg(
            pl.col("entry").drop_nulls().mode().sort().first().alias("operation"),
            pl.col("entry").drop_nulls().unique().sort().alias("operations"),
        )
    )
    return slow.join(ops, on=_GROUP, how="left").sort(
        ["total", "db_fingerprint"], descending=[True, False]
    )


def _finding(ctx: StoreContext, rule: Rule, row: dict[str, Any], runs: pl.DataFrame) -> Finding:
    import polars as pl

    p = rule.params
    slowest = runs.head(p["max_evidence"])
    trace_ids = list(dict.fromkeys(slowest["trace_id"].to_list()))
    involved = runs["trace_id"].unique().implode()
    total_trace_ns = ctx.traces.filter(pl.col("trace_id").is_in(involved))["duration_ns"].sum()
    peer = row["peer_p95"]
    ratio = _peer_ratio(row)
    operation = row["operation"] or row["db_fingerprint"]
    return make_finding(
        rule,
        service=row["service"],
        operation=operation,
        resource=row["db_fingerprint"],
        trace_ids=trace_ids,
        span_ids=slowest["span_id"].to_list(),
        count=int(row["samples"]),
        impact_ms=row["total"] / 1e6,
        impact_share=impact_share(row["total"], total_trace_ns or 0),
        details={
            "db_system": row["db_system"] or None,
            "samples": int(row["samples"]),
            "traces": int(row["traces"]),
            "p50_ms": round(row["p50"] / 1e6, 3),
            "p95_ms": round(row["p95"] / 1e6, 3),
            "peer_p95_ms": None if peer is None else round(peer / 1e6, 3),
            "peer_p50_ms": None if row["peer_p50"] is None else round(row["peer_p50"] / 1e6, 3),
            "peers": int(row["peers"]),
            "reason": row["reason"],
            "operations": row["operations"],
        },
        template_values={
            "statement": _short(row["db_fingerprint"]),
            "db_system": row["db_system"] or "database",
            "p50_ms": f"{row['p50'] / 1e6:.0f}",
            "p95_ms": f"{row['p95'] / 1e6:.0f}",
            "samples": int(row["samples"]),
            "peer_p95_ms": "n/a" if peer is None else f"{peer / 1e6:.1f}",
            "ratio": "n/a" if ratio is None else f"{ratio:.0f}",
            "threshold_ms": f"{p['threshold_ms']:.0f}",
            "reason": (
                f"above the {p['threshold_ms']:.0f} ms threshold"
                if row["reason"] == "threshold"
                else f"{ratio:.0f}x its peers"
            ),
            "total_ms": f"{row['total'] / 1e6:.0f}",
        },
    )


def _peer_ratio(row: dict[str, Any]) -> float | None:
    """How many times slower than its peers, p50 against p50 or p95 against p95 (the larger)."""
    ratios = [
        row[mine] / row[theirs]
        for mine, theirs in (("p50", "peer_p50"), ("p95", "peer_p95"))
        if row[theirs]
    ]
    return max(ratios) if ratios else None


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
