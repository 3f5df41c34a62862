"""The generated trace fixtures (fixtures/scenarios/*/) are well-formed and say what they plant.

Each scenario holds `traces.otlp.json` (OTLP/JSON TracesData from real instrumented apps),
`expected.json` (what the detectors must and must not report), `facts.json` (the planted cause as
measurable facts with bounds) and `README.md`. These tests parse the traces with plain orjson,
check the OTLP/JSON shape, validate expected.json, recompute every fact from the traces, and
import each file through tracelens' OTLP/JSON importer.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import orjson
import pytest

from tracelens import detectors

REPO = Path(__file__).resolve().parent.parent
SCENARIOS_DIR = REPO / "fixtures" / "scenarios"
GENERATE_DIR = REPO / "fixtures" / "generate"
sys.path.insert(0, str(GENERATE_DIR))

import facts  # noqa: E402  (fixtures/generate/facts.py: stdlib only)

SCENARIOS = sorted(p for p in SCENARIOS_DIR.glob("*/") if (p / "expected.json").exists())
KINDS = set(detectors.KINDS)
FIRE_REQUIRED = {"kind", "service", "resource_contains", "min_count", "trace_ids"}
FIRE_OPTIONAL = {"max_in_flight", "component_contains", "operation"}
MAX_BYTES = 300_000
HEX32 = re.compile(r"[0-9a-f]{32}").fullmatch
HEX16 = re.compile(r"[0-9a-f]{16}").fullmatch
DECIMAL = re.compile(r"[0-9]+").fullmatch

by_name = pytest.mark.parametrize("scenario", SCENARIOS, ids=[p.name for p in SCENARIOS])


def load(path: Path):
    return orjson.loads(path.read_bytes())


def spans_of(data: dict) -> list[tuple[dict, dict]]:
    """(resource attributes, span) for every span."""
    out = []
    for rs in data["resourceSpans"]:
        res = {a["key"]: facts.any_value(a["value"]) for a in rs["resource"]["attributes"]}
        for ss in rs["scopeSpans"]:
            out.extend((res, s) for s in ss["spans"])
    return out


def test_every_planned_scenario_is_present():
    names = {p.name for p in SCENARIOS}
    for planned in (
        "n_plus_one_lazy_load",
        "n_plus_one_joinedload",
        "n_plus_one_concurrent",
        "n_plus_one_interleaved_connect",
        "n_plus_one_http",
        "n_plus_one_cache",
        "n_plus_one_lazy_load_new_semconv",
        "pool_wait_small_pool",
        "pool_wait_ample_pool",
        "lock_contention_hot_row",
        "lock_contention_distinct_rows",
        "lock_contention_app_lock",
        "fanout_parallel_healthy",
        "sequential_calls",
        "tail_latency_slow_path",
        "tail_latency_uniform",
        "slow_query",
        "error_origin",
    ):
        assert planned in names, f"fixtures/scenarios/{planned} is missing"


def test_every_kind_has_positive_and_negative_fixtures():
    fire, silent = set(), set()
    for scenario in SCENARIOS:
        expected = load(scenario / "expected.json")
        fire |= {e["kind"] for e in expected["must_fire"]}
        silent |= set(expected["must_not_fire"])
    assert fire == KINDS, f"no positive fixture for {KINDS - fire}"
    assert silent == KINDS, f"no negative fixture for {KINDS - silent}"


@by_name
def test_traces_are_otlp_json(scenario: Path):
    path = scenario / "traces.otlp.json"
    assert path.stat().st_size <= MAX_BYTES
    data = load(path)
    assert set(data) == {"resourceSpans"}
    pairs = spans_of(data)
    assert pairs
    ids = {(s["traceId"], s["spanId"]) for _, s in pairs}
    assert len(ids) == len(pairs), "duplicate (traceId, spanId)"
    for res, span in pairs:
        where = f"{scenario.name} span {span.get('spanId')}"
        assert res.get("service.name"), where
        assert HEX32(span["traceId"]) and HEX16(span["spanId"]), where
        parent = span.get("parentSpanId")
        if parent:
            assert (span["traceId"], parent) in ids, f"{where}: parent not in its trace"
        start, end = span["startTimeUnixNano"], span["endTimeUnixNano"]
        assert DECIMAL(start) and DECIMAL(end) and int(end) >= int(start), where
        assert span["kind"] in (1, 2, 3, 4, 5), where
        assert span.get("status", {}).get("code", 0) in (0, 1, 2), where


@by_name
def test_every_trace_has_one_root(scenario: Path):
    roots: dict[str, int] = {}
    for _, span in spans_of(load(scenario / "traces.otlp.json")):
        roots.setdefault(span["traceId"], 0)
        roots[span["traceId"]] += not span.get("parentSpanId")
    assert set(roots.values()) == {1}, "every trace starts at exactly one SERVER root"


@by_name
def test_expected_json_shape(scenario: Path):
    expected = load(scenario / "expected.json")
    assert set(expected) == {"description", "must_fire", "must_not_fire"}
    assert isinstance(expected["description"], str) and expected["description"]
    traces = {s["traceId"] for _, s in spans_of(load(scenario / "traces.otlp.json"))}
    services = {r["service.name"] for r, _ in spans_of(load(scenario / "traces.otlp.json"))}
    for entry in expected["must_fire"]:
        assert FIRE_REQUIRED <= set(entry) <= FIRE_REQUIRED | FIRE_OPTIONAL, entry
        assert entry["kind"] in KINDS
        assert entry["service"] in services
        assert isinstance(entry["resource_contains"], str) and entry["resource_contains"]
        assert isinstance(entry["min_count"], int) and entry["min_count"] > 0
        ids = entry["trace_ids"]
        assert ids == "all" or (isinstance(ids, list) and ids and set(ids) <= traces), ids
        assert entry["kind"] not in expected["must_not_fire"]
    assert set(expected["must_not_fire"]) <= KINDS
    assert len(set(expected["must_not_fire"])) == len(expected["must_not_fire"])
    if not expected["must_fire"]:
        assert expected["must_not_fire"], "a negative control must name what stays silent"


@by_name
def test_resource_substrings_occur_in_the_traces(scenario: Path):
    """Each must_fire substring names something really in the spans (statement, URL, name,
    service or peer), so a detector can report it."""
    expected = load(scenario / "expected.json")
    text = (scenario / "traces.otlp.json").read_text(encoding="utf-8")
    for entry in expected["must_fire"]:
        for key in ("resource_contains", "component_contains", "operation"):
            if key in entry:
                assert entry[key] in text, f"{key} {entry[key]!r} is in no span"


@by_name
def test_facts_hold_when_recomputed(scenario: Path):
    recs = facts.records(load(scenario / "traces.otlp.json"))
    claimed = load(scenario / "facts.json")
    assert claimed, "a scenario states at least one fact"
    for fact in claimed:
        value = facts.measure(recs, fact)
        assert value == fact["value"], f"{fact['says']}: file gives {value}, facts.json {fact}"
        assert facts.within(value, fact), f"{fact['says']}: {value} outside the planted bounds"


@by_name
def test_readme_states_each_fact(scenario: Path):
    readme = (scenario / "README.md").read_text(encoding="utf-8")
    expected = load(scenario / "expected.json")
    assert expected["description"] in readme
    for fact in load(scenario / "facts.json"):
        assert f"- {fact['says']}: " in readme


@by_name
def test_imports_through_tracelens(scenario: Path):
    otlp_json = pytest.importorskip("tracelens.importers.otlp_json")
    path = scenario / "traces.otlp.json"
    pairs = spans_of(load(path))
    with open(path, "rb") as stream:
        batches = list(otlp_json.read(stream, str(path)))
    rows = sum(b.num_rows for b in batches)
    assert rows == len(pairs)
    got_traces = {t for b in batches for t in b.column("trace_id").to_pylist()}
    assert got_traces == {s["traceId"] for _, s in pairs}
    got_services = {s for b in batches for s in b.column("service").to_pylist()}
    assert got_services == {r["service.name"] for r, _ in pairs}


# ---------------------------------------------------------------- facts.py itself


def _doc(spans: list[dict], service: str = "svc") -> dict:
    """A tiny TracesData: spans given as dicts with t, s, p, start/end in ms."""
    out = []
    for d in spans:
        span = {
            "traceId": d["t"] * 32,
            "spanId": d["s"] * 16,
            "name": d.get("name", "q"),
            "kind": d.get("kind", 3),
            "startTimeUnixNano": str(int(d["start"] * 1e6)),
            "endTimeUnixNano": str(int(d["end"] * 1e6)),
            "attributes": [
                {"key": k, "value": {"stringValue": v}} for k, v in d.get("attrs", {}).items()
            ],
        }
        if d.get("p"):
            span["parentSpanId"] = d["p"] * 16
        if d.get("error"):
            span["status"] = {"code": 2}
        out.append(span)
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]}
    return {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": out}]}]}


def test_max_concurrency_touching_intervals_do_not_overlap():
    assert facts.max_concurrency([(0, 10), (10, 20), (20, 30)]) == 1
    assert facts.max_concurrency([(0, 10), (5, 20), (6, 7)]) == 3
    assert facts.max_concurrency([]) == 0


def test_percentile_nearest_rank():
    values = list(range(1, 101))
    assert facts.percentile(values, 50) == 50
    assert facts.percentile(values, 99) == 99
    assert facts.percentile([7.0], 95) == 7.0


def test_metrics_on_a_small_trace():
    recs = facts.records(
        _doc(
            [
                {"t": "a", "s": "1", "start": 0, "end": 100, "kind": 2, "name": "root"},
                {"t": "a", "s": "2", "p": "1", "start": 10, "end": 20, "name": "connect"},
                {
                    "t": "a",
                    "s": "3",
                    "p": "1",
                    "start": 20,
                    "end": 30,
                    "attrs": {"db.statement": "SELECT x"},
                },
                {"t": "a", "s": "4", "p": "1", "start": 30, "end": 40, "name": "connect"},
                {
                    "t": "a",
                    "s": "5",
                    "p": "1",
                    "start": 45,
                    "end": 60,
                    "attrs": {"db.query.text": "SELECT x"},
                },
            ]
        )
    )
    sel = {"statement_contains": "SELECT x"}
    assert facts.measure(recs, {"metric": "count_per_trace", "select": sel}) == [2, 2]
    assert facts.measure(recs, {"metric": "same_parent", "select": sel}) is True
    assert facts.measure(recs, {"metric": "overlap_per_trace", "select": sel}) == [1, 1]
    fact = {"metric": "interleaved_per_trace", "select": sel, "select_b": {"name": "connect"}}
    assert facts.measure(recs, fact) == [1, 1]
    gaps = facts.measure(recs, {"metric": "gap_before_ms", "select": sel})
    assert gaps["min"] == 0.0 and gaps["max"] == 5.0  # 45 - end of connect at 40
    assert facts.measure(recs, {"metric": "sum_ms_per_trace", "select": sel}) == [25.0, 25.0]
    assert facts.measure(recs, {"metric": "tail_ratio", "select": {}}) == 1.0  # one root


def test_held_in_flight_tells_serialized_from_overlapping():
    serial = _doc(
        [
            {"t": "a", "s": "1", "start": 0, "end": 10, "name": "lock"},
            {"t": "a", "s": "2", "start": 15, "end": 20, "name": "update"},
            {"t": "b", "s": "3", "start": 0, "end": 20, "name": "lock"},
            {"t": "b", "s": "4", "start": 25, "end": 30, "name": "update"},
        ]
    )
    fact = {"metric": "held_in_flight", "select": {"name": "lock"}, "select_b": {"name": "update"}}
    assert facts.measure(facts.records(serial), fact) == 1
    overlapping = _doc(
        [
            {"t": "a", "s": "1", "start": 0, "end": 10, "name": "lock"},
            {"t": "a", "s": "2", "start": 15, "end": 20, "name": "update"},
            {"t": "b", "s": "3", "start": 0, "end": 11, "name": "lock"},
            {"t": "b", "s": "4", "start": 15, "end": 21, "name": "update"},
        ]
    )
    assert facts.measure(facts.records(overlapping), fact) == 2


def test_error_metrics_find_the_deepest_failure():
    recs = facts.records(
        _doc(
            [
                {"t": "a", "s": "1", "start": 0, "end": 50, "kind": 2, "error": True},
                {"t": "a", "s": "2", "p": "1", "start": 1, "end": 40, "error": True},
                {
                    "t": "a",
                    "s": "3",
                    "p": "2",
                    "start": 2,
                    "end": 30,
                    "name": "insert",
                    "error": True,
                },
                {"t": "a", "s": "4", "p": "2", "start": 31, "end": 32, "name": "other"},
            ]
        )
    )
    assert (
        facts.measure(recs, {"metric": "deepest_error_matches", "select": {"name": "insert"}}) == 1
    )
    assert (
        facts.measure(recs, {"metric": "deepest_error_matches", "select": {"name": "other"}}) == 0
    )
    assert facts.measure(recs, {"metric": "error_chain_len", "select": {"name": "insert"}}) == [
        3,
        3,
    ]


def test_within_bounds_and_key_sets():
    assert facts.within([20, 20], {"min": 20, "max": 20})
    assert not facts.within([19, 20], {"min": 20})
    assert facts.within({"p95": 70.0}, {"field": "p95", "min": 60})
    assert not facts.within({"p95": 50.0}, {"field": "p95", "min": 60})
    assert facts.within(["a", "b"], {"includes": ["a"], "excludes": ["c"]})
    assert not facts.within(["a", "c"], {"includes": ["a"], "excludes": ["c"]})
    assert not facts.within(False, {})
