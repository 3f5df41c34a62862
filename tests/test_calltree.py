"""Call tree construction: the happy path and every repair a messy trace needs."""

from __future__ import annotations

import sys
import time

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracelens.calltree import (
    PLACEHOLDER_PREFIX,
    PLACEHOLDER_SERVICE,
    TRACE_ROOT_ID,
    CallTree,
    build,
)
from tracelens.critical_path import critical_path
from tracelens.model import Span, SpanKind

TRACE = "ab" * 16
MS = 1_000_000


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
    events: list | None = None,
) -> Span:
    return Span(
        trace_id=TRACE,
        span_id=span_id,
        parent_span_id=parent,
        name=name or f"op-{span_id}",
        kind=int(kind),
        start_ns=start,
        end_ns=end,
        service=service,
        follows_from=follows_from,
        events=events or [],
    )


def assert_is_tree(tree: CallTree) -> None:
    """Every span reachable once from the root, graph and indexes agreeing."""
    assert nx.is_arborescence(tree.graph)
    assert set(tree.graph.nodes) == set(tree.spans)
    walked = [sid for sid, _ in tree.walk()]
    assert sorted(walked) == sorted(tree.spans)
    for parent_id, child_id in tree.graph.edges:
        assert tree.parent(child_id) == parent_id
        assert child_id in tree.children(parent_id)
    assert tree.parent(tree.root) is None


# --- basics ------------------------------------------------------------------------------------


def test_empty_input_raises_value_error():
    with pytest.raises(ValueError, match="no spans"):
        build([])


def test_spans_of_several_traces_are_refused():
    other = span("b", None, 0, 1)
    other.trace_id = "cd" * 16
    with pytest.raises(ValueError, match="2 traces"):
        build([span("a", None, 0, 1), other])


def test_simple_tree_structure_and_queries():
    tree = build(
        [
            span("c2", "r", 50, 60),
            span("r", None, 0, 100),
            span("c1", "r", 10, 40),
            span("g", "c1", 20, 30),
            span("c0", "r", 10, 20),  # same start as c1: ties sort by id
        ]
    )
    assert tree.root == "r"
    assert tree.warnings == []
    assert tree.trace_id == TRACE
    assert tree.children("r") == ["c0", "c1", "c2"]
    assert tree.parent("g") == "c1"
    assert tree.parent("r") is None
    assert tree.depth("g") == 2
    assert list(tree.walk()) == [("r", 0), ("c0", 1), ("c1", 1), ("g", 2), ("c2", 1)]
    assert tree.duration_ns == 100
    assert sorted(tree.graph.edges) == [("c1", "g"), ("r", "c0"), ("r", "c1"), ("r", "c2")]
    assert tree.children("g") == []
    assert_is_tree(tree)


def test_children_returns_a_copy():
    tree = build([span("r", None, 0, 10), span("a", "r", 1, 2)])
    tree.children("r").clear()
    assert tree.children("r") == ["a"]


def test_all_zero_and_empty_parent_ids_mean_root():
    tree = build([span("r", "0000000000000000", 0, 10), span("a", "r", 1, 2)])
    assert tree.root == "r"
    tree = build([span("r", "", 0, 10)])
    assert tree.root == "r"


def test_unknown_span_id_raises_key_error():
    tree = build([span("r", None, 0, 10)])
    with pytest.raises(KeyError):
        tree.parent("nope")


def test_call_tree_from_a_graph_derives_its_indexes():
    spans = {
        s.span_id: s for s in [span("r", None, 0, 10), span("b", "r", 5, 6), span("a", "r", 1, 2)]
    }
    graph = nx.DiGraph([("r", "b"), ("r", "a")])
    tree = CallTree(trace_id=TRACE, spans=spans, graph=graph, root="r", warnings=[])
    assert tree.children("r") == ["a", "b"]
    assert tree.parent("b") == "r"
    assert tree.graph is graph


def test_negative_duration_becomes_zero_length_with_warning():
    tree = build([span("r", None, 0, 10), span("a", "r", 5, 3)])
    assert tree.spans["a"].end_ns == 5
    assert any("end before they start" in w for w in tree.warnings)


# --- missing parents and several roots -------------------------------------------------------


