"""Small synthetic traces for detector and analyze tests (times in ms from a fixed epoch)."""

from __future__ import annotations

import dataclasses
from typing import Any

from tracelens.model import Span, SpanBatchBuilder, spans_from_table

BASE_NS = 1_700_000_000_000_000_000
MS = 1_000_000
INTERNAL, SERVER, CLIENT = 1, 2, 3


class Traces:
    """Builds spans with readable ids: trace ``t``→ ``{t:032x}``, spans numbered in order."""

    def __init__(self) -> None:
        self.builder = SpanBatchBuilder()
        self._span = 0
        self.batches: list = []

    def span(
        self,
        trace: int,
        parent: str | None,
        name: str,
        start_ms: float,
        dur_ms: float,
        service: str,
        *,
        kind: int = INTERNAL,
        attrs: dict[str, Any] | None = None,
        status: int = 0,
        message: str | None = None,
        events: list[dict[str, Any]] = (),  # type: ignore[assignment]
    ) -> str:
        self._span += 1
        span_id = f"{self._span:016x}"
        start = BASE_NS + int(start_ms * MS)
        self.builder.add(
            trace_id=trace_id(trace),
            span_id=span_id,
            parent_span_id=parent,
            name=name,
            kind=kind,
            start_ns=start,
            end_ns=start + int(dur_ms * MS),
            attributes=attrs or {},
            resource={"service.name": service},
            status_code=status,
            status_message=message,
            events=list(events),
        )
        return span_id

    def db(
        self,
        trace: int,
        parent: str,
        statement: str,
        start_ms: float,
        dur_ms: float,
        service: str = "api",
        system: str = "postgresql",
    ) -> str:
        return self.span(
            trace,
            parent,
            statement.split()[0],
            start_ms,
            dur_ms,
            service,
            kind=CLIENT,
            attrs={"db.system": system, "db.statement": statement, "server.address": "db"},
        )

    def http(
        self,
        trace: int,
        parent: str,
        url: str,
        start_ms: float,
        dur_ms: float,
        service: str = "api",
        **kw: Any,
    ) -> str:
        return self.span(
            trace,
            parent,
            "GET",
            start_ms,
            dur_ms,
            service,
            kind=CLIENT,
            attrs={"http.request.method": "GET", "url.full": url},
            **kw,
        )

    def _flush(self) -> None:
        batch = self.builder.flush()
        if batch is not None:
            self.batches.append(batch)

    def write(self, store: Any) -> None:
        self._flush()
        store.write(self.batches)

    def spans(self, trace: int) -> list[Span]:
        self._flush()
        tid = trace_id(trace)
        return [s for b in self.batches for s in spans_from_table(b) if s.trace_id == tid]


def trace_id(n: int) -> str:
    return f"{n:032x}"


def rule(rule_id: str, **params: Any):
    """A built-in rule with some params changed."""
    from tracelens.rules import builtin_dir, load_file

    rules = load_file(builtin_dir() / f"{rule_id.replace('-', '_')}.yaml")
    base = next(r for r in rules if r.id == rule_id)
    return dataclasses.replace(base, params={**base.params, **params})
