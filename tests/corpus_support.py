"""The shared public corpus (../shared/corpus), read in place: paths and MANIFEST.tsv counts.

Helpers return empty results when the corpus is absent so that parametrized tests still
collect (and the ``corpus`` fixture skips them)."""

from __future__ import annotations

import csv
from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"
NOT_TRACES = ("MANIFEST.tsv", "README.md")


def corpus_files(subdir: str, pattern: str = "*") -> list[Path]:
    """The trace files of one format folder, sorted."""
    folder = CORPUS / subdir
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(pattern) if p.is_file())


def other_format_files(subdir: str) -> list[Path]:
    """Every corpus trace file outside one format folder (for sniffing tests)."""
    if not CORPUS.is_dir():
        return []
    return sorted(
        p
        for p in CORPUS.rglob("*")
        if p.is_file() and p.name not in NOT_TRACES and p.parent.name != subdir
    )


def manifest_rows() -> list[dict[str, str]]:
    path = CORPUS / "MANIFEST.tsv"
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def manifest_spans(corpus: Path | None = None) -> dict[str, int]:
    """relative path → the span count MANIFEST.tsv gives (``corpus`` is accepted and ignored:
    the corpus fixture and CORPUS name the same folder)."""
    return {row["relative_path"]: int(row["spans"]) for row in manifest_rows()}
