"""Per-trace and per-endpoint figures computed vectorized over a span frame.

An endpoint is what a user calls: the root span's service and operation. Traces whose root is
missing (the parent was never received) use their earliest span without a stored parent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl

QUANTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}


def trace_table(spans: pl.DataFrame) -> pl.DataFrame:
    """One row per trace: trace_id, root_span_id, root_service, root_name, start_ns, end_ns,
    duration_ns, span_count, error_count (sorted by trace_id)."""
    import polars as pl

    if spans.is_empty():
        return pl.DataFrame(
            schema={
                "trace_id": pl.String,
                "root_span_id": pl.String,
                "root_service": pl.String,
                "root_name": pl.String,
                "start_ns": pl.Int64,
                "end_ns": pl.Int64,
                "duration_ns": pl.Int64,
                "span_count": pl.UInt32,
                "error_count": pl.UInt32,
            }
        )
    # Grouping by a 64-bit hash of the id is 4-5x faster than by the 32-char string.
    keyed = spans.with_columns(pl.col("trace_id").hash().alias("_k"))
    stats = keyed.group_by("_k").agg(
        pl.col("trace_id").first(),
        pl.col("start_ns").min(),
        pl.col("end_ns").max(),
        pl.len().alias("span_count"),
        (pl.col("status_code") == 2).sum().cast(pl.UInt32).alias("error_count"),
    )
    return (
        stats.join(_roots(keyed, stats.height), on="_k", how="left")
        .with_columns((pl.col("end_ns") - pl.col("start_ns")).alias("duration_ns"))
        .select(
            "trace_id",
            "root_span_id",
            "root_service",
            "root_name",
            "start_ns",
            "end_ns",
            "duration_ns",
            "span_count",
            "error_count",
        )
        .sort("trace_id")
    )


def _roots(keyed: pl.DataFrame, n_traces: int) -> pl.DataFrame:
    """The root of each trace (by key ``_k``): a span without parent, else one whose parent is
    not stored. Ties go to the earliest, then the longest span.

    Only traces without a parentless span (a lost root) pay for the join that finds orphans,
    and only traces with several candidates for the sort."""
    import polars as pl

    cols = ["_k", "span_id", "service", "name", "start_ns", "end_ns"]
    candidates = keyed.filter(pl.col("parent_span_id").is_null()).select(cols)
    if candidates["_k"].n_unique() < n_traces:
        rootless = keyed.filter(~pl.col("_k").is_in(candidates["_k"].unique().implode()))
        known = rootless.select("_k", pl.col("span_id").alias("parent_span_id"))
        orphans = rootless.join(known, on=["_k", "parent_span_id"], how="anti")
        candidates = pl.concat([candidates, orphans.select(cols)])
    if candidates.height > candidates["_k"].n_unique():
        candidates = (
            candidates.sort(
                ["_k", "start_ns", "end_ns", "span_id"], descending=[False, False, True, False]
            )
            .group_by("_k", maintain_order=True)
            .first()
        )
    return candidates.select(
        "_k",
        pl.col("span_id").alias("root_span_id"),
        pl.col("service").alias("root_service"),
        pl.col("name").alias("root_name"),
    )


def endpoint_stats(traces: pl.DataFrame) -> pl.DataFrame:
    """One row per endpoint (root_service, root_name): traces, p50_ms, p95_ms, p99_ms."""
    import polars as pl

    dur = pl.col("duration_ns")
    return (
        traces.group_by("root_service", "root_name")
        .agg(
            pl.len().alias("traces"),
            *[
                (dur.quantile(q, interpolation="linear") / 1e6).alias(f"{name}_ms")
                for name, q in QUANTILES.items()
            ],
        )
        .sort(["traces", "root_service", "root_name"], descending=[True, False, False])
    )


def root_spans(spans: pl.DataFrame, traces: pl.DataFrame) -> pl.DataFrame:
    """The root span rows of ``traces`` (for matching rules against endpoints)."""
    import polars as pl

    keys = traces.select("trace_id", pl.col("root_span_id").alias("span_id"))
    return spans.join(keys, on=["trace_id", "span_id"], how="semi")


def attach_entry(frame: pl.DataFrame, spans: pl.DataFrame, traces: pl.DataFrame) -> pl.DataFrame:
    """``frame`` (span rows) with an ``entry`` column: the operation through which the trace
    entered the row's service — that service's earliest SERVER/CONSUMER span in the trace,
    else the trace's root operation. The endpoint a finding in that service belongs to.

    (A span's true entry ancestor is the same in all but unusual traces, and this needs no
    tree.) Only the traces in ``frame`` are looked at.
    """
    import polars as pl

    ids = frame["trace_id"].unique().implode()
    entries = (
        spans.filter(pl.col("kind").is_in([2, 5]) & pl.col("trace_id").is_in(ids))
        .group_by("trace_id", "service")
        .agg(pl.col("name").sort_by("start_ns", "span_id").first().alias("entry"))
    )
    roots = traces.filter(pl.col("trace_id").is_in(ids)).select("trace_id", "root_name")
    return (
        frame.join(entries, on=["trace_id", "service"], how="left")
        .join(roots, on="trace_id", how="left")
        .with_columns(pl.coalesce("entry", "root_name").alias("entry"))
        .drop("root_name")
    )
