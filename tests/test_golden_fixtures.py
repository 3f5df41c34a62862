"""Golden scenarios: every planted cause is found, and the negative controls stay silent.

Each ``fixtures/scenarios/<name>/`` holds ``traces.otlp.json`` (recorded from real instrumented
apps) and ``expected.json``::

    {"description": …,
     "must_fire": [{"kind", "service", "resource_contains", "min_count", "trace_ids",
                    optional "max_in_flight", "component_contains", "operation"}],
     "must_not_fire": [kind, …]}

``trace_ids`` is ``"all"`` (every trace in the file) or a list: the finding must cite them all.

``TRACELENS_UPDATE_GOLDEN=1`` writes ``analysis.golden.json`` (the analyze JSON) beside each
scenario for review; when that file exists, the findings (kind, service, resource, count) must
stay the same.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES

SCENARIOS = sorted((FIXTURES / "scenarios").glob("*/expected.json"))
UPDATE = os.environ.get("TRACELENS_UPDATE_GOLDEN") == "1"
GOLDEN = "analysis.golden.json"


@cache
def analysis(scenario: Path) -> tuple[dict[str, Any], frozenset[str]]:
    """The analyze JSON of one scenario, imported into a fresh store with the built-in rules,
    and the ids of all traces in the file."""
    import tempfile

    from tracelens import importers
    from tracelens.analyze import analyze
    from tracelens.store import Store

    source = scenario / "traces.otlp.json"
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "golden.duckdb") as store:
        with source.open("rb") as stream:
            store.write(importers.read(stream, str(source)))
        every = frozenset(store.scan(["trace_id"])["trace_id"].to_pylist())
        return analyze(store).to_dict(), every


def _components(finding: dict[str, Any]) -> list[str]:
    return [f"{c['service']} {c['operation']}" for c in finding["details"].get("components", ())]


def fires(finding: dict[str, Any], want: dict[str, Any], every: frozenset[str]) -> bool:
    """Whether ``finding`` is the one a ``must_fire`` entry asks for."""
    cite = want.get("trace_ids") or []
    cite = every if cite == "all" else {t.lower() for t in cite}
    checks = [
        finding["kind"] == want["kind"],
        "service" not in want or finding["service"] == want["service"],
        "operation" not in want or finding["operation"] == want["operation"],
        want.get("resource_contains", "") in (finding["resource"] or ""),
        finding["count"] >= want.get("min_count", 1),
        "max_in_flight" not in want
        or finding["details"].get("max_in_flight") == want["max_in_flight"],
        "component_contains" not in want
        or any(want["component_contains"] in c for c in _components(finding)),
        set(cite) <= set(finding["trace_ids"]),
    ]
    return all(checks)


def _brief(findings: list[dict[str, Any]]) -> str:
    lines = [
        f"  {f['kind']} service={f['service']} operation={f['operation']!r} "
        f"resource={f['resource']!r} count={f['count']} "
        f"in_flight={f['details'].get('max_in_flight')} components={_components(f)} "
        f"traces={len(f['trace_ids'])}"
        for f in findings
    ]
    return "\n".join(lines) or "  (no findings)"


def _key(finding: dict[str, Any]) -> tuple:
    return (finding["kind"], finding["service"], finding["resource"], finding["count"])


@pytest.mark.parametrize("expected_path", SCENARIOS, ids=[p.parent.name for p in SCENARIOS])
def test_planted_causes_are_found(expected_path: Path) -> None:
    expected = json.loads(expected_path.read_text(encoding="utf-8"))
    result, every = analysis(expected_path.parent)
    findings = result["findings"]
    for want in expected["must_fire"]:
        assert any(fires(f, want, every) for f in findings), (
            f"no finding matches {json.dumps(want)}; found:\n{_brief(findings)}"
        )
    silent = set(expected["must_not_fire"])
    wrong = [f for f in findings if f["kind"] in silent]
    assert not wrong, f"must not fire {sorted(silent)}, but:\n{_brief(wrong)}"


@pytest.mark.parametrize("expected_path", SCENARIOS, ids=[p.parent.name for p in SCENARIOS])
def test_golden_analysis_is_stable(expected_path: Path) -> None:
    result, _ = analysis(expected_path.parent)
    golden = expected_path.parent / GOLDEN
    if UPDATE:
        golden.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return
    if not golden.exists():
        pytest.skip(f"no {GOLDEN} (write it with TRACELENS_UPDATE_GOLDEN=1 and review it)")
    recorded = json.loads(golden.read_text(encoding="utf-8"))
    assert sorted(map(_key, result["findings"])) == sorted(map(_key, recorded["findings"]))
