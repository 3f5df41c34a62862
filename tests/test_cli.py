"""The command line, end to end on real files: import, traces, explain, analyze."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_analyze import ENDPOINT_KEYS, FINDING_KEYS

from tracelens.cli import EXIT_FINDINGS, main, parse_time

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "scenarios"
LAZY = FIXTURES / "n_plus_one_lazy_load" / "traces.otlp.json"
HOTROD = "otlp-json/jaeger_hotrod_n_plus_one_full_concurrent.json"


def run(*args: str, input: bytes | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), input=input)
    return result.exit_code, result.output


def _import(db: Path, *paths: str) -> None:
    code, out = run("import", "--db", str(db), *paths)
    assert code == 0, out


def test_import_gz_stdin_and_directory_agree(tmp_path: Path) -> None:
    gz = tmp_path / "lazy.json.gz"
    gz.write_bytes(gzip.compress(LAZY.read_bytes()))
    tree = tmp_path / "tree" / "nested"
    tree.mkdir(parents=True)
    shutil.copy(LAZY, tree / "copy.json")
    counts = []
    for args, stdin in (
        ([str(gz)], None),
        (["-"], LAZY.read_bytes()),
        ([str(tmp_path / "tree")], None),
    ):
        db = tmp_path / f"{len(counts)}.duckdb"
        code, out = run("import", "--db", str(db), *args, input=stdin)
        assert code == 0, out
        counts.append(out.strip().splitlines()[-1].split()[1])
    assert counts == ["115", "115", "115"]


def test_bad_file_exits_1_naming_it_and_keeps_the_store(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    _import(db, str(LAZY))
    bad = tmp_path / "broken.json"
    bad.write_text('{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"')
    code, out = run("import", "--db", str(db), str(bad))
    assert code == 1
    assert "broken.json" in out and out.startswith("error:")
    code, out = run("traces", "--db", str(db), "--format", "json")
    assert code == 0 and sum(t["span_count"] for t in json.loads(out)) == 115


def test_unknown_format_suggests_the_closest(tmp_path: Path) -> None:
    code, out = run(
        "import", "--db", str(tmp_path / "s.duckdb"), "--format", "jaegerjson", str(LAZY)
    )
    assert code == 1 and "did you mean 'jaeger-json'" in out


def test_missing_path_and_missing_trace(tmp_path: Path) -> None:
    code, out = run("import", "--db", str(tmp_path / "s.duckdb"), str(tmp_path / "nope.json"))
    assert code == 1 and "nope.json" in out and "no such file" in out
    _import(tmp_path / "s.duckdb", str(LAZY))
    code, out = run("explain", "--db", str(tmp_path / "s.duckdb"), "--trace-id", "ab" * 16)
    assert code == 1 and "not found" in out


def test_traces_lists_slowest_first(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    _import(db, str(LAZY))
    code, out = run("traces", "--db", str(db), "--format", "json", "--limit", "3")
    assert code == 0, out
    rows = json.loads(out)
    assert len(rows) == 3
    assert [r["duration_ms"] for r in rows] == sorted(
        (r["duration_ms"] for r in rows), reverse=True
    )
    assert {r["service"] for r in rows} == {"orders-api"}


def test_explain_hotrod_json(corpus: Path, tmp_path: Path) -> None:
    db = tmp_path / "h.duckdb"
    _import(db, str(corpus / HOTROD))
    code, out = run("explain", "--db", str(db), "--slowest", "--format", "json")
    assert code == 0, out
    data = json.loads(out)
    assert set(data) == {
        "trace_id",
        "duration_ms",
        "root",
        "span_count",
        "critical_path",
        "services",
        "warnings",
        "findings",
    }
    assert data["root"] == {"service": "frontend", "name": "GET /dispatch"}
    assert data["span_count"] == 40
    on_path = {(s["service"], s["name"]) for s in data["critical_path"]}
    assert {
        ("mysql", "SQL SELECT"),
        ("redis-manual", "GetDriver"),
        ("route", "GET /route"),
    } <= on_path
    shares = {s["service"]: s["share"] for s in data["services"]}
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
    assert max(shares, key=shares.get) == "mysql" and shares["mysql"] == pytest.approx(
        0.41, abs=0.01
    )
    kinds = {(f["kind"], f["count"]) for f in data["findings"]}
    assert ("n_plus_one", 13) in kinds  # 13 GetDriver after one FindDriverIDs: 14 redis calls
    pool = [f for f in data["findings"] if f["kind"] == "pool_wait"]
    assert pool and pool[0]["details"]["max_in_flight"] == 3
    assert not [f for f in data["findings"] if f["kind"] == "lock_contention"]


def test_explain_text_marks_the_critical_path(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    _import(db, str(LAZY))
    code, out = run("explain", "--db", str(db), "--slowest")
    assert code == 0, out
    assert "◆ orders-api" in out and "Critical-path self time" in out and "n_plus_one" in out


def test_explain_needs_exactly_one_selector(tmp_path: Path) -> None:
    code, out = run("explain", "--db", str(tmp_path / "s.duckdb"))
    assert code == 2 and "exactly one of --trace-id ID or --slowest" in out


def test_analyze_json_and_fail_on(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    _import(db, str(LAZY), str(FIXTURES / "n_plus_one_joinedload" / "traces.otlp.json"))
    code, out = run("analyze", "--db", str(db), "--format", "json")
    assert code == 0, out
    data = json.loads(out)
    finding = next(f for f in data["findings"] if f["kind"] == "n_plus_one")
    assert FINDING_KEYS <= set(finding)
    assert finding["service"] == "orders-api" and "customers" in finding["resource"]
    endpoint = data["endpoints"][0]
    assert ENDPOINT_KEYS <= set(endpoint)
    assert run("analyze", "--db", str(db), "--fail-on", "medium")[0] == EXIT_FINDINGS
    assert run("analyze", "--db", str(db), "--fail-on", "critical")[0] == 0


def test_analyze_rejects_a_bad_rules_dir(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    _import(db, str(LAZY))
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "typo.yaml").write_text(
        "id: mine\ndetector: n_plus_one\nseverity: low\n"
        "summary: s\nfix: f\nparmas: {min_repeats: 3}\n"
    )
    code, out = run("analyze", "--db", str(db), "--rules", str(rules))
    assert code == 1 and "typo.yaml" in out and "parmas" in out and "params" in out


def test_since_until_parsing() -> None:
    assert parse_time("2026-11-23T10:00:00Z") == 1_795_428_000 * 10**9
    assert parse_time("1h", now=10_000.0) == 6_400 * 10**9
    assert parse_time(None) is None


def test_fresh_processes_agree_with_in_process_runs(tmp_path: Path) -> None:
    """Each command in a process of its own, where the store starts on the bare DuckDB
    extension and loads the ``duckdb`` package only for Arrow results (analyses, imports)."""
    db = str(tmp_path / "fresh.duckdb")

    def fresh(*args: str) -> str:
        cmd = [sys.executable, "-m", "tracelens", *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    fresh("import", "--db", db, str(LAZY))
    listed = json.loads(fresh("traces", "--db", db, "--format", "json"))
    trace_id = listed[0]["trace_id"]
    for flags in ((), ("--no-findings",)):
        args = ("explain", "--db", db, "--trace-id", trace_id, "--format", "json", *flags)
        out = json.loads(fresh(*args))
        assert out == json.loads(run(*args)[1])
        assert bool(out["findings"]) is not bool(flags)  # the N+1 is found unless told not to
    assert json.loads(fresh("analyze", "--db", db, "--format", "json")) == json.loads(
        run("analyze", "--db", db, "--format", "json")[1]
    )


def test_python_dash_m_runs_the_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tracelens", "--help"], capture_output=True, text=True, check=True
    )
    assert "explain" in proc.stdout and "serve" in proc.stdout
