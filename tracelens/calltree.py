"""Span list → call tree, repairing what real traces get wrong.

Real traces are messy, and every repair is reported in ``CallTree.warnings``:

- **Duplicate span ids.** Identical rows keep one copy. Different rows with one id keep all:
  the first (by start time) keeps the id, the others get ``<id>-dup<n>``.
- **Missing parents.** Orphans hang under one placeholder per missing id,
  ``missing:<id>`` named ``(missing span <id>)``, whose times span its children.
- **Cycles** in the parent links. The span of the cycle that starts first loses its parent
  link and hangs under the root instead.
- **Several roots.** A synthetic ``missing:root`` span named ``(trace root)`` sits above them.
- **Clock skew**, as Jaeger's clock-skew adjuster does it, with the service standing in for
  Jaeger's host: a SERVER span under a CLIENT span of another service that does not fit its
  parent is shifted, with its same-service descendants, to the middle of the parent (or only
  to the parent's start when the server lasted longer than the client). Children of the same
  service are never shifted: their clock is the parent's, so an overrun is real (or async).

Placeholders belong to the service ``(missing)``: time on the critical path that no received
span covers is attributed there. Every traversal is iterative, so 100,000-level traces work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tracelens.model import Span, SpanKind, gc_paused

if TYPE_CHECKING:
    import networkx as nx

PLACEHOLDER_PREFIX = "missing:"  # span_id prefix of synthetic placeholder parents
PLACEHOLDER_SERVICE = "(missing)"  # service of every placeholder span
TRACE_ROOT_ID = PLACEHOLDER_PREFIX + "root"  # the synthetic root above several roots
TRACE_ROOT_NAME = "(trace root)"
DUPLICATE_SUFFIX = "-dup"
_LISTED = 5  # ids named in one warning before "…"
# Plain ints: comparing against IntEnum members is slower in the hot loops.
_SERVER, _CLIENT = int(SpanKind.SERVER), int(SpanKind.CLIENT)
_PRODUCER, _CONSUMER = int(SpanKind.PRODUCER), int(SpanKind.CONSUMER)


def is_placeholder(span_id: str) -> bool:
    return span_id.startswith(PLACEHOLDER_PREFIX)


class _LazyGraph:
    """The ``graph`` field: networkx costs ≈2.5 µs per edge, so it is built on first use.

    ``build`` passes None; reading ``tree.graph`` then builds it from the parent links.
    Raising AttributeError on the class keeps the dataclass field required (no default).
    """

    def __get__(self, tree: CallTree | None, owner: type | None = None) -> nx.DiGraph:
        if tree is None:
            raise AttributeError("graph")
        graph = tree.__dict__.get("_graph")
        if graph is None:
            graph = tree.__dict__["_graph"] = _graph(tree.spans, tree._parent)
        return graph

    def __set__(self, tree: CallTree, graph: nx.DiGraph | None) -> None:
        tree.__dict__["_graph"] = graph


@dataclass
class CallTree:
    """One trace as a tree. Build it with :func:`build`; query it with the methods."""

    trace_id: str
    spans: dict[str, Span]  # span_id -> Span, after duplicate handling and skew adjustment
    graph: nx.DiGraph = _LazyGraph()  # type: ignore[assignment]  # parent -> child, every span a node
    root: str
    warnings: list[str]
    skew_shifts: dict[str, int] = field(default_factory=dict)  # span_id -> ns it was moved by
    _children: dict[str, list[str]] | None = field(default=None, repr=False, compare=False)
    _parent: dict[str, str] | None = field(default=None, repr=False, compare=False)
    _depth: dict[str, int] | None = field(default=None, repr=False, compare=False)
    _duration: int | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._children is None or self._parent is None:
            # Built by hand from a graph: derive the indexes from it.
            self._parent = {c: p for p, c in self.graph.edges}
            self._children = {p: list(self.graph.successors(p)) for p in self.graph.nodes}
            for kids in self._children.values():
                kids.sort(key=self._order_key)

    def _order_key(self, span_id: str) -> tuple[int, str]:
        return (self.spans[span_id].start_ns, span_id)

    def children(self, span_id: str) -> list[str]:
        """Child span ids sorted by start time, then id."""
        return list(self._children.get(span_id, ()))  # type: ignore[union-attr]

    def parent(self, span_id: str) -> str | None:
        """The parent in the tree (a placeholder for orphans), None for the root."""
        if span_id not in self.spans:
            raise KeyError(span_id)
        return self._parent.get(span_id)  # type: ignore[union-attr]

    def is_async(self, span_id: str) -> bool:
        """Whether the span does not block its parent.

        FOLLOWS_FROM references, a CONSUMER under a PRODUCER (as Jaeger UI decides; a PRODUCER
        itself blocks: sending is synchronous, the consumer is not), and a child that starts
        once its parent has ended.
        """
        parent_id = self.parent(span_id)
        if parent_id is None:
            return False
        return _is_async(self.spans[span_id], self.spans[parent_id])

    def blocking_children(self, span_id: str) -> list[str]:
        """Children that the span waits for (``children`` minus the async ones)."""
        kids = self._children.get(span_id)  # type: ignore[union-attr]
        if not kids:
            return []
        spans, parent = self.spans, self.spans[span_id]
        return [kid for kid in kids if not _is_async(spans[kid], parent)]

    def depth(self, span_id: str) -> int:
        if self._depth is None:
            self._depth = dict(self.walk())
        return self._depth[span_id]

    def walk(self) -> Iterator[tuple[str, int]]:
        """Pre-order (span_id, depth), children in start order; iterative."""
        children = self._children
        stack = [(self.root, 0)]
        while stack:
            span_id, depth = stack.pop()
            yield span_id, depth
            kids = children.get(span_id)  # type: ignore[union-attr]
            if kids:
                stack.extend((kid, depth + 1) for kid in reversed(kids))

    @property
    def duration_ns(self) -> int:
        """Trace wall time: latest end minus earliest start over the real (received) spans."""
        if self._duration is None:
            real = [s for sid, s in self.spans.items() if not is_placeholder(sid)]
            self._duration = (
                max(s.end_ns for s in real) - min(s.start_ns for s in real) if real else 0
            )
        return self._duration

    def is_placeholder(self, span_id: str) -> bool:
        return is_placeholder(span_id)


def _is_async(span: Span, parent: Span) -> bool:
    return (
        span.follows_from
        or span.start_ns >= parent.end_ns
        or (span.kind == _CONSUMER and parent.kind == _PRODUCER)
    )


def build(spans: Iterable[Span]) -> CallTree:
    """Build the call tree of one trace. Raises ValueError for no spans or several traces."""
    spans = list(spans)
    if not spans:
        raise ValueError("cannot build a call tree from no spans")
    trace_ids = {s.trace_id for s in spans}
    if len(trace_ids) > 1:
        raise ValueError(f"spans of {len(trace_ids)} traces given: {_ids_text(sorted(trace_ids))}")
    with gc_paused():  # many small containers, none of them cyclic
        return _build(spans[0].trace_id, spans)


def _build(trace_id: str, spans: list[Span]) -> CallTree:
    warnings: list[str] = []
    by_id = _dedupe(_fix_negative(spans, warnings), warnings)
    parent = _parent_links(by_id)
    _attach_orphans(trace_id, by_id, parent, warnings)
    cycle_heads = _break_cycles(by_id, parent, warnings)
    root = _choose_root(trace_id, by_id, parent, cycle_heads, warnings)
    children = _children_index(by_id, parent)
    shifts = _adjust_skew(by_id, parent, children, root, warnings)
    for kids in children.values():
        kids.sort(key=lambda c: (by_id[c].start_ns, c))
    return CallTree(
        trace_id=trace_id,
        spans=by_id,
        graph=None,  # built on first use
        root=root,
        warnings=warnings,
        skew_shifts=shifts,
        _children=children,
        _parent=parent,
    )


# --- repairs, in the order build applies them -------------------------------------------------


def _fix_negative(spans: list[Span], warnings: list[str]) -> list[Span]:
    bad = [s.span_id for s in spans if s.end_ns < s.start_ns]
    if not bad:
        return spans
    warnings.append(
        f"{len(bad)} span(s) end before they start, treated as zero-length: {_ids_text(bad)}"
    )
    return [
        dataclasses.replace(s, end_ns=s.start_ns) if s.end_ns < s.start_ns else s for s in spans
    ]


def _dedupe(spans: list[Span], warnings: list[str]) -> dict[str, Span]:
    by_id: dict[str, Span] = {}
    clashes: dict[str, list[Span]] = {}
    identical: list[str] = []
    for span in spans:
        kept = by_id.setdefault(span.span_id, span)
        if kept is span:
            continue
        others = clashes.setdefault(span.span_id, [kept])
        if any(span == other for other in others):
            identical.append(span.span_id)
        else:
            others.append(span)
    if identical:
        warnings.append(
            f"dropped {len(identical)} identical duplicate span(s): {_ids_text(identical)}"
        )
    renamed: list[str] = []
    for span_id, versions in clashes.items():
        if len(versions) > 1:
            renamed += _rename_duplicates(span_id, versions, by_id)
    if renamed:
        warnings.append(
            f"{len(renamed)} span(s) reuse the id of a different span: the earliest of each "
            f"kept the id, the others were renamed: {_ids_text(renamed)}"
        )
    return by_id


def _rename_duplicates(span_id: str, versions: list[Span], by_id: dict[str, Span]) -> list[str]:
    """Earliest start keeps the id (children most likely belong to it); returns new ids."""
    versions = sorted(versions, key=lambda s: (s.start_ns, s.end_ns))  # stable: input order
    by_id[span_id] = versions[0]
    renamed = []
    n = 0
    for span in versions[1:]:
        n += 1
        while f"{span_id}{DUPLICATE_SUFFIX}{n}" in by_id:
            n += 1
        new_id = f"{span_id}{DUPLICATE_SUFFIX}{n}"
        by_id[new_id] = dataclasses.replace(span, span_id=new_id)
        renamed.append(new_id)
    return renamed


def _parent_links(by_id: dict[str, Span]) -> dict[str, str]:
    """span_id -> parent id for spans that name a parent (empty and all-zero ids are none)."""
    return {
        sid: s.parent_span_id
        for sid, s in by_id.items()
        if s.parent_span_id and s.parent_span_id.strip("0")
    }


def _attach_orphans(
    trace_id: str, by_id: dict[str, Span], parent: dict[str, str], warnings: list[str]
) -> None:
    orphans: dict[str, list[str]] = {}
    for sid, pid in parent.items():
        if pid not in by_id:
            orphans.setdefault(pid, []).append(sid)
    for missing, kids in orphans.items():
        holder = PLACEHOLDER_PREFIX + missing
        by_id[holder] = _placeholder(
            trace_id, holder, f"(missing span {missing})", [by_id[k] for k in kids]
        )
        for kid in kids:
            parent[kid] = holder
    if orphans:
        count = sum(len(kids) for kids in orphans.values())
        warnings.append(
            f"{count} span(s) name {len(orphans)} parent(s) not in the trace "
            f"({_ids_text(sorted(orphans))}); attached them under placeholder spans"
        )


def _break_cycles(by_id: dict[str, Span], parent: dict[str, str], warnings: list[str]) -> list[str]:
    """Cut every cycle of parent links at its earliest-starting span; return those spans."""
    walk_of: dict[str, int] = {}  # span -> number of the walk that reached it first
    heads: list[str] = []
    for walk, start in enumerate(by_id):
        path: list[str] = []
        node: str | None = start
        while node is not None and node not in walk_of:
            walk_of[node] = walk
            path.append(node)
            node = parent.get(node)
        if node is None or walk_of[node] != walk:
            continue  # reached a root, or a span an earlier walk already settled
        cycle = path[path.index(node) :]
        head = min(cycle, key=lambda c: (by_id[c].start_ns, c))
        del parent[head]
        heads.append(head)
        loop = " -> ".join([*cycle, cycle[0]])
        warnings.append(
            f"parent links form a cycle ({loop}); cut the link of {head} "
            "and attached it to the root"
        )
    return heads


def _choose_root(
    trace_id: str,
    by_id: dict[str, Span],
    parent: dict[str, str],
    cycle_heads: list[str],
    warnings: list[str],
) -> str:
    heads = set(cycle_heads)
    roots = [sid for sid in by_id if sid not in parent and sid not in heads]
    if len(roots) == 1:
        root = roots[0]
    elif not roots and len(cycle_heads) == 1:
        return cycle_heads[0]
    else:
        roots.sort(key=lambda r: (by_id[r].start_ns, r))
        tops = roots + cycle_heads
        by_id[TRACE_ROOT_ID] = _placeholder(
            trace_id, TRACE_ROOT_ID, TRACE_ROOT_NAME, [by_id[r] for r in tops]
        )
        if len(roots) > 1:
            warnings.append(
                f"{len(roots)} root spans ({_ids_text(roots)}); "
                f"added a synthetic {TRACE_ROOT_NAME} above them"
            )
        root = TRACE_ROOT_ID
        for top in roots:
            parent[top] = root
    for head in cycle_heads:
        parent[head] = root
    return root


def _placeholder(trace_id: str, span_id: str, name: str, kids: list[Span]) -> Span:
    return Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=None,
        name=name,
        kind=SpanKind.UNSPECIFIED,
        start_ns=min(k.start_ns for k in kids),
        end_ns=max(k.end_ns for k in kids),
        service=PLACEHOLDER_SERVICE,
    )


def _children_index(by_id: dict[str, Span], parent: dict[str, str]) -> dict[str, list[str]]:
    children: dict[str, list[str]] = {}
    for sid, pid in parent.items():
        children.setdefault(pid, []).append(sid)
    return children


def _skew_candidate(child: Span, parent: Span) -> bool:
    """A server span answering a client of another service, not inside it (another clock)."""
    return (
        child.kind == _SERVER
        and parent.kind == _CLIENT
        and child.service != parent.service
        and (child.start_ns < parent.start_ns or child.end_ns > parent.end_ns)
    )


def _skew(child: Span, parent: Span) -> int:
    """Jaeger's calculateSkew: the shift that puts a server span inside its client span."""
    if child.duration_ns > parent.duration_ns:
        # Longer than its client (async, or the client timed out): only fix the start.
        return max(parent.start_ns - child.start_ns, 0)
    if child.start_ns >= parent.start_ns and child.end_ns <= parent.end_ns:
        return 0
    # Assume the network latency splits evenly between request and response.
    latency = (parent.duration_ns - child.duration_ns) // 2
    return parent.start_ns + latency - child.start_ns


