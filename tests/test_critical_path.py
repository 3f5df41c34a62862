"""Critical path and self time: hand-built cases, the CRISP corpus cases, a real HotROD trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracelens import ids
from tracelens.calltree import PLACEHOLDER_SERVICE, TRACE_ROOT_ID, CallTree, build
from tracelens.critical_path import (
    PathSegment,
    critical_path,
    self_time,
    self_time_by_operation,
    self_time_by_service,
)
from tracelens.model import Span, SpanKind

TRACE = "ab" * 16


def span(
    span_id: str,
    parent: str | None,
    start: int,
    end: int,
    *,
    service: str = "svc",
    kind: int = SpanKind.INTERNAL,
    name: str | None = None,
    follows_from: bool = False,
) -> Span:
    return Span(
        trace_id=TRACE,
        span_id=span_id,
        parent_span_id=parent,
        name=name or span_id,
        kind=int(kind),
        start_ns=start,
        end_ns=end,
        service=service,
        follows_from=follows_from,
    )


def path_of(*spans: Span) -> list[tuple[str, int, int]]:
    tree = build(list(spans))
    path = critical_path(tree)
    assert_tiles_root(tree, path)
    return [(seg.span_id, seg.start_ns, seg.end_ns) for seg in path]


def assert_tiles_root(tree: CallTree, path: list[PathSegment]) -> None:
    """Contiguous, ordered, non-empty segments covering exactly the root's [start, end]."""
    root = tree.spans[tree.root]
    if root.end_ns == root.start_ns:
        assert path == []
        return
    assert path[0].start_ns == root.start_ns
    assert path[-1].end_ns == root.end_ns
    for before, after in zip(path, path[1:], strict=False):
        assert before.end_ns == after.start_ns
        assert before.span_id != after.span_id  # a parent's stretches sit around a child
    assert all(seg.duration_ns > 0 for seg in path)
    assert sum(seg.duration_ns for seg in path) == root.end_ns - root.start_ns


# --- hand-built cases with known answers ------------------------------------------------------


def test_sequential_children_are_all_on_the_path():
    assert path_of(
        span("r", None, 0, 100),
        span("a", "r", 10, 30),
        span("b", "r", 30, 60),  # starts exactly when a ends
        span("c", "r", 60, 90),
    ) == [("r", 0, 10), ("a", 10, 30), ("b", 30, 60), ("c", 60, 90), ("r", 90, 100)]


def test_overlapping_children_the_last_finishing_one_wins():
    # b ends last; a ended after b started, so it is not on the path.
    assert path_of(span("r", None, 0, 100), span("a", "r", 10, 50), span("b", "r", 20, 70)) == [
        ("r", 0, 20),
        ("b", 20, 70),
        ("r", 70, 100),
    ]


def test_child_nested_inside_a_longer_sibling_is_off_the_path():
    assert path_of(span("r", None, 0, 100), span("a", "r", 10, 60), span("b", "r", 20, 50)) == [
        ("r", 0, 10),
        ("a", 10, 60),
        ("r", 60, 100),
    ]


def test_equal_ends_take_the_longer_child():
    assert path_of(
        span("r", None, 0, 100), span("short", "r", 30, 50), span("long", "r", 10, 50)
    ) == [("r", 0, 10), ("long", 10, 50), ("r", 50, 100)]


def test_gaps_in_nested_children_are_the_parents_self_time():
    spans = [
        span("r", None, 0, 100, service="front"),
        span("a", "r", 10, 90, service="back"),
        span("b", "a", 20, 30, service="db"),
        span("c", "a", 50, 60, service="db"),
    ]
    assert path_of(*spans) == [
        ("r", 0, 10),
        ("a", 10, 20),
        ("b", 20, 30),
        ("a", 30, 50),
        ("c", 50, 60),
        ("a", 60, 90),
        ("r", 90, 100),
    ]
    tree = build(spans)
    assert self_time(tree) == {"r": 20, "a": 60, "b": 10, "c": 10}
    # Ties are ordered by service name.
    assert self_time_by_service(tree) == [("back", 60, 0.6), ("db", 20, 0.2), ("front", 20, 0.2)]
    assert self_time_by_operation(tree) == {
        ("front", "r"): 20,
        ("back", "a"): 60,
        ("db", "b"): 10,
        ("db", "c"): 10,
    }


def test_child_overflowing_its_parent_is_truncated_first():
    # Same service, so no skew adjustment: the overrun is clipped to the parent's end,
    # and a grandchild beyond the clipped child is dropped.
    assert path_of(
        span("r", None, 0, 100),
        span("a", "r", 50, 150),
        span("g", "a", 120, 140),
        span("h", "a", 60, 70),
    ) == [("r", 0, 50), ("a", 50, 60), ("h", 60, 70), ("a", 70, 100)]


