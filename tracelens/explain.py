"""One trace explained: its tree, critical path, self time per service, anomalies and findings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tracelens.errors import TraceNotFoundError

if TYPE_CHECKING:
    import pyarrow as pa

    from tracelens.calltree import CallTree
    from tracelens.detectors.base import Rule
    from tracelens.model import Finding


class TraceReader(Protocol):
    def get_trace(self, trace_id: str) -> pa.Table: ...


@dataclass
class PathStep:
    span_id: str
    service: str
    name: str
    self_ns: int


@dataclass
class Explanation:
    trace_id: str
    tree: CallTree
    duration_ns: int
    critical_path: list[PathStep]
    services: list[tuple[str, int, float]]  # (service, self ns, share)
    self_time: dict[str, int]  # span_id -> self ns on the critical path
    warnings: list[str]
    findings: list[Finding] = field(default_factory=list)

    @property
    def root(self) -> Any:
        return self.tree.spans[self.tree.root]

    @property
    def span_count(self) -> int:
        from tracelens.calltree import PLACEHOLDER_PREFIX

        return sum(1 for sid in self.tree.spans if not _is_placeholder(sid, PLACEHOLDER_PREFIX))

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``explain --format json`` (stable: CI gates read it)."""
        root = self._display_root()
        return {
            "trace_id": self.trace_id,
            "duration_ms": _ms(self.duration_ns),
            "root": {"service": root.service, "name": root.name},
            "span_count": self.span_count,
            "critical_path": [
                {
                    "span_id": s.span_id,
                    "service": s.service,
                    "name": s.name,
                    "self_ms": _ms(s.self_ns),
                }
                for s in self.critical_path
            ],
            "services": [
                {"service": svc, "self_ms": _ms(ns), "share": round(share, 4)}
                for svc, ns, share in self.services
            ],
            "warnings": list(self.warnings),
            "findings": [f.to_dict() for f in self.findings],
        }

    def _display_root(self) -> Any:
        # A synthetic root above several roots names nothing; show its first real child.
        from tracelens.calltree import PLACEHOLDER_PREFIX

        root_id = self.tree.root
        while _is_placeholder(root_id, PLACEHOLDER_PREFIX) and self.tree.children(root_id):
            root_id = self.tree.children(root_id)[0]
        return self.tree.spans[root_id]


def _is_placeholder(span_id: str, prefix: str) -> bool:
    return span_id.startswith(prefix) or span_id.startswith("(")


def _ms(ns: int | float) -> float:
    return round(ns / 1e6, 3)


def explain(
    reader: TraceReader,
    trace_id: str,
    *,
    rules: list[Rule] | None = None,
    with_findings: bool = True,
) -> Explanation:
    """Load one trace and explain it. Raises TraceNotFoundError for an unknown id."""
    from tracelens import calltree, critical_path

    trace_id = trace_id.strip().lower()
    spans = _load_spans(reader, trace_id)
    if not spans:
        raise TraceNotFoundError(trace_id)
    tree = calltree.build(spans)
    segments = critical_path.critical_path(tree)
    self_time = critical_path.self_time(tree, path=segments)
    result = Explanation(
        trace_id=trace_id,
        tree=tree,
        duration_ns=tree.duration_ns,
        critical_path=_path_steps(segments),
        services=critical_path.self_time_by_service(tree, path=segments),
        self_time=self_time,
        warnings=list(tree.warnings),
    )
    if with_findings:
        result.findings = _findings(reader, trace_id, tree, rules)
    return result


def _load_spans(reader: Any, trace_id: str) -> list[Any]:
    # A local store hands rows over without Arrow (pyarrow's import is most of a cold start).
    direct = getattr(reader, "get_trace_spans", None)
    if direct is not None:
        return direct(trace_id)
    from tracelens.model import spans_from_table

    return spans_from_table(reader.get_trace(trace_id))


def _path_steps(segments: list[Any]) -> list[PathStep]:
    """Critical-path segments merged per span, in the order the path first reaches them."""
    steps: dict[str, PathStep] = {}
    for seg in segments:
        step = steps.get(seg.span_id)
        if step is None:
            steps[seg.span_id] = PathStep(seg.span_id, seg.service, seg.name, seg.duration_ns)
        else:
            step.self_ns += seg.duration_ns
    return list(steps.values())


def _findings(
    reader: Any, trace_id: str, tree: CallTree, rules: list[Rule] | None
) -> list[Finding]:
    if rules is None:  # the built-in rules: a server holding the store has them loaded, warm
        remote = getattr(reader, "trace_findings", None)
        found = remote(trace_id) if remote is not None else None
        if found is not None:
            return found
    from tracelens.analyze import findings_for_trace
    from tracelens.rules import load_rules

    return findings_for_trace(reader, trace_id, tree, rules if rules is not None else load_rules())
