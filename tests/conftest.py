"""Shared test fixtures: paths, a temporary store, a CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
# The shared public corpus lives beside the checkout; tests that need it skip without it.
CORPUS = REPO.parent / "shared" / "corpus"


@pytest.fixture
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip("../shared/corpus is not present")
    return CORPUS


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "test.duckdb"


@pytest.fixture
def store(db_path: Path):
    from tracelens.store import Store

    with Store(db_path) as s:
        yield s


@pytest.fixture
def cli_runner():
    from click.testing import CliRunner

    return CliRunner()
