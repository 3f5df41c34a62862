"""The typed (msgspec Struct) Jaeger JSON path equals the dict path, row for row and error for
error: over the corpus, the repo's fixtures, generated exports and odd hand-made shapes."""

from __future__ import annotations

import importlib.util
import io
import json
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pyarrow as pa
import pytest
from conftest import REPO
from corpus_support import corpus_files
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tracelens import semconv
from tracelens.errors import InputFormatError
from tracelens.importers import jaeger_json
from tracelens.importers import jaeger_structs as js
from tracelens.importers.jsonstream import ArrayStream
from tracelens.model import SPAN_SCHEMA, SpanBatchBuilder
from tracelens.semconv import derive_row

DATA = Path(__file__).parent / "data" / "jaeger"
FIXTURE_FILES = [DATA / "typed_tags.json", DATA / "synthetic_ids.json"]


class Recorder:
    """Stands in for SpanBatchBuilder: keeps the rows ``add_row`` would make, as tuples (the
    pipeline tests below compare against SpanBatchBuilder itself, through Arrow)."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def add_row(self, row: tuple, attributes: dict, resource: dict) -> None:
        self.rows.append(row + derive_row(attributes, resource))


def traces_of(path: Path) -> list[Any]:
    """The trace objects of a Jaeger JSON file of any accepted shape, as orjson reads them."""
    stream = io.BufferedReader(io.BytesIO(path.read_bytes()))
    return [trace for _, trace in jaeger_json._whole_document(stream, str(path))]


def dict_rows(trace: Any) -> list[tuple]:
    recorder = Recorder()
    jaeger_json.add_trace(recorder, trace, "t.json", "data[0]")  # type: ignore[arg-type]
    return recorder.rows


def _gen_module() -> Any:
    path = REPO / "benchmarks" / "gen_jaeger.py"
    spec = importlib.util.spec_from_file_location("gen_jaeger", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gen") / "gen.json"
    _gen_module().generate(path, 1.0, seed=3)
    return path


# --- row for row ---------------------------------------------------------------------------------


def _same_rows(trace: Any) -> bool:
    """The typed path's rows equal the dict path's (True), or it hands the trace over to the
    dict path as orjson's value (False)."""
    (decoded,) = js.decode_traces(orjson.dumps([trace]))
    if type(decoded) is not js.Flattened:
        assert decoded == trace
        return False
    # repr tells 1 from 1.0 from True, and keeps dict order: equal text, equal rows
    assert repr(decoded.rows) == repr(dict_rows(trace))
    return True


@pytest.mark.parametrize("path", corpus_files("jaeger-json"), ids=lambda p: p.stem)
def test_corpus_rows_are_identical(corpus: Path, path: Path) -> None:
    traces = traces_of(path)
    assert traces
    for trace in traces:
        _same_rows(trace)


def test_the_structs_take_most_of_the_corpus(corpus: Path) -> None:
    taken = [all(_same_rows(t) for t in traces_of(p)) for p in corpus_files("jaeger-json")]
    # The others carry fields of the UI's own model (a resolved span inside a reference,
    # a "_comment"), which the Structs refuse rather than skip unchecked.
    assert sum(taken) >= len(taken) - 3


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_fixture_rows_are_identical(path: Path) -> None:
    for trace in traces_of(path):
        assert _same_rows(trace)


def test_generated_rows_are_identical(generated: Path) -> None:
    traces = traces_of(generated)
    assert len(traces) > 20
    for trace in traces:
        assert _same_rows(trace)


# --- the streaming pipeline --------------------------------------------------------------------


def _reference(traces: list[Any]) -> pa.Table:
    """The dict path alone: what the importer produced before the typed path existed."""
    builder = SpanBatchBuilder(10**9)
    for i, trace in enumerate(traces):
        jaeger_json.add_trace(builder, trace, "t.json", f"data[{i}]")
    batch = builder.flush()
    return pa.Table.from_batches([batch] if batch else [], schema=SPAN_SCHEMA)