def test_orphans_hang_under_one_placeholder_per_missing_parent():
    tree = build(
        [
            span("r", None, 0, 100),
            span("o1", "x", 10, 20),
            span("o2", "x", 30, 50),
            span("o3", "y", 60, 70),
            span("k", "o1", 12, 18),
        ]
    )
    px, py = PLACEHOLDER_PREFIX + "x", PLACEHOLDER_PREFIX + "y"
    assert tree.parent("o1") == px and tree.parent("o2") == px
    assert tree.parent("o3") == py
    assert tree.parent("k") == "o1"
    holder = tree.spans[px]
    assert (holder.start_ns, holder.end_ns) == (10, 50)  # spans its children
    assert holder.name == "(missing span x)"
    assert holder.service == PLACEHOLDER_SERVICE
    # The real root and two placeholders are three roots: a synthetic trace root above them.
    assert tree.root == TRACE_ROOT_ID
    assert tree.spans[TRACE_ROOT_ID].name == "(trace root)"
    assert tree.children(TRACE_ROOT_ID) == ["r", px, py]
    assert any("3 span(s) name 2 parent(s) not in the trace" in w for w in tree.warnings)
    assert tree.duration_ns == 100  # placeholders do not count
    assert_is_tree(tree)


def test_orphans_without_a_real_root_make_the_placeholder_the_root():
    tree = build([span("a", "gone", 10, 20), span("b", "gone", 15, 40)])
    assert tree.root == PLACEHOLDER_PREFIX + "gone"
    assert tree.children(tree.root) == ["a", "b"]
    assert (tree.spans[tree.root].start_ns, tree.spans[tree.root].end_ns) == (10, 40)
    assert_is_tree(tree)


def test_several_roots_get_a_synthetic_trace_root():
    tree = build([span("r2", None, 50, 80), span("r1", None, 0, 40), span("c", "r1", 5, 10)])
    assert tree.root == TRACE_ROOT_ID
    assert tree.children(TRACE_ROOT_ID) == ["r1", "r2"]
    top = tree.spans[TRACE_ROOT_ID]
    assert (top.start_ns, top.end_ns) == (0, 80)
    assert tree.depth("c") == 2
    assert any("2 root spans" in w for w in tree.warnings)
    assert tree.duration_ns == 80
    assert_is_tree(tree)


# --- duplicates ---------------------------------------------------------------------------------


def test_identical_duplicates_keep_one():
    tree = build([span("r", None, 0, 10), span("a", "r", 1, 5), span("a", "r", 1, 5)])
    assert sorted(tree.spans) == ["a", "r"]
    assert tree.children("r") == ["a"]
    assert any("dropped 1 identical duplicate" in w for w in tree.warnings)


def test_different_duplicates_keep_both_under_a_derived_id():
    later = span("a", "r", 6, 9, name="second")
    earlier = span("a", "r", 1, 5, name="first")
    tree = build([span("r", None, 0, 10), later, earlier, span("kid", "a", 2, 3)])
    assert tree.spans["a"].name == "first"  # the earliest keeps the id
    assert tree.spans["a-dup1"].name == "second"
    assert tree.spans["a-dup1"].span_id == "a-dup1"
    assert tree.children("r") == ["a", "a-dup1"]
    assert tree.parent("kid") == "a"
    (warning,) = [w for w in tree.warnings if "reuse the id" in w]
    assert warning.startswith("1 span(s) reuse the id of a different span") and "a-dup1" in warning
    assert_is_tree(tree)


# --- cycles ------------------------------------------------------------------------------------


def test_cycle_is_broken_at_its_earliest_span_and_attached_to_the_root():
    tree = build(
        [
            span("r", None, 0, 100),
            span("a", "c", 10, 20),
            span("b", "a", 12, 18),
            span("c", "b", 14, 16),
            span("d", "b", 15, 16),
        ]
    )
    assert tree.root == "r"
    assert tree.parent("a") == "r"  # earliest start of the cycle
    assert tree.parent("b") == "a" and tree.parent("c") == "b" and tree.parent("d") == "b"
    (warning,) = [w for w in tree.warnings if "cycle" in w]
    for name in ("a", "b", "c"):
        assert name in warning
    assert_is_tree(tree)


def test_self_parent_is_a_cycle_of_one():
    tree = build([span("r", None, 0, 10), span("s", "s", 2, 3)])
    assert tree.parent("s") == "r"
    assert any("cycle (s -> s)" in w for w in tree.warnings)
    assert_is_tree(tree)


def test_trace_that_is_only_a_cycle_gets_its_earliest_span_as_root():
    tree = build([span("a", "b", 5, 10), span("b", "a", 0, 20)])
    assert tree.root == "b"
    assert tree.parent("a") == "b"
    assert_is_tree(tree)


def test_cycle_beside_several_roots_goes_under_the_trace_root():
    tree = build(
        [
            span("r1", None, 0, 10),
            span("r2", None, 20, 30),
            span("a", "b", 3, 4),
            span("b", "a", 2, 5),
        ]
    )
    assert tree.root == TRACE_ROOT_ID
    assert tree.parent("b") == TRACE_ROOT_ID
    assert_is_tree(tree)


