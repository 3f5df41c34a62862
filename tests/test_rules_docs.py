"""Docs stay honest: every detector kind has a built-in rule, a README section that lists its
parameters, and fixture scenarios where it must fire and where it must stay silent."""

from __future__ import annotations

import json
import re

import pytest
from conftest import FIXTURES, REPO

from tracelens import detectors
from tracelens.rules import load_rules

README = REPO / "rules" / "README.md"


def _sections() -> dict[str, str]:
    text = README.read_text(encoding="utf-8")
    parts = re.split(r"^## +(.+?) *$", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _scenarios() -> list[dict]:
    return [
        json.loads(p.read_text(encoding="utf-8"))
        for p in sorted((FIXTURES / "scenarios").glob("*/expected.json"))
    ]


@pytest.mark.parametrize("kind", detectors.KINDS)
def test_kind_has_a_documented_builtin_rule(kind: str) -> None:
    rules = [r for r in load_rules() if r.kind == kind]
    assert rules, f"no built-in rule in rules/ uses detector {kind!r}"
    sections = _sections()
    for rule in rules:
        assert rule.id in sections, f"rules/README.md has no '## {rule.id}' section"
        body = sections[rule.id]
        missing = [p for p in detectors.get(kind).PARAMS if f"`{p}`" not in body]
        assert not missing, f"'## {rule.id}' does not document params {missing}"


@pytest.mark.parametrize("kind", detectors.KINDS)
def test_kind_has_positive_and_negative_fixtures(kind: str) -> None:
    scenarios = _scenarios()
    positive = [s for s in scenarios if any(e["kind"] == kind for e in s["must_fire"])]
    negative = [s for s in scenarios if kind in s["must_not_fire"]]
    assert positive, f"no fixture scenario where {kind} must fire"
    assert negative, f"no fixture scenario where {kind} must stay silent"


def test_every_rule_section_is_a_rule() -> None:
    ids = {r.id for r in load_rules()}
    prose = {"Your own rules"}
    stale = set(_sections()) - ids - prose
    assert not stale, f"rules/README.md documents rules that do not exist: {sorted(stale)}"