def _streamed(
    data: bytes, monkeypatch, batch_bytes: int = 2_000, chunk_bytes: int = 4096
) -> tuple[pa.Table, int]:
    """``jaeger_json.read`` with small batches; also how many traces took the typed path."""
    small = partial(ArrayStream, chunk_bytes=chunk_bytes, batch_bytes=batch_bytes)
    monkeypatch.setattr(jaeger_json, "ArrayStream", small)
    monkeypatch.setattr(jaeger_json, "BATCH_SPANS", 100)  # several record batches
    typed = 0
    real = js.trace_rows

    def counting(trace):
        nonlocal typed
        typed += 1
        return real(trace)

    monkeypatch.setattr(js, "trace_rows", counting)
    stream = io.BufferedReader(io.BytesIO(data))
    table = pa.Table.from_batches(list(jaeger_json.read(stream, "t.json")), schema=SPAN_SCHEMA)
    return table, typed


def _all_corpus_and_fixture_traces() -> list[Any]:
    """Every trace, led by the same keys (``traceID``, ``spans``: None when absent, which the
    importer reads as absent) so that the splitter's signature finds them all."""
    files = corpus_files("jaeger-json") + FIXTURE_FILES
    return [
        {"traceID": t.get("traceID"), "spans": t.get("spans"), **t}
        for path in files
        for t in traces_of(path)
    ]


