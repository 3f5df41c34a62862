"""The contract between the rules engine and detector kinds.

A detector kind is a module in ``tracelens.detectors`` defining::

    KIND: str                        # e.g. "n_plus_one"; rules name it in `detector:`
    SCOPE: "trace" | "store"         # what it looks at (see below)
    PARAMS: dict[str, Any]           # every threshold a rule may set, with its default
    def detect(ctx, rule: Rule) -> list[Finding]
    # optional, SCOPE == "trace" only: a vectorized prefilter so analyze does not build
    # a call tree for every trace in the store
    def candidates(store: StoreContext, rule: Rule) -> Iterable[str]   # trace ids
    # optional: span columns beyond ``analyze.BASE_COLUMNS`` that ``detect``/``candidates``
    # read from ``StoreContext.spans`` (e.g. "db_statement"; "attributes" is added by itself
    # when a rule's matcher uses attributes)
    COLUMNS: tuple[str, ...]
    # optional: the ``{field}`` names summary/fix templates may use; when given, rule files
    # are checked against it ("unknown field {p95ms}; did you mean 'p95_ms'?")
    FIELDS: tuple[str, ...]

``SCOPE == "trace"`` detectors get a :class:`TraceContext` (one call tree with its critical
path); ``SCOPE == "store"`` detectors get a :class:`StoreContext` (a polars frame of many
traces' spans — or of a single trace, when ``explain`` runs them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl

    from tracelens.calltree import CallTree
    from tracelens.model import Finding, Span

SEVERITIES = ("info", "low", "medium", "high", "critical")


@dataclass(frozen=True)
class Rule:
    """One rule from a YAML file, bound to its detector kind."""

    id: str
    kind: str  # detector kind == Finding.kind
    severity: str
    summary: str  # one-line explanation template, str.format(**fields) by the detector
    fix: str
    params: dict[str, Any]  # PARAMS defaults overlaid with the file's values
    match: Any  # a tracelens.rules.Matcher: .matches(span) -> bool, .filter(df) -> df
    source: str = ""  # "path/to/file.yaml:line" for messages


@dataclass
class TraceContext:
    """One trace, ready for single-trace detectors."""

    tree: CallTree
    self_time: dict[str, int]  # span_id -> ns on the critical path
    on_path: frozenset[str]  # span ids with self time on the critical path

    @property
    def duration_ns(self) -> int:
        return self.tree.duration_ns

    def spans(self) -> Iterator[Span]:
        return iter(self.tree.spans.values())


@dataclass
class StoreContext:
    """Many traces at once, for cross-trace detectors and prefilters.

    ``spans`` has ``analyze.BASE_COLUMNS`` plus the columns detectors declare in ``COLUMNS``
    and rules' matchers read; ``traces`` one row per trace: trace_id, root_service, root_name,
    start_ns, duration_ns, span_count (and root_span_id, end_ns, error_count).
    ``trace_context(trace_id)`` builds (and caches) a TraceContext when a detector needs
    the tree of one trace. ``extra["prefetch"](trace_ids)``, when present, reads many traces
    in one query before a detector asks for their contexts one by one.
    """

    spans: pl.DataFrame
    traces: pl.DataFrame
    trace_context: Callable[[str], TraceContext]
    extra: dict[str, Any] = field(default_factory=dict)


def impact_share(impact_ns: float, total_ns: float) -> float:
    return 0.0 if total_ns <= 0 else min(1.0, impact_ns / total_ns)


def make_finding(rule: Rule, **fields: Any) -> Finding:
    """A Finding whose summary/fix templates are filled from ``fields`` (missing keys kept)."""
    from tracelens.model import Finding

    fmt = _SafeFormat(fields.pop("template_values", {}))
    fmt.update({k: v for k, v in fields.items() if isinstance(v, str | int | float)})
    return Finding(
        rule=rule.id,
        kind=rule.kind,
        severity=fields.pop("severity", rule.severity),
        summary=rule.summary.format_map(fmt),
        fix=rule.fix.format_map(fmt),
        **fields,
    )


class _SafeFormat(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"
