"""Interval math the root-cause detectors share: unions, in-flight counts, queueing time.

Intervals are half-open ``[start, end)`` in integer nanoseconds, so a call that starts the
instant another ends does not overlap it (back-to-back calls are sequential, not concurrent).
Small lists use the pure-Python helpers; whole groups of calls across many traces use
:class:`InFlight`, a numpy step function built by one sweep over start/end events.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl

Interval = tuple[int, int]


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, disjoint intervals covering the same time (touching ones are joined)."""
    out: list[list[int]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(s, e) for s, e in out]


def union_ns(intervals: Iterable[Interval]) -> int:
    """Wall time covered by at least one interval."""
    return sum(e - s for s, e in merge(intervals))


def max_in_flight(intervals: Iterable[Interval]) -> int:
    """The most intervals open at one instant (ends sort before starts at equal times)."""
    spans = [(s, e) for s, e in intervals if e > s]
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    # (t, -1) sorts before (t, 1): an end at t closes before a start at t opens.
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return peak


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return 0.0
    mid = n // 2
    return float(ordered[mid]) if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def quantile(values: Sequence[float], q: float, *, lower: bool = False) -> float:
    """Linear-interpolated quantile (numpy's default), 0.0 for no values.

    ``lower`` takes the observed value at or below the position instead (numpy's "lower"):
    a low quantile of a few values is then their minimum, not a blend with the next one.
    """
    ordered = sorted(values)
    if not ordered:
        return 0.0
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    if lower:
        return ordered[lo]
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class InFlight:
    """How many intervals are open over time: a step function from one sweep.

    ``times[i]`` are the distinct event instants; ``counts[i]`` the number open on
    ``[times[i], times[i+1])``. Zero-length intervals never count. Vectorized with polars
    Series (numpy is not a dependency).
    """

    def __init__(self, starts: pl.Series | Sequence[int], ends: pl.Series | Sequence[int]) -> None:
        import polars as pl

        iv = pl.DataFrame({"s": _ints(starts), "e": _ints(ends)}).filter(pl.col("e") > pl.col("s"))
        events = pl.concat(
            [
                iv.select(pl.col("s").alias("t"), pl.lit(1, pl.Int64).alias("d")),
                iv.select(pl.col("e").alias("t"), pl.lit(-1, pl.Int64).alias("d")),
            ]
        ).sort("t", "d")  # ends (-1) before starts (+1) at one instant
        steps = events.with_columns(pl.col("d").cum_sum().alias("level")).filter(
            pl.col("t") != pl.col("t").shift(-1).fill_null(-1)
        )  # last event per instant
        self.times: pl.Series = steps["t"]
        self.counts: pl.Series = steps["level"]
        self._at_least: dict[int, pl.Series] = {}

    @property
    def peak(self) -> int:
        return int(self.counts.max() or 0) if len(self.counts) else 0

    def before(self, t: pl.Series | Sequence[int]) -> pl.Series:
        """The number open just before each instant ``t`` (excludes what starts at ``t``)."""
        return _gather(self.counts, _index(self.times, _ints(t), "left"), 0)

    def time_at_least(
        self, level: int, lo: pl.Series | Sequence[int], hi: pl.Series | Sequence[int]
    ) -> pl.Series:
        """For each ``[lo, hi)``, the ns during which at least ``level`` intervals were open."""
        lo, hi = _ints(lo), _ints(hi)
        hi = hi.zip_with(hi >= lo, lo)
        return self._cumulative(level, hi) - self._cumulative(level, lo)

    def _cumulative(self, level: int, t: pl.Series) -> pl.Series:
        # A(t) = ns before t with count >= level; piecewise linear between event instants.
        import polars as pl

        if not len(self.times):
            return pl.zeros(len(t), pl.Int64, eager=True)
        cum = self._at_least.get(level)
        if cum is None:
            gaps = self.times.diff(-1).fill_null(0).abs()  # times[i+1] - times[i]
            busy = (self.counts >= level).cast(pl.Int64) * gaps
            cum = pl.concat([pl.Series([0], dtype=pl.Int64), busy.cum_sum()])
            self._at_least[level] = cum
        idx = _index(self.times, t, "right")
        inside = (_gather(self.counts, idx, 0) >= level) & (idx >= 0)
        partial = (t - _gather(self.times, idx, 0)) * inside.cast(pl.Int64)
        return _gather(cum, idx, 0) + partial


