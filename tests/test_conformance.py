"""Conformance over the shared public corpus (../shared/corpus), read in place; skipped without it.

Every valid file imports and its stored span count matches MANIFEST.tsv, except where the store
deduplicates on (trace_id, span_id): those files are listed in STORE_DEDUPED with the reason.
The invalid_* files fail with a message naming the file and the problem, and change nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from corpus_support import manifest_spans

from tracelens.errors import InputFormatError
from tracelens.ingest import import_paths
from tracelens.store import Store

# file -> (spans dropped by the store's (trace_id, span_id) dedupe, why)
STORE_DEDUPED: dict[str, tuple[int, str]] = {
    "otlp-json/jaeger-ui_otlp2jaeger-in_duplicate-span.json": (
        1,
        "the same spanId appears twice in one trace (telemetrygen); stored once",
    ),
    "jaeger-json/jaeger-ui_traceWithMultipleSpansWithTheSameValueInDifferentTags.json": (
        1,
        "one spanID appears twice in the trace; the first row is kept",
    ),
    "jaeger-json/jaeger_uimodel_ui_01.json": (
        1,
        "duplicate spanID (a fixture for Jaeger's dedupe); the first row is kept",
    ),
    "jaeger-proto-json/jaeger_converter_domain_01.json": (
        1,
        "duplicate spanId (the same fixture in jsonpb form); the first row is kept",
    ),
    "zipkin-json/otelcol_zipkinreceiver_sample1.json": (
        8,
        "the same span, identical content, repeated 9 times; stored once",
    ),
    "zipkin-json/zipkin-lens_netflix.json": (
        2,
        "two untimed annotation fragments (no kind, timestamp or endpoint) of client span "
        "6c59056709a0b1e4 share its id; Zipkin merges fragments by id and the store keeps the "
        "complete row (the importer emits the most complete row first)",
    ),
    "zipkin-json/zipkin-lens_smartthings-mobile-web-install.json": (
        84,
        "84 untimed annotation fragments (no kind, no timestamp) share the id of a span whose "
        "complete row is also present; merged the same way",
    ),
}
# invalid file -> a substring the error must contain besides the file name
INVALID_PROBLEMS = {
    "otlp-json/invalid_otlp2parquet_trace_invalid_base64.json": "INVALID_BASE64",
    "otlp-json/invalid_otlp2parquet_trace_invalid_kind.json": "SPAN_KIND_INVALID_TYPE",
    "otlp-json/invalid_otlp2parquet_trace_mixed_encoding.json": "zzz",
}


MANIFEST = list(manifest_spans().items())
VALID = [(p, n) for p, n in MANIFEST if not Path(p).name.startswith("invalid_")]
INVALID = [p for p, _ in MANIFEST if Path(p).name.startswith("invalid_")]


def test_manifest_is_complete(corpus: Path) -> None:
    on_disk = {
        str(p.relative_to(corpus))
        for p in corpus.rglob("*")
        if p.is_file() and p.name not in ("MANIFEST.tsv", "README.md")
    }
    assert on_disk == {p for p, _ in MANIFEST}
    assert set(INVALID) == set(INVALID_PROBLEMS)


@pytest.mark.parametrize(("rel", "spans"), VALID, ids=[p for p, _ in VALID])
def test_valid_file_imports_with_manifest_count(
    corpus: Path, tmp_path: Path, rel: str, spans: int
) -> None:
    with Store(tmp_path / "c.duckdb") as store:
        report = import_paths(store, [str(corpus / rel)])
        dropped, _why = STORE_DEDUPED.get(rel, (0, ""))
        assert report.spans == spans, f"{rel}: read {report.spans} spans, MANIFEST says {spans}"
        assert store.count_spans() == spans - dropped


@pytest.mark.parametrize("rel", INVALID, ids=INVALID)
def test_invalid_file_fails_and_leaves_store_unchanged(
    corpus: Path, tmp_path: Path, rel: str
) -> None:
    good = corpus / "otlp-json" / "jaeger_hotrod_n_plus_one_full_concurrent.json"
    with Store(tmp_path / "c.duckdb") as store:
        import_paths(store, [str(good)])
        before = store.count_spans()
        with pytest.raises(InputFormatError) as info:
            import_paths(store, [str(corpus / rel)])
        message = str(info.value)
        assert Path(rel).name in message
        assert INVALID_PROBLEMS[rel] in message
        assert store.count_spans() == before


def test_whole_corpus_directory_imports_with_keep_going(corpus: Path, tmp_path: Path) -> None:
    with Store(tmp_path / "c.duckdb") as store:
        report = import_paths(store, [str(corpus)], keep_going=True)
        failed = sorted(Path(f.source).name for f in report.failed)
        assert failed == sorted(Path(p).name for p in INVALID)
        assert report.spans == sum(n for _, n in VALID)
        deduped = sum(d for d, _ in STORE_DEDUPED.values())
        assert store.count_spans() <= report.spans - deduped