# --- clock skew ----------------------------------------------------------------------------------


def test_server_outside_its_client_of_another_service_is_centered_with_its_subtree():
    evt = {"time_ns": 55, "name": "e", "attributes": {}}
    tree = build(
        [
            span("root", None, 0, 300, service="frontend", kind=SpanKind.SERVER),
            span("cli", "root", 100, 200, service="frontend", kind=SpanKind.CLIENT),
            # 80 long, starts 50 before its client: centering puts it at 110..190 (+60).
            span("srv", "cli", 50, 130, service="backend", kind=SpanKind.SERVER, events=[evt]),
            span("work", "srv", 60, 70, service="backend"),
            span("bcli", "srv", 70, 90, service="backend", kind=SpanKind.CLIENT),
            # The db has its own clock: it fits the *adjusted* backend client, so it stays.
            span("db", "bcli", 132, 148, service="db", kind=SpanKind.SERVER),
        ]
    )
    spans = tree.spans
    assert (spans["srv"].start_ns, spans["srv"].end_ns) == (110, 190)
    assert (spans["work"].start_ns, spans["work"].end_ns) == (120, 130)
    assert (spans["bcli"].start_ns, spans["bcli"].end_ns) == (130, 150)
    assert (spans["db"].start_ns, spans["db"].end_ns) == (132, 148)
    assert spans["srv"].events[0]["time_ns"] == 115
    assert evt["time_ns"] == 55  # the caller's objects are not modified
    assert tree.skew_shifts == {"srv": 60, "work": 60, "bcli": 60}
    (warning,) = [w for w in tree.warnings if "clock skew" in w]
    assert "shifted 3 span(s) in 1 server subtree(s)" in warning
    assert "largest shift +60 ns (backend/srv +60 ns)" in warning


def test_server_longer_than_its_client_only_moves_to_the_client_start():
    tree = build(
        [
            span("cli", None, 100 * MS, 200 * MS, service="a", kind=SpanKind.CLIENT),
            span("srv", "cli", 90 * MS, 250 * MS, service="b", kind=SpanKind.SERVER),
        ]
    )
    assert (tree.spans["srv"].start_ns, tree.spans["srv"].end_ns) == (100 * MS, 260 * MS)
    assert "largest shift +10.000 ms" in tree.warnings[0]


def test_server_after_its_client_ended_moves_back_inside():
    tree = build(
        [
            span("cli", None, 0, 100, service="a", kind=SpanKind.CLIENT),
            span("srv", "cli", 500, 560, service="b", kind=SpanKind.SERVER),
        ]
    )
    assert (tree.spans["srv"].start_ns, tree.spans["srv"].end_ns) == (20, 80)
    assert tree.skew_shifts == {"srv": -480}
    assert "largest shift -480 ns" in tree.warnings[0]
    assert not tree.is_async("srv")


@pytest.mark.parametrize(
    ("parent_service", "parent_kind", "child_service", "child_kind"),
    [
        ("a", SpanKind.CLIENT, "a", SpanKind.SERVER),  # same service: same clock, a real overrun
        ("a", SpanKind.INTERNAL, "b", SpanKind.SERVER),  # not a client call
        ("a", SpanKind.CLIENT, "b", SpanKind.INTERNAL),  # not a server answering
        ("a", SpanKind.PRODUCER, "b", SpanKind.CONSUMER),  # async messaging
    ],
)
def test_spans_that_are_not_a_cross_service_server_are_never_shifted(
    parent_service, parent_kind, child_service, child_kind
):
    tree = build(
        [
            span("p", None, 100, 200, service=parent_service, kind=parent_kind),
            span("c", "p", 150, 260, service=child_service, kind=child_kind),
        ]
    )
    assert (tree.spans["c"].start_ns, tree.spans["c"].end_ns) == (150, 260)
    assert tree.skew_shifts == {}
    assert not any("clock skew" in w for w in tree.warnings)


def test_server_that_fits_its_client_is_left_alone():
    tree = build(
        [
            span("cli", None, 0, 100, service="a", kind=SpanKind.CLIENT),
            span("srv", "cli", 10, 90, service="b", kind=SpanKind.SERVER),
        ]
    )
    assert tree.skew_shifts == {} and tree.warnings == []


# --- async children ------------------------------------------------------------------------------