def test_streamed_corpus_equals_the_dict_path(
    corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    traces = _all_corpus_and_fixture_traces()
    table, typed = _streamed(orjson.dumps({"data": traces}), monkeypatch)
    assert table.equals(_reference(traces))
    takes = sum(type(js.decode_traces(orjson.dumps([t]))[0]) is js.Flattened for t in traces)
    assert takes >= len(traces) - 3
    assert typed >= takes - 2  # the first and the last trace are probed, read as dicts


def test_streamed_generated_export_equals_the_dict_path(
    generated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = generated.read_bytes()
    traces = orjson.loads(data)["data"]
    # traces here are ~30 KB: chunks must hold a batch and more for the signature's cut
    table, typed = _streamed(data, monkeypatch, batch_bytes=20_000, chunk_bytes=1 << 20)
    assert table.equals(_reference(traces))
    assert typed == len(traces) - 2  # the first and the last are probed, as single dicts


def test_workers_run_equals_the_dict_path(generated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jaeger_json, "BATCH_SPANS", 100)
    data = generated.read_bytes()
    traces = orjson.loads(data)["data"]
    run = orjson.dumps(traces)[1:-1]
    count, batches = jaeger_json.read_run(run, "t.json")  # type: ignore[misc]
    assert count == len(traces)
    assert len(batches) > 5
    assert pa.Table.from_batches(batches, schema=SPAN_SCHEMA).equals(_reference(traces))


def test_a_small_described_cache_gives_the_same_rows(
    generated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(js, "DESCRIBED", js.DescribedCache(limit=7))  # cleared again and again
    data = generated.read_bytes()
    table, _ = _streamed(data, monkeypatch, batch_bytes=20_000, chunk_bytes=1 << 20)
    assert table.equals(_reference(orjson.loads(data)["data"]))
    assert js.DESCRIBED.size <= 7


# The described cache keys spans by tags text and service alone: the derived columns must read
# nothing else of the resource, however many of the keys they read from attributes it holds.
_SEMCONV_KEYS = [
    *semconv.DB_SYSTEM_KEYS,
    *semconv.DB_STATEMENT_KEYS,
    *semconv.DB_OPERATION_KEYS,
    *semconv.HTTP_METHOD_KEYS,
    *semconv.HTTP_URL_KEYS,
    *semconv.HTTP_STATUS_KEYS,
    *semconv.PEER_KEYS,
    *("rpc.method", "rpc.service", "http.route", "server.address", "net.peer.name", "x"),
]
_semconv_values = st.one_of(
    st.sampled_from(["redis", "postgresql", "SELECT 1", "GET", "/a", "svc", ""]),
    st.integers(0, 600),
    st.none(),
    st.booleans(),
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    attrs=st.dictionaries(st.sampled_from(_SEMCONV_KEYS), _semconv_values, max_size=5),
    extra=st.dictionaries(st.sampled_from(_SEMCONV_KEYS), _semconv_values, min_size=1),
    service=st.one_of(st.sampled_from(["checkout", ""]), st.integers(0, 2), st.none()),
)
def test_derived_columns_read_only_the_service_of_a_resource(
    attrs: Any, extra: Any, service: Any
) -> None:
    resource = {"service.name": service, **extra}
    assert derive_row(attrs, resource) == derive_row(attrs, {"service.name": service})


# --- what the Structs refuse or cannot tell apart goes back to the dict path ---------------------


def _span(**extra: Any) -> dict[str, Any]:
    span = {"traceID": "ab", "spanID": "01", "operationName": "op", "startTime": 5, "duration": 2}
    return {**span, **extra}


@pytest.mark.parametrize(
    ("trace", "attributes"),
    [
        # orjson reads integers beyond 64 bits as floats; msgspec would keep them exact
        (
            {"traceID": "ab", "spans": [_span(tags=[{"key": "n", "type": "x", "value": 10**20}])]},
            '{"n":1e+20}',  # a float, as orjson read it
        ),
        (
            {"traceID": "ab", "spans": [_span(tags=[{"key": "n", "value": 2**63}])]},
            '{"n":9223372036854775808}',
        ),
        # a list where a scalar belongs
        ({"traceID": "ab", "spans": [_span(tags=[{"key": "l", "value": [1, 2]}])]}, '{"l":[1,2]}'),
    ],
)
def test_what_the_structs_refuse_is_read_as_dicts(
    monkeypatch: pytest.MonkeyPatch, trace: Any, attributes: Any
) -> None:
    text = json.dumps([trace]).encode()  # orjson cannot write integers beyond 64 bits
    (structs,) = js.decode_structs(text)  # tags are decoded lazily: refused when flattened
    with pytest.raises(msgspec.ValidationError):
        js.trace_rows(structs)
    assert js.decode_traces(text) == orjson.loads(text)  # handed over as orjson's dict
    filler = json.dumps([{"traceID": f"{i:x}", "spans": [_span()]} for i in range(30)])[1:-1]
    data = b'{"data":[' + filler.encode() + b"," + text[1:-1] + b"," + filler.encode() + b"]}"
    table, typed = _streamed(data, monkeypatch, batch_bytes=300)
    assert table.equals(_reference(orjson.loads(data)["data"]))
    assert attributes in table.column("attributes").to_pylist()
    assert typed > 40


def test_an_inline_empty_process_is_read_as_a_dict() -> None:
    processes = {"p1": {"serviceName": "mapped"}}
    empty = {"traceID": "ab", "processes": processes, "spans": [_span(processID="p1", process={})]}
    other = {**empty, "spans": [_span(processID="p1", process={"x": 1})]}
    (structs,) = js.decode_structs(orjson.dumps([empty]))
    with pytest.raises(js.Ambiguous):
        js.trace_rows(structs)
    assert js.decode_traces(orjson.dumps([empty])) == [empty]
    # {} falls through to the processes map; {"x": 1} is a process without a service
    assert dict_rows(empty)[0][15] == '{"service.name":"mapped"}'  # resource_attributes
    assert dict_rows(other)[0][15] == "{}"


@pytest.mark.parametrize(
    ("spans", "where"),
    [
        ([_span(spanID="")], "data[1].spans[0]: bad id"),
        ([_span(startTime="soon")], "data[1].spans[0]: bad span"),
        ([_span(), _span(duration=[1])], "data[1].spans[1]"),  # refused: read as dicts
        (
            [_span(tags=[{"key": "b", "type": "bool"}, {"key": 1, "value": "x"}])],
            "data[1].spans[0]",
        ),
    ],
)
def test_errors_name_the_same_place_as_the_dict_path(
    monkeypatch: pytest.MonkeyPatch, spans: Any, where: Any
) -> None:
    traces = [{"traceID": "01", "spans": [_span()]}] * 1 + [{"traceID": "ab", "spans": spans}]
    traces += [{"traceID": "02", "spans": [_span()]}] * 20
    with pytest.raises(InputFormatError) as reference:
        _reference(traces)
    with pytest.raises(InputFormatError) as streamed:
        _streamed(orjson.dumps({"data": traces}), monkeypatch, batch_bytes=200)
    assert str(streamed.value) == str(reference.value)
    assert where in str(streamed.value)


# msgspec skips unknown fields and keeps Raw text without checking UTF-8 or number ranges;
# orjson refuses both. Whatever orjson refuses must fail exactly as before the Structs.
_GOOD = b'{"traceID":"%d","spans":[{"spanID":"1","startTime":1,"tags":[]}]}'
_DEEP = b"[" * 1100 + b"]" * 1100  # msgspec gives up (RecursionError) before orjson does
_NOT_JSON = [
    b'{"traceID":"1","spans":[],"x":1e400}',
    b'{"traceID":"1","spans":[],"x":"\xff"}',
    b'{"traceID":"1","spans":[],"\xff":1}',
    b'{"traceID":"1","spans":[],"warnings":[1e999]}',
    b'{"traceID":"1","spans":[{"spanID":"1","startTime":1,"tags":["\xc3"]}]}',
    b'{"traceID":"1","spans":[{"spanID":"1","startTime":1,"tags":[{"key":"a","value":-1e400}]}]}',
    b'{"traceID":"1","spans":[{"spanID":"1","startTime":1,"tags":[{"key":"a","value":1,"z":"\xff"}]}]}',
    b'{"traceID":"1","spans":[{"spanID":"1","startTime":1,"flags":' + _DEEP + b"}]}",
]


@pytest.mark.parametrize("bad", _NOT_JSON, ids=range(len(_NOT_JSON)))
def test_what_orjson_refuses_fails_as_before(monkeypatch: pytest.MonkeyPatch, bad: Any) -> None:
    with pytest.raises(orjson.JSONDecodeError):  # the splitter's signal: not JSON, probe it
        js.decode_traces(b"[" + _GOOD % 1 + b"," + bad + b"]")
    good = [_GOOD % i for i in range(40)]
    data = b'{"data":[' + b",".join(good[:20] + [bad] + good[20:]) + b"]}"
    monkeypatch.setattr(jaeger_json, "BATCH_SPANS", 5)
    with pytest.raises(InputFormatError) as typed:
        _streamed(data, monkeypatch, batch_bytes=300)
    monkeypatch.setattr(js, "decode_traces", orjson.loads)  # the splitter as it was
    with pytest.raises(InputFormatError) as before:
        _streamed(data, monkeypatch, batch_bytes=300)
    assert str(typed.value) == str(before.value)
    assert "invalid JSON" in str(typed.value)


def test_nesting_too_deep_for_msgspec_but_not_for_orjson_is_read_as_dicts() -> None:
    deep = b"[" * 1000 + b"]" * 1000
    text = b'[{"traceID":"1","spans":[{"spanID":"1","startTime":1}],"warnings":' + deep + b"}]"
    with pytest.raises(RecursionError):
        js.decode_structs(text)
    (trace,) = js.decode_traces(text)
    assert type(trace) is dict and trace["spans"] == [{"spanID": "1", "startTime": 1}]


def test_a_repeated_tags_text_is_trusted_only_once_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    # The cache holds tags text that decoded; text that does not decode is never a hit.
    tags = b'[{"key":"k","type":"string","value":"v"}]'
    span = b'{"spanID":"1","startTime":1,"processID":"p","tags":%s}'
    trace = b'{"traceID":"%d","processes":{"p":{"serviceName":"s"}},"spans":[' + span + b"]}"
    good = [trace % (i, tags) for i in range(20)]
    bad = trace % (99, tags.replace(b'"v"', b'"\xff"'))
    data = b'{"data":[' + b",".join(good + [bad] + good) + b"]}"
    with pytest.raises(InputFormatError, match="invalid JSON"):
        _streamed(data, monkeypatch, batch_bytes=300)


# --- odd shapes, generated: whatever the dict path makes of them, the typed path makes too --------

_CANONICAL = ["abcdef0123456789", "0123456789abcdef", "00000000000000ff"]  # used as they are
_IDS = ["", "0", "1", "A", "span-1", " ab ", "ABCDEF0123456789", "0" * 32, *_CANONICAL]
_KEYS = [
    *("span.kind", "error", "otel.status_code", "otel.status_description", "event"),
    *("otel.scope.name", "otel.library.version", "http.method", "db.statement", "k", ""),
]
_TYPES = ["string", "int64", "float64", "bool", "binary", "INT64", "Bool", "other", None, 3]
scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), 2**64 - 1, 2**64, 0, 1, -1]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["true", "False", "12", "-3", "1.5", "AAAwOQ==", "server", "CLIENT", "x"]),
    st.sampled_from(["OK", "error", "CHILD_OF", "FOLLOWS_FROM", "follows_from", "1", "p1"]),
)
value = st.one_of(
    scalar, st.lists(scalar, max_size=2), st.dictionaries(st.sampled_from("ab"), scalar)
)
an_id = st.one_of(st.sampled_from(_IDS), st.integers(-5, 2**70), st.none(), value)
good_id = st.one_of(
    st.sampled_from(_CANONICAL), st.sampled_from(_CANONICAL), st.sampled_from(_IDS[1:])
)
a_time = st.one_of(
    st.integers(0, 2**62), st.floats(0, 1e15), st.sampled_from(["17", "x", ""]), value
)


