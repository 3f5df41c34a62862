"""OTLP protobuf files: the corpus imports with MANIFEST counts; bad files fail naming the place."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pyarrow as pa
import pytest
from corpus_support import manifest_spans as _manifest
from receiver_support import export_request, sdk_spans

from tracelens import importers
from tracelens.errors import InputFormatError
from tracelens.importers import otlp_proto
from tracelens.importers.sources import Source, open_source

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"
PROTO_FILES = sorted((CORPUS / "otlp-proto").glob("*.pb")) if CORPUS.is_dir() else []
OTHER_FILES = sorted(
    p for p in CORPUS.rglob("*") if p.is_file() and p.parent.name not in ("otlp-proto", "corpus")
) if CORPUS.is_dir() else []  # fmt: skip


def _read(data: bytes, source: str = "mem.pb") -> pa.Table:
    stream = io.BufferedReader(io.BytesIO(data))
    batches = list(importers.read(stream, source))
    return pa.Table.from_batches(batches) if batches else pa.table({})


@pytest.mark.parametrize("path", PROTO_FILES, ids=[p.stem for p in PROTO_FILES])
def test_corpus_file_is_detected_and_imports_with_manifest_count(corpus: Path, path: Path) -> None:
    expected = _manifest(corpus)[f"otlp-proto/{path.name}"]
    source = Source(str(path), path, path.stat().st_size)
    with open_source(source) as stream:
        head = stream.peek(64 * 1024)[: 64 * 1024]  # type: ignore[attr-defined]
        assert importers.detect(head, str(path)).NAME == "otlp-proto"
        table = pa.Table.from_batches(list(importers.read(stream, str(path))))
    assert table.num_rows == expected
    assert all(len(t) == 32 for t in table.column("trace_id").to_pylist())
    assert table.column("service").null_count == 0


def test_loki_trace_keeps_padded_64_bit_trace_id_and_events(corpus: Path) -> None:
    table = _read((corpus / "otlp-proto" / "grafana_tempo_proto_response_loki.pb").read_bytes())
    assert set(table.column("trace_id").to_pylist()) == {"0000000000000000620f03a2253c5e37"}
    assert set(table.column("service").to_pylist()) == {"loki-all"}
    assert sum(e != "[]" for e in table.column("events").to_pylist()) > 0


@pytest.mark.parametrize("path", OTHER_FILES, ids=[p.name for p in OTHER_FILES])
def test_other_formats_are_not_sniffed_as_protobuf(path: Path) -> None:
    assert not otlp_proto.sniff(path.read_bytes()[: 64 * 1024], str(path))


def test_gzipped_file_imports(tmp_path: Path) -> None:
    data = export_request(sdk_spans(12)).SerializeToString()
    path = tmp_path / "spans.pb.gz"
    path.write_bytes(gzip.compress(data))
    with open_source(Source(str(path), path, None)) as stream:
        batches = list(importers.read(stream, str(path)))
    assert sum(b.num_rows for b in batches) == 12


def test_large_file_is_read_in_chunks_with_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    request = export_request(sdk_spans(30))
    for service in ("a", "b", "c"):  # several resource_spans records
        extra = export_request(sdk_spans(10, service))
        request.resource_spans.extend(extra.resource_spans)
    data = request.SerializeToString()
    whole = _read(data)
    monkeypatch.setattr(otlp_proto, "CHUNK_BYTES", 64)  # one record per chunk
    chunked = _read(data)
    assert chunked.num_rows == whole.num_rows == 60
    assert chunked.equals(whole)


def test_invalid_span_fails_naming_the_record_across_chunks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    request = export_request(sdk_spans(5, "a"))
    bad = export_request(sdk_spans(5, "b"))
    bad.resource_spans[0].scope_spans[0].spans[2].span_id = b"\x01\x02"
    request.resource_spans.extend(bad.resource_spans)
    monkeypatch.setattr(otlp_proto, "CHUNK_BYTES", 64)
    with pytest.raises(InputFormatError) as err:
        _read(request.SerializeToString(), "bad.pb")
    assert err.value.where == "resource_spans[1].scope_spans[0].spans[2]"
    assert "span_id must be 8 bytes, got 2" in err.value.problem


def test_truncated_file_fails_naming_the_offset() -> None:
    data = export_request(sdk_spans(5)).SerializeToString()
    stream = io.BufferedReader(io.BytesIO(data[:-10]))
    with pytest.raises(InputFormatError, match="truncated") as err:
        list(otlp_proto.read(stream, "cut.pb"))
    assert err.value.where == "byte 0"


def test_unknown_top_level_fields_are_skipped() -> None:
    data = export_request(sdk_spans(3)).SerializeToString()
    extra = b"\x10\x05" + b"\x1d\x00\x00\x00\x00"  # field 2 varint, field 3 fixed32
    table = pa.Table.from_batches(
        list(otlp_proto.read(io.BufferedReader(io.BytesIO(extra + data)), "x"))
    )
    assert table.num_rows == 3


def test_json_with_a_leading_newline_is_not_protobuf() -> None:
    assert not otlp_proto.sniff(b'\n{"resourceSpans": []}', "x.json")