def test_async_children_stay_in_the_tree_but_do_not_block():
    tree = build(
        [
            span("r", None, 0, 100),
            span("sync", "r", 10, 20),
            span("ff", "r", 30, 40, follows_from=True),
            span("late", "r", 100, 120),  # starts when the parent ends
            span("prod", "r", 50, 55, kind=SpanKind.PRODUCER, service="a"),
            span("cons", "prod", 52, 90, kind=SpanKind.CONSUMER, service="b"),
            span("cons2", "r", 60, 70, kind=SpanKind.CONSUMER),  # consumer, but not of a producer
        ]
    )
    assert tree.children("r") == ["sync", "ff", "prod", "cons2", "late"]
    assert [tree.is_async(c) for c in tree.children("r")] == [False, True, False, False, True]
    assert tree.is_async("cons")
    assert not tree.is_async("r")
    assert tree.blocking_children("r") == ["sync", "prod", "cons2"]
    assert tree.blocking_children("prod") == []
    assert tree.blocking_children("sync") == []


# --- size ----------------------------------------------------------------------------------------


def chain(levels: int) -> list[Span]:
    ids = [f"{i + 1:016x}" for i in range(levels)]
    return [
        span(ids[i], ids[i - 1] if i else None, i, 2 * levels - i, service=f"s{i % 3}")
        for i in range(levels)
    ]


def test_ten_thousand_levels_do_not_recurse():
    limit = sys.getrecursionlimit()
    tree = build(chain(10_000))
    deepest = f"{10_000:016x}"
    assert tree.depth(deepest) == 9_999
    assert sum(1 for _ in tree.walk()) == 10_000
    assert nx.is_arborescence(tree.graph)
    path = critical_path(tree)
    # Down the chain and back up: every span but the deepest appears on both sides.
    assert len(path) == 2 * 10_000 - 1
    assert path[0].start_ns == 0 and path[-1].end_ns == 20_000
    assert sys.getrecursionlimit() == limit


@pytest.mark.slow
def test_hundred_thousand_span_chain_builds_and_walks():
    tree = build(chain(100_000))
    assert tree.depth(f"{100_000:016x}") == 99_999
    assert sum(1 for _ in critical_path(tree)) == 2 * 100_000 - 1


def test_build_of_ten_thousand_spans_is_linear_time():
    # Shared, noisy CI machines: the bound only catches quadratic work (that takes seconds).
    wide = [span("r", None, 0, 10**9)] + [
        span(f"{i + 1:016x}", "r", i * 10, i * 10 + 5, service=f"s{i % 7}") for i in range(10_000)
    ]
    best = min(_timed(build, wide) for _ in range(3))
    assert best < 0.5, f"building 10k spans took {best * 1e3:.0f} ms"


def _timed(fn, arg) -> float:
    start = time.perf_counter()
    fn(arg)
    return time.perf_counter() - start


# --- property: any parent links at all give a tree ---------------------------------------------

_IDS = [f"{i:x}" for i in range(1, 9)]


@st.composite
def messy_traces(draw) -> list[Span]:
    spans = []
    for _ in range(draw(st.integers(1, 12))):
        start = draw(st.integers(0, 100))
        spans.append(
            span(
                draw(st.sampled_from(_IDS)),  # collisions make duplicates
                draw(st.none() | st.sampled_from([*_IDS, "ff"])),  # cycles, orphans
                start,
                start + draw(st.integers(0, 50)),
                service=draw(st.sampled_from("ab")),
                kind=draw(st.sampled_from(list(SpanKind))),
                follows_from=draw(st.booleans()),
            )
        )
    return spans


@settings(max_examples=100, deadline=None)
@given(messy_traces())
def test_any_span_soup_becomes_a_tree_with_a_tiling_critical_path(spans):
    tree = build(spans)
    assert_is_tree(tree)
    real = [sid for sid in tree.spans if not sid.startswith(PLACEHOLDER_PREFIX)]
    assert {sid.split("-dup")[0] for sid in real} == {s.span_id for s in spans}
    path = critical_path(tree)
    root = tree.spans[tree.root]
    if root.end_ns > root.start_ns:
        assert path[0].start_ns == root.start_ns and path[-1].end_ns == root.end_ns
        for before, after in zip(path, path[1:], strict=False):
            assert before.end_ns == after.start_ns
    assert all(seg.end_ns > seg.start_ns for seg in path)


def test_derived_ids_skip_ids_already_taken():
    tree = build(
        [
            span("r", None, 0, 10),
            span("a", "r", 1, 2, name="one"),
            span("a", "r", 3, 4, name="two"),
            span("a", "r", 5, 6, name="three"),
            span("a-dup1", "r", 7, 8, name="taken"),
        ]
    )
    assert tree.spans["a-dup1"].name == "taken"
    assert {tree.spans[i].name for i in ("a", "a-dup2", "a-dup3")} == {"one", "two", "three"}
    assert tree.spans["a"].name == "one"
    assert_is_tree(tree)
