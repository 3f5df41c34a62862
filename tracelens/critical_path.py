"""Critical path and self time, after Jaeger UI / CRISP.

Starting at the root's end, the path walks back through the blocking child that finished last
before the cursor, descends into it, and on the way back up continues in the parent from that
child's start. Time in a span not covered by a child on the path is that span's self time, so
the segments tile the root's ``[start, end]`` exactly and self times add up to its duration.

Differences from Jaeger UI, on purpose:

- A child that ends exactly where the cursor stands is taken (Jaeger UI requires it to end
  strictly before), so back-to-back sequential children are all on the path.
- Of children ending at the same instant, the longer one (earlier start) is taken: the parent
  was waiting on it the whole time.
- Async children (``CallTree.is_async``: follows-from, producer→consumer, started after the
  parent ended) and their subtrees are never on the path.

Children that overflow their parent are clipped to the parent's (clipped) bounds first; children
entirely outside it are dropped, as Jaeger UI's ``sanitizeOverFlowingChildren`` does.
Placeholder spans (``missing:…``) are on the path like any span; their service is
``(missing)``, so time no received span accounts for shows up under that name.
"""

from __future__ import annotations

from dataclasses import dataclass

from tracelens.calltree import CallTree
from tracelens.model import gc_paused


@dataclass(slots=True)
class PathSegment:
    """A stretch of time on the critical path attributed to one span."""

    span_id: str
    service: str
    name: str
    start_ns: int
    end_ns: int

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


# A child candidate: (span_id, clipped start, clipped end), sorted by end descending.
_Candidate = tuple[str, int, int]


def critical_path(tree: CallTree) -> list[PathSegment]:
    """Segments ordered by start time, contiguous, covering the root span's [start, end]."""
    with gc_paused():  # the stack holds one candidate list per level: GC passes get costly
        return _critical_path(tree)


def _critical_path(tree: CallTree) -> list[PathSegment]:
    root = tree.spans[tree.root]
    backwards: list[tuple[str, int, int]] = []  # (span_id, start, end), latest first
    stack: list[tuple[str, int, int, list[_Candidate], int]] = []
    current, start, end = tree.root, root.start_ns, root.end_ns
    candidates, index = _candidates(tree, current, start, end), 0
    cursor = end
    while True:
        while index < len(candidates) and candidates[index][2] > cursor:
            index += 1  # overlaps the part already on the path; never eligible again
        if index < len(candidates):
            child, child_start, child_end = candidates[index]
            stack.append((current, start, end, candidates, index + 1))
            low = child_end
        else:
            child = None
            low = start
        if low < cursor:  # nothing when the child ended right at the cursor
            backwards.append((current, low, cursor))
        if child is not None:
            current, start, end, cursor = child, child_start, child_end, child_end
            candidates, index = _candidates(tree, current, start, end), 0
        elif stack:
            cursor = start  # back in the parent, from where this child began
            current, start, end, candidates, index = stack.pop()
        else:
            break
    spans = tree.spans
    return [
        PathSegment(sid, spans[sid].service, spans[sid].name, lo, hi)
        for sid, lo, hi in reversed(backwards)
    ]


def _candidates(tree: CallTree, span_id: str, start: int, end: int) -> list[_Candidate]:
    """Blocking children clipped to [start, end]; those left with no time are dropped."""
    kids = tree.blocking_children(span_id)
    if not kids:
        return []
    spans = tree.spans
    out = []
    for child in kids:
        span = spans[child]
        lo = span.start_ns if span.start_ns > start else start
        hi = span.end_ns if span.end_ns < end else end
        if lo < hi:
            out.append((child, lo, hi))
    out.sort(key=lambda c: (-c[2], c[1], c[0]))
    return out


def self_time(tree: CallTree, *, path: list[PathSegment] | None = None) -> dict[str, int]:
    """span_id -> ns of critical-path time attributed to it (0 for spans off the path).

    ``path``: the tree's ``critical_path`` when the caller has it already (saves a walk).
    """
    times = dict.fromkeys(tree.spans, 0)
    for seg in critical_path(tree) if path is None else path:
        times[seg.span_id] += seg.duration_ns
    return times


def self_time_by_service(
    tree: CallTree, *, path: list[PathSegment] | None = None
) -> list[tuple[str, int, float]]:
    """(service, ns, share) sorted by ns descending, ties by name; shares sum to 1.0.

    Only services with time on the path appear; an empty list when the root has no duration.
    """
    totals: dict[str, int] = {}
    for seg in critical_path(tree) if path is None else path:
        totals[seg.service] = totals.get(seg.service, 0) + seg.duration_ns
    whole = sum(totals.values())
    ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
    return [(service, ns, ns / whole) for service, ns in ranked]


def self_time_by_operation(
    tree: CallTree, *, path: list[PathSegment] | None = None
) -> dict[tuple[str, str], int]:
    """(service, span name) -> ns on the critical path; every operation of the trace appears."""
    times = self_time(tree, path=path)
    out: dict[tuple[str, str], int] = {}
    for span_id, ns in times.items():
        span = tree.spans[span_id]
        key = (span.service, span.name)
        out[key] = out.get(key, 0) + ns
    return out
