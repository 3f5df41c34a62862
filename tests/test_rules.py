"""Rule files: strict validation with file, line and key; matchers; built-ins like user rules."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import polars as pl
import pytest

from tracelens import detectors
from tracelens.errors import RuleError
from tracelens.model import Span
from tracelens.rules import MATCH_ALL, builtin_dir, load_dir, load_file, load_rules, parse_matcher

DATA = Path(__file__).parent / "data" / "rules"
BAD = sorted((DATA / "bad").glob("*.yaml"))


def _expected(path: Path) -> tuple[int, str]:
    """Each bad file says on its first line: ``# error: <line> <message fragment>``."""
    m = re.match(r"# error: (\d+) (.+)", path.read_text().splitlines()[0])
    assert m, f"{path} lacks its '# error: LINE TEXT' header"
    return int(m.group(1)), m.group(2)


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_rule_file_names_file_line_and_problem(path: Path) -> None:
    line, fragment = _expected(path)
    with pytest.raises(RuleError) as err:
        load_file(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}:"), message
    assert fragment in message


def test_builtin_rules_load_and_cover_every_kind() -> None:
    rules = load_rules()
    assert {r.kind for r in rules} == set(detectors.KINDS)
    assert len({r.id for r in rules}) == len(rules)
    for rule in rules:
        assert rule.source.startswith(str(builtin_dir()))
        assert set(rule.params) == set(detectors.get(rule.kind).PARAMS)


def test_builtins_load_through_the_user_path() -> None:
    """The built-in pack passed as a user directory gives the same rules."""
    as_user = load_rules([builtin_dir()], builtins=False)
    assert [(r.id, r.params, r.match) for r in as_user] == [
        (r.id, r.params, r.match) for r in load_rules()
    ]


def test_builtins_found_in_the_wheel_layout(tmp_path: Path) -> None:
    """Installed, the pack is ``tracelens/_rules`` (pyproject force-include), not ``../rules``."""
    import shutil
    import subprocess
    import sys

    from conftest import REPO

    shutil.copytree(
        REPO / "tracelens", tmp_path / "tracelens", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(REPO / "rules", tmp_path / "tracelens" / "_rules")
    code = "from tracelens import rules; print(rules.builtin_dir(), len(rules.load_rules()))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path)},
        check=True,
    ).stdout
    assert out.split() == [str(tmp_path / "tracelens" / "_rules"), str(len(load_rules()))]


def test_user_rules_override_disable_and_add() -> None:
    builtin = {r.id: r for r in load_rules()}
    rules = {r.id: r for r in load_rules([DATA / "user"])}
    assert rules["slow-query"].severity == "high"
    assert rules["slow-query"].params["threshold_ms"] == 50.0
    assert isinstance(rules["slow-query"].params["threshold_ms"], float)
    assert rules["slow-query"].params["min_samples"] == builtin["slow-query"].params["min_samples"]
    assert "sequential-calls" not in rules
    assert rules["checkout-errors"].kind == "error_origin"
    assert set(rules) == (set(builtin) - {"sequential-calls"}) | {"checkout-errors"}


def test_duplicate_rule_ids_name_both_places() -> None:
    with pytest.raises(RuleError) as err:
        load_dir(DATA / "dup")
    message = str(err.value)
    assert f"{DATA / 'dup' / 'b.yaml'}:7: duplicate rule id 'my-slow-query'" in message
    assert f"{DATA / 'dup' / 'a.yaml'}:1" in message


def test_same_user_rule_in_two_dirs_is_a_duplicate(tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "r.yaml").write_text(
            "id: mine\ndetector: error_origin\nseverity: low\nsummary: s\nfix: f\n"
        )
    with pytest.raises(RuleError, match="duplicate rule id 'mine'"):
        load_rules([tmp_path / "one", tmp_path / "two"])


@pytest.mark.parametrize("setup", ["missing", "empty"])
def test_rules_dir_must_exist_and_hold_rules(tmp_path: Path, setup: str) -> None:
    target = tmp_path / "rules"
    if setup == "empty":
        target.mkdir()
    with pytest.raises(RuleError, match=re.escape(str(target))):
        load_rules([target])


