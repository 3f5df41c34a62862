"""The Collector file exporter's ``format: proto`` files: length-framed ``TracesData`` messages.

The files are made the way the exporter writes them: each batch the SDK encodes (the same
``ExportTraceServiceRequest`` bytes its OTLP exporters send) behind a 4-byte big-endian length.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pyarrow as pa
import pytest
from receiver_support import export_request, sdk_spans

from tracelens import importers
from tracelens.errors import InputFormatError
from tracelens.importers import otlp_proto_stream

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"
CORPUS_FILES = sorted(p for p in CORPUS.rglob("*") if p.is_file()) if CORPUS.is_dir() else []


def _messages(batches: int = 3, spans: int = 10) -> list[bytes]:
    return [
        export_request(sdk_spans(spans, f"svc-{i}")).SerializeToString() for i in range(batches)
    ]


def _framed(messages: list[bytes]) -> bytes:
    return b"".join(len(m).to_bytes(4, "big") + m for m in messages)


def _read(data: bytes, source: str = "traces.binpb") -> pa.Table:
    stream = io.BufferedReader(io.BytesIO(data))
    return pa.Table.from_batches(list(importers.read(stream, source)))


def test_detected_and_rows_equal_each_message_imported_alone(tmp_path: Path) -> None:
    messages = _messages()
    data = _framed(messages)
    assert importers.detect(data[: 64 * 1024], "traces.binpb").NAME == "otlp-proto-stream"
    streamed = _read(data)
    alone = pa.concat_tables(_read(m) for m in messages)
    assert streamed.num_rows == 30
    assert streamed.equals(alone)
    assert set(streamed.column("service").to_pylist()) == {"svc-0", "svc-1", "svc-2"}
    (tmp_path / "traces.binpb.gz").write_bytes(gzip.compress(data))  # the CLI path, gzipped
    from click.testing import CliRunner

    from tracelens.cli import main

    db = str(tmp_path / "s.duckdb")
    result = CliRunner().invoke(main, ["import", "--db", db, str(tmp_path / "traces.binpb.gz")])
    assert result.exit_code == 0, result.output
    assert "30" in result.output.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("cut", "problem"),
    [(2, "inside a message length"), (40, "file ends inside message 1")],
    ids=["in-length", "in-message"],
)
def test_truncated_file_names_the_message_and_byte(cut: int, problem: str) -> None:
    messages = _messages(2)
    data = _framed(messages)
    first = 4 + len(messages[0])
    with pytest.raises(InputFormatError) as err:
        _read(data[: first + cut])
    assert problem in str(err.value) and f"byte {first}" in str(err.value)


def test_a_bad_span_names_its_message() -> None:
    messages = _messages(2, spans=5)
    bad = bytearray(messages[1])
    trace_id = bytes.fromhex(_read(messages[1]).column("trace_id")[0].as_py())
    at = bad.find(trace_id)
    bad[at - 1] = 15  # the trace_id field now claims 15 bytes: not a 16-byte id
    with pytest.raises(InputFormatError) as err:
        _read(_framed([messages[0], bytes(bad)]))
    assert f"message 1 (byte {4 + len(messages[0])})" in str(err.value)


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.name for p in CORPUS_FILES])
def test_no_corpus_file_is_taken_for_a_framed_stream(path: Path) -> None:
    assert not otlp_proto_stream.sniff(path.read_bytes()[: 64 * 1024], str(path))