def _ints(values: pl.Series | Sequence[int]) -> pl.Series:
    import polars as pl

    if isinstance(values, pl.Series):
        return values.cast(pl.Int64)
    return pl.Series(list(values), dtype=pl.Int64)


def _index(sorted_values: pl.Series, t: pl.Series, side: str) -> pl.Series:
    """For each ``t``: the last index with value < t (side left) or ≤ t (right); −1 if none."""
    import polars as pl

    return sorted_values.search_sorted(t, side=side).cast(pl.Int64) - 1  # type: ignore[arg-type]


def _gather(series: pl.Series, idx: pl.Series, default: int) -> pl.Series:
    """series[idx] where idx >= 0, else ``default``."""
    import polars as pl

    if not len(series):
        return pl.Series([default] * len(idx), dtype=pl.Int64)
    picked = series.gather(idx.clip(0, len(series) - 1))
    return picked.zip_with(idx >= 0, pl.Series([default] * len(idx), dtype=picked.dtype))


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho; 0.0 with fewer than 3 points or when either side is constant."""
    import polars as pl

    if len(x) < 3:
        return 0.0
    df = pl.DataFrame({"x": list(x), "y": list(y)}, schema={"x": pl.Float64, "y": pl.Float64})
    if df["x"].n_unique() < 2 or df["y"].n_unique() < 2:
        return 0.0
    return float(df.select(pl.corr("x", "y", method="spearman")).item())


class Queue:
    """Items that waited for one of ``ceiling`` slots (calls in flight, held connections).

    Item ``i`` could have gone ahead at ``lo[i]`` and went at ``hi[i]``. ``busy_ns[i]`` is the
    time in ``[lo, hi)`` during which all ``ceiling`` slots were taken (by others: an item's
    own slot opens at ``hi``), ``waited_ns[i]`` all of ``hi - lo``. ``handoff_ns[i]`` is
    ``hi`` minus the latest slot release at or before ``hi`` (−1 when none), ``release[i]``
    the index of that slot (−1 when none). A queued item has ``busy_ns`` > 0 and a short
    handoff: it went the moment a slot freed.
    """

    def __init__(
        self, slots: InFlight, slot_ends: pl.Series, lo: pl.Series, hi: pl.Series, ceiling: int
    ) -> None:
        import polars as pl

        self.ceiling = ceiling
        self.waited_ns = (hi - lo).clip(0)  # the whole [lo, hi), busy or not
        self._slots, self._lo, self._hi = slots, lo, hi
        self._busy: pl.Series | None = None
        order = slot_ends.arg_sort()
        ends = slot_ends.gather(order)
        idx = _index(ends, hi, "right")
        found = idx >= 0
        self.handoff_ns = (hi - _gather(ends, idx, 0)) * found.cast(pl.Int64) - (~found).cast(
            pl.Int64
        )
        self.release = _gather(order.cast(pl.Int64), idx, -1)

    @property
    def busy_ns(self) -> pl.Series:
        import polars as pl

        if self._busy is None:
            if self.ceiling > 0:
                self._busy = self._slots.time_at_least(self.ceiling, self._lo, self._hi)
            else:
                self._busy = pl.zeros(len(self._lo), pl.Int64, eager=True)
        return self._busy


def queue(
    slot_starts: pl.Series | Sequence[int],
    slot_ends: pl.Series | Sequence[int],
    lo: pl.Series | Sequence[int],
    hi: pl.Series | Sequence[int],
    ceiling: int | None = None,
) -> Queue:
    """A :class:`Queue` whose ceiling is the slots' peak in flight unless given."""
    slot_ends, lo, hi = _ints(slot_ends), _ints(lo), _ints(hi)
    slots = InFlight(slot_starts, slot_ends)
    return Queue(slots, slot_ends, lo, hi, slots.peak if ceiling is None else ceiling)