def test_child_starting_before_its_parent_is_truncated_at_the_parents_start():
    assert path_of(span("r", None, 0, 100), span("a", "r", -20, 30)) == [
        ("a", 0, 30),
        ("r", 30, 100),
    ]


def test_child_entirely_before_its_parent_is_dropped():
    assert path_of(span("r", None, 100, 200), span("a", "r", 0, 50)) == [("r", 100, 200)]


def test_child_starting_after_its_parent_ended_is_dropped():
    # Jaeger UI testCases/test3: the child is outside the parent, only the parent is on the path.
    assert path_of(span("r", None, 100, 140), span("a", "r", 150, 400)) == [("r", 100, 140)]


def test_jaeger_ui_test2_overlapping_children():
    # Jaeger UI testCases/test2: X [1,101], A [10,50], C [20,60] -> X, C, X.
    assert path_of(
        span("span-X", None, 1, 101),
        span("span-A", "span-X", 10, 50),
        span("span-C", "span-X", 20, 60),
    ) == [("span-X", 1, 20), ("span-C", 20, 60), ("span-X", 60, 101)]


@pytest.mark.parametrize(
    "async_child",
    [
        span("x", "r", 20, 95, follows_from=True),
        span("x", "p", 20, 95, kind=SpanKind.CONSUMER, service="worker"),
    ],
    ids=["follows_from", "producer_consumer"],
)
def test_async_children_are_off_the_path(async_child):
    spans = [
        span("r", None, 0, 100),
        span("p", "r", 10, 15, kind=SpanKind.PRODUCER),
        span("b", "r", 40, 60),
        async_child,
        span("xk", "x", 30, 90),  # its subtree is off the path too
    ]
    path = path_of(*spans)
    assert path == [("r", 0, 10), ("p", 10, 15), ("r", 15, 40), ("b", 40, 60), ("r", 60, 100)]
    tree = build(spans)
    assert self_time(tree)["x"] == 0 and self_time(tree)["xk"] == 0


def test_zero_length_children_change_nothing():
    assert path_of(span("r", None, 0, 10), span("z", "r", 5, 5)) == [("r", 0, 10)]


def test_zero_length_root_has_an_empty_path():
    tree = build([span("r", None, 5, 5)])
    assert critical_path(tree) == []
    assert self_time_by_service(tree) == []
    assert self_time(tree) == {"r": 0}


def test_several_roots_gaps_belong_to_the_missing_service():
    tree = build([span("r1", None, 0, 40, service="a"), span("r2", None, 60, 100, service="b")])
    path = critical_path(tree)
    assert_tiles_root(tree, path)
    assert [(s.span_id, s.start_ns, s.end_ns) for s in path] == [
        ("r1", 0, 40),
        (TRACE_ROOT_ID, 40, 60),
        ("r2", 60, 100),
    ]
    assert path[1].service == PLACEHOLDER_SERVICE and path[1].name == "(trace root)"
    shares = {svc: share for svc, _, share in self_time_by_service(tree)}
    assert shares == {"a": 0.4, "b": 0.4, PLACEHOLDER_SERVICE: 0.2}


def test_orphans_are_on_the_path_under_their_placeholder():
    tree = build([span("a", "gone", 10, 20), span("b", "gone", 30, 50)])
    path = critical_path(tree)
    assert_tiles_root(tree, path)
    assert [s.span_id for s in path] == ["a", "missing:gone", "b"]


def test_skew_is_adjusted_before_the_path_is_taken():
    tree = build(
        [
            span("cli", None, 0, 100, service="a", kind=SpanKind.CLIENT),
            span("srv", "cli", 1000, 1060, service="b", kind=SpanKind.SERVER),
        ]
    )
    path = critical_path(tree)
    assert [(s.span_id, s.start_ns, s.end_ns) for s in path] == [
        ("cli", 0, 20),
        ("srv", 20, 80),
        ("cli", 80, 100),
    ]


def test_shares_sum_to_one():
    spans = [span("r", None, 0, 997, service="s0")] + [
        span(f"c{i}", "r", i * 31, i * 31 + 17, service=f"s{i % 4}") for i in range(30)
    ]
    services = self_time_by_service(build(spans))
    assert sum(share for _, _, share in services) == pytest.approx(1.0)
    assert sum(ns for _, ns, _ in services) == 997
    assert [ns for _, ns, _ in services] == sorted((ns for _, ns, _ in services), reverse=True)


def test_a_given_path_is_used_as_is():
    tree = build([span("r", None, 0, 10, service="a"), span("c", "r", 2, 4, service="b")])
    path = critical_path(tree)
    assert self_time(tree, path=path) == self_time(tree) == {"r": 8, "c": 2}
    assert self_time_by_service(tree, path=path) == [("a", 8, 0.8), ("b", 2, 0.2)]
    assert self_time_by_operation(tree, path=path) == {("a", "r"): 8, ("b", "c"): 2}
    assert self_time(tree, path=path[:1]) == {"r": 2, "c": 0}