def _maybe(**fields: Any) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


tag = st.fixed_dictionaries(
    {"key": st.one_of(st.sampled_from(_KEYS), st.integers(0, 3))},
    optional={"type": st.sampled_from(_TYPES), "value": value},
)
tags = st.one_of(st.lists(tag, max_size=4), st.none(), value)
process = st.one_of(
    _maybe(serviceName=st.one_of(st.sampled_from(["svc", ""]), value), tags=tags), value
)
ref = _maybe(
    refType=st.one_of(st.sampled_from(["CHILD_OF", "FOLLOWS_FROM"]), value),
    traceID=an_id,
    spanID=st.one_of(good_id, an_id),
)
span = st.one_of(
    _maybe(
        traceID=an_id,
        spanID=an_id,
        operationName=st.one_of(st.just("op"), value),
        references=st.one_of(st.lists(ref, max_size=3), value),
        startTime=a_time,
        duration=a_time,
        tags=tags,
        logs=st.one_of(st.lists(_maybe(timestamp=a_time, fields=tags), max_size=2), value),
        processID=st.one_of(st.sampled_from(["p1", "p2", "p3"]), value),
        process=process,
        flags=value,
    ),
    value,
)
trace = _maybe(
    traceID=an_id,
    spans=st.one_of(st.lists(span, max_size=4), value),
    processes=st.one_of(st.dictionaries(st.sampled_from(["p1", "p2"]), process, max_size=2), value),
)
# Mostly well-formed traces (so the typed path is really exercised), with odd values mixed in.
good_span = st.fixed_dictionaries(
    {"spanID": good_id, "startTime": st.integers(0, 2**50)},
    optional={
        "traceID": st.sampled_from(_IDS[1:]),
        "references": st.lists(ref, max_size=2),
        "duration": st.integers(0, 10**9),
        "tags": st.lists(tag, max_size=4),
        "logs": st.lists(_maybe(timestamp=a_time, fields=st.lists(tag, max_size=2)), max_size=2),
        "processID": st.sampled_from(["p1", "p2", "p3"]),
        "process": process,
    },
)
good_trace = st.fixed_dictionaries(
    {"traceID": st.sampled_from(_IDS[1:]), "spans": st.lists(good_span, max_size=4)},
    optional={"processes": st.dictionaries(st.sampled_from(["p1", "p2"]), process, max_size=2)},
)