def _adjust_skew(
    by_id: dict[str, Span],
    parent: dict[str, str],
    children: dict[str, list[str]],
    root: str,
    warnings: list[str],
) -> dict[str, int]:
    """Shift server subtrees whose clock disagrees with their client's; top-down, iterative."""
    shifts: dict[str, int] = {}
    if not any(
        by_id[sid].kind == _SERVER and _skew_candidate(by_id[sid], by_id[pid])
        for sid, pid in parent.items()
    ):
        return shifts  # the usual case; nothing can move unless some server span is off
    adjusted: list[tuple[str, int]] = []  # (server span, delta) where a new delta started
    stack = [(kid, 0) for kid in children.get(root, ())]
    while stack:
        sid, delta = stack.pop()
        span, up = by_id[sid], by_id[parent[sid]]
        if span.service != up.service:
            # Another clock: only a server answering a client tells us how far off it is.
            delta = _skew(span, up) if _skew_candidate(span, up) else 0
            if delta:
                adjusted.append((sid, delta))
        if delta:
            by_id[sid] = _shifted(span, delta)
            shifts[sid] = delta
        stack.extend((kid, delta) for kid in children.get(sid, ()))
    if adjusted:
        adjusted.sort(key=lambda item: -abs(item[1]))
        listed = ", ".join(
            f"{by_id[sid].service}/{sid} {_ms(delta)}" for sid, delta in adjusted[:_LISTED]
        )
        more = ", …" if len(adjusted) > _LISTED else ""
        warnings.append(
            f"clock skew: shifted {len(shifts)} span(s) in {len(adjusted)} server subtree(s) "
            f"to fit their client spans, largest shift {_ms(adjusted[0][1])} "
            f"({listed}{more})"
        )
    return shifts


def _shifted(span: Span, delta: int) -> Span:
    events = [
        {**e, "time_ns": e["time_ns"] + delta} if isinstance(e.get("time_ns"), int) else e
        for e in span.events
    ]
    return dataclasses.replace(
        span, start_ns=span.start_ns + delta, end_ns=span.end_ns + delta, events=events
    )


def _graph(by_id: dict[str, Span], parent: dict[str, str]) -> nx.DiGraph:
    import networkx as nx

    graph = nx.DiGraph()
    graph.add_nodes_from(by_id)
    graph.add_edges_from((pid, sid) for sid, pid in parent.items())
    return graph


def _ms(ns: int) -> str:
    """A signed shift for people: ms, µs or ns, whichever reads best."""
    if abs(ns) >= 1_000_000:
        return f"{ns / 1e6:+.3f} ms"
    if abs(ns) >= 1_000:
        return f"{ns / 1e3:+.3f} µs"
    return f"{ns:+d} ns"


def _ids_text(ids: list[str]) -> str:
    shown = ", ".join(ids[:_LISTED])
    return shown + (f", … ({len(ids)} in all)" if len(ids) > _LISTED else "")