def test_segment_duration():
    assert PathSegment("a", "s", "n", 5, 12).duration_ns == 7


# --- the CRISP test cases of the corpus --------------------------------------------------------


def spans_from_jaeger_json(path: Path) -> tuple[list[Span], dict]:
    """Tiny reader for the CRISP files: µs times, processID -> serviceName, CHILD_OF parents."""
    doc = json.loads(path.read_text())
    (trace,) = doc["data"]
    trace_id = ids.trace_id(trace["traceID"], lenient=True)
    out = []
    for raw in trace["spans"]:
        refs = raw.get("references") or []
        parent = next((r["spanID"] for r in refs), None)
        out.append(
            Span(
                trace_id=trace_id,
                span_id=ids.span_id(raw["spanID"], lenient=True),
                parent_span_id=ids.span_id(parent, lenient=True) if parent else None,
                name=raw["operationName"],
                kind=SpanKind.UNSPECIFIED,
                start_ns=raw["startTime"] * 1000,
                end_ns=(raw["startTime"] + raw["duration"]) * 1000,
                service=trace["processes"][raw["processID"]]["serviceName"],
                follows_from=any(r["refType"] == "FOLLOWS_FROM" for r in refs[:1]),
            )
        )
    return out, doc["testing"]


def crisp_files() -> list[Path]:
    from conftest import CORPUS

    return sorted((CORPUS / "jaeger-json").glob("*crisp*.json"))


@pytest.mark.parametrize("name", [p.name for p in crisp_files()] or ["crisp_test_case_7.json"])
def test_crisp_exclusive_time_per_operation(corpus, name):
    spans, testing = spans_from_jaeger_json(corpus / "jaeger-json" / name)
    # Most cases give {"opTimeExclusive": {"[service] op": µs}}; test 7 gives [{...}].
    expected_us = testing[0] if isinstance(testing, list) else testing["opTimeExclusive"]
    tree = build(spans)
    path = critical_path(tree)
    assert_tiles_root(tree, path)
    got = {f"[{svc}] {op}": ns / 1000 for (svc, op), ns in self_time_by_operation(tree).items()}
    assert got == expected_us
    assert sum(share for _, _, share in self_time_by_service(tree)) == pytest.approx(1.0)


def test_crisp_files_are_present(corpus):
    assert len(crisp_files()) >= 5


# --- a real HotROD trace -------------------------------------------------------------------------


def spans_from_otlp_json(path: Path) -> list[Span]:
    """Tiny OTLP/JSON reader: hex ids, service.name from the resource, integer kinds."""
    doc = json.loads(path.read_text())
    out = []
    for resource_spans in doc["resourceSpans"]:
        resource = {a["key"]: a["value"] for a in resource_spans["resource"]["attributes"]}
        service = resource["service.name"]["stringValue"]
        for scope_spans in resource_spans["scopeSpans"]:
            for raw in scope_spans["spans"]:
                out.append(
                    Span(
                        trace_id=ids.trace_id(raw["traceId"], exact=True),
                        span_id=ids.span_id(raw["spanId"], exact=True),
                        parent_span_id=raw.get("parentSpanId") or None,
                        name=raw["name"],
                        kind=int(raw.get("kind", 0)),
                        start_ns=int(raw["startTimeUnixNano"]),
                        end_ns=int(raw["endTimeUnixNano"]),
                        service=service,
                    )
                )
    return out


def test_hotrod_critical_path(corpus):
    spans = spans_from_otlp_json(
        corpus / "otlp-json" / "jaeger_hotrod_n_plus_one_full_concurrent.json"
    )
    assert len(spans) == 40
    tree = build(spans)
    assert tree.warnings == []
    assert tree.spans[tree.root].name == "GET /dispatch"
    path = critical_path(tree)
    assert_tiles_root(tree, path)
    on_path = {(seg.service, seg.name) for seg in path}
    assert ("mysql", "SQL SELECT") in on_path
    assert ("driver", "driver.DriverService/FindNearest") in on_path
    assert ("redis-manual", "FindDriverIDs") in on_path
    assert ("redis-manual", "GetDriver") in on_path
    assert ("route", "GET /route") in on_path
    # The redis calls are sequential: every one of the 14 is on the path.
    redis = [seg for seg in path if seg.service == "redis-manual"]
    assert len({seg.span_id for seg in redis}) == 14
    services = self_time_by_service(tree)
    print("\nHotROD critical-path self time by service:")
    for service, ns, share in services:
        print(f"  {service:14} {ns / 1e6:9.3f} ms  {share:6.1%}")
    assert sum(share for _, _, share in services) == pytest.approx(1.0)
    shares = {service: share for service, _, share in services}
    assert shares["mysql"] == pytest.approx(0.41, abs=0.01)
    assert sum(ns for _, ns, _ in services) == tree.duration_ns