def _outcome(fn: Any) -> Any:
    try:
        return ("rows", repr(fn()))
    except Exception as exc:  # noqa: BLE001 — compared, not swallowed
        return ("error", type(exc).__name__, str(exc))


@settings(
    max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(one=st.one_of(good_trace, trace))
def test_any_trace_reads_the_same_typed_or_as_a_dict(one: Any) -> None:
    text = json.dumps([one]).encode()  # orjson cannot write integers beyond 64 bits
    expected = _outcome(lambda: dict_rows(orjson.loads(text)[0]))
    (decoded,) = js.decode_traces(text)
    if type(decoded) is not js.Flattened:  # the dict path reads it: orjson's value
        event(f"handed to the dict path, which gives: {expected[0]}")
        assert decoded == orjson.loads(text)[0]
        return
    event("flattened by the Structs")
    assert ("rows", repr(decoded.rows)) == expected


@settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(traces=st.lists(st.one_of(good_trace, good_trace, trace), min_size=1, max_size=12))
def test_any_export_streams_like_the_dict_path(traces: Any) -> None:
    data = json.dumps({"data": traces}, separators=(",", ":")).encode()
    expected = _outcome(lambda: _reference(orjson.loads(data)["data"]).to_pylist())

    def streamed():
        stream = ArrayStream(
            io.BytesIO(data), "t.json", b'{"data":[', batch_bytes=64, decode=js.decode_traces
        )
        elements = ((f"data[{i}]", t) for i, t in stream)
        batches = list(jaeger_json._batches(elements, "t.json"))
        return pa.Table.from_batches(batches, schema=SPAN_SCHEMA).to_pylist()

    assert _outcome(streamed) == expected