def test_unknown_detector_kind_suggests() -> None:
    with pytest.raises(RuleError, match="did you mean 'n_plus_one'"):
        detectors.get("n_plus_on")


# --- matchers ---------------------------------------------------------------------------------

SPANS = [
    Span(
        "t1",
        "a1",
        None,
        "GET /orders",
        2,
        0,
        100,
        "frontend",
        attributes={"http.request.method": "GET", "retry": False, "attempt": 1},
    ),
    Span(
        "t1",
        "a2",
        "a1",
        "SELECT shop",
        3,
        10,
        50,
        "orders",
        db_system="postgresql",
        db_fingerprint="SELECT * FROM orders WHERE id = ?",
        peer="db1",
        attributes={"db.system": "postgresql", "attempt": 2.0},
    ),
    Span(
        "t1",
        "a3",
        "a1",
        "POST",
        3,
        50,
        90,
        "checkout",
        status_code=2,
        peer="payments",
        http_url="http://payments/charge",
        attributes={"http.request.method": "POST", "retry": True},
    ),
    Span(
        "t2",
        "b1",
        None,
        "GET",
        3,
        0,
        5,
        "redis-client",
        db_system="Redis",
        db_fingerprint="GET ?",
        peer="cache",
    ),
    Span("t2", "b2", "b1", "render", 1, 1, 4, "frontend"),
]

MATCHERS = {
    "all": None,
    "kind": {"kind": "CLIENT"},
    "kinds": {"kind": ["server", "CLIENT"]},
    "service": {"service": ["orders", "checkout"]},
    "name": {"name": "^(GET|POST)"},
    "db_system": {"db_system": "redis"},
    "peer": {"peer": "^pay"},
    "fingerprint": {"fingerprint": "(?i)from orders"},
    "error": {"error": True},
    "no_error": {"error": False},
    "has": {"has": ["db_fingerprint", "peer"]},
    "attr_regex": {"attributes": {"http.request.method": "^P"}},
    "attr_bool": {"attributes": {"retry": False}},
    "attr_number": {"attributes": {"attempt": 2}},
    "combined": {"kind": "CLIENT", "attributes": {"http.request.method": "POST"}, "error": True},
}


def _frame(spans: list[Span]) -> pl.DataFrame:
    rows = [
        {
            "span_id": s.span_id,
            "name": s.name,
            "kind": s.kind,
            "service": s.service,
            "status_code": s.status_code,
            "db_system": s.db_system,
            "db_fingerprint": s.db_fingerprint,
            "peer": s.peer,
            "http_url": s.http_url,
            "parent_span_id": s.parent_span_id,
            "attributes": orjson.dumps(s.attributes).decode(),
        }
        for s in spans
    ]
    return pl.DataFrame(rows, schema_overrides={"kind": pl.Int8, "status_code": pl.Int8})


def _matcher(spec: dict | None):
    import yaml

    from tracelens.rules import _LineLoader

    raw = yaml.load(yaml.safe_dump({"match": spec}), Loader=_LineLoader)["match"]
    return parse_matcher(Path("test.yaml"), raw, 1)


@pytest.mark.parametrize("name", list(MATCHERS))
def test_matches_and_filter_agree(name: str) -> None:
    matcher = _matcher(MATCHERS[name])
    one_by_one = [s.span_id for s in SPANS if matcher.matches(s)]
    vectorized = matcher.filter(_frame(SPANS))["span_id"].to_list()
    assert one_by_one == vectorized
    if name != "all":
        assert 0 < len(one_by_one) < len(SPANS), "a matcher test must accept some, not all"
    assert matcher.columns <= set(_frame(SPANS).columns)


def test_empty_match_is_match_all() -> None:
    assert _matcher(None) is MATCH_ALL
    assert not MATCH_ALL.uses_attributes
    assert _matcher(MATCHERS["attr_bool"]).uses_attributes
