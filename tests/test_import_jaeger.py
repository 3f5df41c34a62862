"""Jaeger JSON and Jaeger proto-JSON importers, and the streaming array splitter under them."""

from __future__ import annotations

import gzip
import importlib.util
import io
from functools import partial
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from conftest import REPO
from corpus_support import corpus_files, manifest_spans
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracelens import ids
from tracelens.errors import InputFormatError
from tracelens.importers import jaeger_json, jaeger_proto_json, jsonstream
from tracelens.importers.jaeger_proto_json import go_duration_ns, rfc3339_ns
from tracelens.importers.jsonstream import ArrayStream

DATA = Path(__file__).parent / "data" / "jaeger"
MODULES = {"jaeger-json": jaeger_json, "jaeger-proto-json": jaeger_proto_json}


def read_bytes(module, data: bytes, source: str = "test.json") -> pa.Table:
    stream = io.BufferedReader(io.BytesIO(data))
    return pa.Table.from_batches(list(module.read(stream, source)), schema=_schema())


def read_file(module, path: Path) -> pa.Table:
    return read_bytes(module, path.read_bytes(), str(path))


def _schema() -> pa.Schema:
    from tracelens.model import SPAN_SCHEMA

    return SPAN_SCHEMA


def rows_by_name(table: pa.Table) -> dict[str, dict]:
    out = {}
    for row in table.to_pylist():
        for key in ("attributes", "resource_attributes", "events", "links"):
            row[key] = orjson.loads(row[key])
        out[row["name"]] = row
    return out


# --- the public corpus --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "path"),
    [(fmt, p) for fmt in MODULES for p in corpus_files(fmt)],
    ids=lambda v: v.stem if isinstance(v, Path) else v,
)
def test_corpus_file_imports_every_span(corpus, fmt, path):
    table = read_file(MODULES[fmt], path)
    expected = manifest_spans()[f"{fmt}/{path.name}"]
    assert table.num_rows == expected
    assert all(len(t) == 32 for t in table.column("trace_id").to_pylist())
    assert all(len(s) == 16 for s in table.column("span_id").to_pylist())
    assert None not in table.column("service").to_pylist()


def test_sniff_tells_the_formats_apart(corpus):
    files = sorted(p for p in corpus.rglob("*") if p.is_file() and p.suffix != ".md")
    files = [p for p in files if p.name != "MANIFEST.tsv"]
    assert files
    for path in files:
        head = path.read_bytes()[: 64 * 1024]
        fmt = path.parent.name
        assert jaeger_json.sniff(head, path.name) == (fmt == "jaeger-json"), path
        assert jaeger_proto_json.sniff(head, path.name) == (fmt == "jaeger-proto-json"), path


def test_registry_detects_the_jaeger_corpus(corpus):
    from tracelens import importers

    try:
        importers.importers()
    except ImportError as exc:
        pytest.skip(f"not every importer module exists yet: {exc}")
    for fmt in MODULES:
        for path in corpus_files(fmt):
            assert importers.detect(path.read_bytes()[: 64 * 1024], path.name).NAME == fmt, path


@pytest.mark.parametrize("name", ["typed_tags.json", "synthetic_ids.json"])
def test_gzip_and_byte_order_mark(tmp_path, name):
    from tracelens.importers.sources import expand, open_source

    path = tmp_path / (name + ".gz")
    path.write_bytes(gzip.compress(b"\xef\xbb\xbf" + (DATA / name).read_bytes()))
    with open_source(expand([str(path)])[0]) as stream:
        rows = sum(batch.num_rows for batch in jaeger_json.read(stream, str(path)))
    assert rows == read_file(jaeger_json, DATA / name).num_rows > 0


def test_distinct_synthetic_ids_stay_distinct(corpus):
    # "span-1" … "span-7" are valid (lossy) URL-safe base64 for ids.normalize; the UI model
    # has hex ids only, so they must be hashed, not decoded into one id.
    path = corpus / "jaeger-json" / "jaeger-ui_TraceGraph_testTrace.json"
    table = read_file(jaeger_json, path)
    raw = orjson.loads(path.read_bytes())["spans"]
    assert len(set(table.column("span_id").to_pylist())) == len({s["spanID"] for s in raw}) == 11
    rows = table.to_pylist()  # one row per span, in file order
    index = {s["spanID"]: i for i, s in enumerate(raw)}
    for row, span in zip(rows, raw, strict=True):
        parent = span["references"][0]["spanID"] if span["references"] else None
        assert row["parent_span_id"] == (rows[index[parent]]["span_id"] if parent else None)


def test_duplicate_span_ids_are_all_imported_and_the_store_keeps_one(corpus, store):
    path = corpus / "jaeger-json" / "jaeger_uimodel_ui_01.json"
    stream = io.BufferedReader(io.BytesIO(path.read_bytes()))
    stats = store.write(jaeger_json.read(stream, str(path)))
    assert (stats.received, stats.inserted) == (5, 4)


# --- jaeger-json semantics ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def typed() -> dict[str, dict]:
    return rows_by_name(read_file(jaeger_json, DATA / "typed_tags.json"))


def test_tags_keep_their_types(typed):
    attrs = typed["GET /orders"]["attributes"]
    assert attrs["http.method"] == "GET"
    assert attrs["http.status_code"] == 500
    assert attrs["big"] == 9223372036854775222  # int64 sent as a string, kept exact
    assert attrs["ratio"] == 0.25 and isinstance(attrs["whole"], float)
    assert attrs["cached"] is False
    assert attrs["blob"] == "AAAwOQ=="  # bytes, stored base64 by the model
    assert typed["GET /orders"]["http_status"] == 500


def test_error_tag_and_otel_status_become_the_status(typed):
    root = typed["GET /orders"]
    assert root["status_code"] == 2 and root["status_message"] == "boom"
    assert "error" not in root["attributes"]
    assert "otel.status_description" not in root["attributes"]
    assert typed["publish"]["status_code"] == 1
    assert "otel.status_code" not in typed["publish"]["attributes"]
    other = typed["orphan-of-other-trace"]
    assert other["status_code"] == 0 and other["attributes"]["error"] is False


def test_span_kind_tag_becomes_the_kind(typed):
    kinds = {name: row["kind"] for name, row in typed.items()}
    assert kinds == {"GET /orders": 2, "publish": 4, "consume": 5, "orphan-of-other-trace": 0}
    assert all("span.kind" not in row["attributes"] for row in typed.values())
    assert typed["publish"]["scope_name"] == "io.kafka"


def test_process_tags_become_the_resource(typed):
    root = typed["GET /orders"]
    assert root["resource_attributes"] == {
        "service.name": "orders",
        "hostname": "orders-1",
        "pid": 42,
    }
    assert root["service"] == "orders" and typed["publish"]["service"] == "queue"


def test_times_are_nanoseconds_and_logs_are_events(typed):
    root = typed["GET /orders"]
    assert root["start_ns"] == 1700000000000001000
    assert root["duration_ns"] == 2_500_000
    assert root["trace_id"] == "000000000000000000000000000000aa"  # 64-bit id left-padded
    assert root["events"] == [
        {"time_ns": 1700000000000100000, "name": "retry", "attributes": {"attempt": 2}},
        {
            "time_ns": 1700000000000200000,
            "name": "log",
            "attributes": {"message": "no event field"},
        },
    ]


def test_references_make_parent_follows_from_and_links(typed):
    publish = typed["publish"]
    assert publish["parent_span_id"] == "00000000000000a1" and publish["follows_from"] is True
    consume = typed["consume"]  # a CHILD_OF in the same trace beats an earlier FOLLOWS_FROM
    assert consume["parent_span_id"] == "00000000000000a1" and consume["follows_from"] is False
    assert [
        (link["trace_id"][-2:], link["span_id"][-2:], link["attributes"])
        for link in consume["links"]
    ] == [
        ("ff", "f1", {"opentracing.ref_type": "child_of"}),
        ("aa", "a2", {"opentracing.ref_type": "follows_from"}),
    ]
    other = typed["orphan-of-other-trace"]  # a reference into another trace is never the parent
    assert other["parent_span_id"] is None
    assert other["links"][0]["span_id"] == "00000000000000f2"


def test_synthetic_ids_are_hashed_stably():
    first = rows_by_name(read_file(jaeger_json, DATA / "synthetic_ids.json"))
    again = rows_by_name(read_file(jaeger_json, DATA / "synthetic_ids.json"))
    assert first["root"]["span_id"] == ids.span_id("A", lenient=True) == again["root"]["span_id"]
    assert first["child"]["parent_span_id"] == first["root"]["span_id"]
    assert first["root"]["trace_id"] == again["root"]["trace_id"] != "0" * 32
    assert first["child"]["start_ns"] == 10_000  # relative timestamps stay relative


# --- jaeger-proto-json semantics ----------------------------------------------------------------


@pytest.fixture(scope="module")
def proto() -> dict[str, dict]:
    return rows_by_name(read_file(jaeger_proto_json, DATA / "proto_typed.json"))


def test_proto_tags_vtypes_and_big_int(proto):
    attrs = proto["root"]["attributes"]
    assert attrs["big"] == 9223372036854775222
    assert attrs["quoted"] == -42
    assert attrs["zero_bool"] is False  # jsonpb omits a false vBool
    assert attrs["flag"] is True  # vType as the enum number
    assert attrs["ratio"] == 72.5 and attrs["blob"] == "AAAwOQ=="
    assert proto["root"]["kind"] == 3 and proto["root"]["status_code"] == 2
    assert proto["root"]["resource_attributes"] == {"service.name": "api", "ip": 167772161}


def test_proto_times_are_exact(proto):
    root = proto["root"]
    assert root["start_ns"] == 1485467191_123456789  # 16:46:31.123456789-05:00
    assert root["duration_ns"] == 1_500_000
    assert root["events"] == [
        {"time_ns": 1485467191_500000000, "name": "cache miss", "attributes": {}}
    ]
    assert proto["follower"]["duration_ns"] == 123_000_000_000
    assert proto["child-of-default"]["start_ns"] == 1485467191_000000001
    assert proto["child-of-default"]["duration_ns"] == 0


def test_proto_references_and_process_map(proto):
    assert proto["root"]["trace_id"] == "00000000000000000000000000000012"
    follower = proto["follower"]
    assert follower["parent_span_id"] == "0000000000000001" and follower["follows_from"] is True
    assert follower["service"] == "worker"  # from processMap, after the spans array
    assert follower["resource_attributes"]["zone"] == "eu"
    child = proto["child-of-default"]  # refType omitted = CHILD_OF (the enum's zero)
    assert child["parent_span_id"] == "0000000000000001" and child["follows_from"] is False


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2017-01-26T16:46:31.639875139-05:00", 1485467191_639875139),
        ("2017-01-26T21:46:31.639875Z", 1485467191_639875000),
        ("2017-01-26T21:46:31Z", 1485467191_000000000),
        ("2017-01-27T03:16:31.1+05:30", 1485467191_100000000),
        ("1969-12-31T23:59:59.999999999Z", -1),
        ("2262-04-11T23:47:16.854775807Z", 2**63 - 1),
    ],
)
def test_rfc3339_exact(text, ns):
    assert rfc3339_ns(text) == ns


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("100000ns", 100_000),
        ("1.5ms", 1_500_000),
        ("2m3s", 123_000_000_000),
        ("0", 0),
        ("-1h", -3_600_000_000_000),
        ("3\u00b5s", 3_000),
        ("0.000005s", 5_000),
        ("1h2m3.5s", 3_723_500_000_000),
    ],
)
def test_go_durations(text, ns):
    assert go_duration_ns(text) == ns


@pytest.mark.parametrize("bad", ["", "5", "1.5", "ms", "1x", "1s2"])
def test_bad_go_durations_fail(bad):
    with pytest.raises(ValueError):
        go_duration_ns(bad)


@pytest.mark.parametrize("bad", ["2017-01-26", "2017-13-01T00:00:00Z", "2017-01-26T21:46:31"])
def test_bad_timestamps_fail(bad):
    with pytest.raises(ValueError):
        rfc3339_ns(bad)


# --- errors name the file and the place ---------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        (b'{"data":[{"traceID":"1","spans":[]} {"traceID":"2","spans":[]}]}', "byte 36"),
        (b'{"data":[{"traceID":"1","spans":[]},]}', "byte 36"),
        (b'{"data":[{"traceID":"1","spans":[}]}', "byte 33"),
        (b'{"data":[{"traceID":"1","spans":[]}', "byte 35"),
        (b'{"data":[{"traceID":"1","spans":[]}], "x": }', "byte"),
        (b'{"data":[{"traceID":"1","spans":[{"startTime":1}]}]}', "data[0].spans[0]: missing"),
        (b'{"traceID": "1", "spans": [\n  {"spanID": "1",, }\n]}', "line 2, column 18"),
    ],
)
def test_malformed_input_names_file_and_place(doc, where):
    with pytest.raises(InputFormatError) as info:
        read_bytes(jaeger_json, doc, "broken.json")
    assert info.value.source == "broken.json"
    assert where in str(info.value)


def test_proto_bad_timestamp_names_the_span():
    doc = (
        b'{"spans":[{"traceId":"AAAAAAAAAAAAAAAAAAAAEg==","spanId":"AAAAAAAAAAE=",'
        b'"operationName":"x","startTime":"yesterday"}]}'
    )
    with pytest.raises(InputFormatError, match=r"p\.json at spans\[0\]: timestamp"):
        read_bytes(jaeger_proto_json, doc, "p.json")


# --- the streaming splitter ---------------------------------------------------------------------

TRICKY = ['{"a":"}"}', "\\", '\\"', '"', "{[", "]}", ',{"traceID":"x","spans":', "\u00e9", "\u2603"]
leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(TRICKY),
    st.text(max_size=12),
)
value = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["traceID", "spans", "k", "v\\", '"q"']), inner, max_size=4
        )
    ),
    max_leaves=12,
)
trace_like = st.fixed_dictionaries(
    {"traceID": st.sampled_from(["1", "ab", "x"]), "spans": st.lists(value, max_size=3)},
    optional={"processes": value},
)
element = st.one_of(
    trace_like, st.dictionaries(st.text(max_size=4), value, max_size=3), st.lists(value, max_size=3)
)


def split(doc: bytes, prefix: bytes, **kwargs) -> tuple[list, object]:
    stream = ArrayStream(io.BytesIO(doc), "t.json", prefix, **kwargs)
    values = [v for _, v in stream]
    return values, stream.tail


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    elements=st.lists(element, max_size=8),
    chunk=st.sampled_from([1, 2, 3, 7, 64, 4096]),
    batch=st.sampled_from([1, 16, 200, 1 << 20]),
    indent=st.booleans(),
)
def test_splitter_equals_orjson(elements, chunk, batch, indent):
    option = orjson.OPT_INDENT_2 if indent else 0
    doc = orjson.dumps({"data": elements, "total": 3}, option=option)
    prefix = doc[: doc.index(b"[") + 1]
    values, tail = split(doc, prefix, chunk_bytes=chunk, batch_bytes=batch)
    assert values == orjson.loads(doc)["data"]
    assert tail == {"data": [], "total": 3}


def test_splitter_survives_signature_lookalikes():
    inner = [{"traceID": "i", "spans": []}, {"traceID": "j", "spans": ["},{"]}]
    elements = [{"traceID": str(i), "spans": inner * 3} for i in range(50)]
    doc = orjson.dumps({"data": elements})
    values, _ = split(doc, b'{"data":[', chunk_bytes=100, batch_bytes=300)
    assert values == elements


def test_signature_tells_jsonpb_spans_from_their_references():
    # References start with traceId, spanId like spans do; the third key tells them apart, so
    # no batch guess fails (a failed guess costs a wasted parse).
    ref = {"traceId": "AAAAAAAAAAAAAAAAAAAAAQ==", "spanId": "AAAAAAAAAAE="}
    spans = [{**ref, "operationName": f"op{i}", "references": [ref, ref]} for i in range(300)]
    stream = ArrayStream(io.BytesIO(orjson.dumps({"spans": spans})), "s.json", b'{"spans":[')
    assert [v for _, v in stream] == spans
    assert stream._failures == 0


@pytest.mark.parametrize("chunk", [1, 5, 1 << 20])
def test_splitter_straddles_chunks_with_escapes_and_unicode(chunk):
    nasty = 'q\\"}{][,\\\\"caf\u00e9\u2603'
    elements = [{"traceID": nasty * i, "spans": [{"k": nasty}] * i} for i in range(40)]
    doc = orjson.dumps({"data": elements})
    for guess in (True, False):
        values, _ = split(doc, b'{"data":[', chunk_bytes=chunk, batch_bytes=64, guess=guess)
        assert values == elements


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        (b'{"data":[1]}', "expected an object"),
        (b'{"data":[{"a":1}{"a":2}]}', "expected ',' or ']'"),
        (b'{"data":[{"a":1},]}', "expected an object"),
        (b'{"data":[{"a":"\xff"}]}', "invalid JSON"),
        (b'{"data":[{"a":1}] trailing', "after the array"),
        (b'{"data":[{"a":', "invalid JSON"),
    ],
)
def test_splitter_rejects_malformed(doc, problem):
    with pytest.raises(InputFormatError, match=problem) as info:
        split(doc, b'{"data":[', chunk_bytes=4)
    assert "t.json at byte" in str(info.value)


# --- streaming import equals a whole-file reference ---------------------------------------------


def _gen_module():
    path = REPO / "benchmarks" / "gen_jaeger.py"
    spec = importlib.util.spec_from_file_location("gen_jaeger", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.parametrize("indent", [False, True])
def test_streamed_import_equals_whole_file_import(tmp_path, monkeypatch, indent):
    path = tmp_path / "gen.json"
    traces, spans = _gen_module().generate(path, 0.3, indent=indent, seed=7)
    data = path.read_bytes()
    monkeypatch.setattr(
        jaeger_json, "ArrayStream", partial(ArrayStream, chunk_bytes=4096, batch_bytes=20_000)
    )
    streamed = read_bytes(jaeger_json, data)
    reference = jaeger_json.SpanBatchBuilder(10**9)
    for i, trace in enumerate(orjson.loads(data)["data"]):
        jaeger_json.add_trace(reference, trace, "ref", f"data[{i}]")
    assert streamed.num_rows == spans
    assert streamed.equals(pa.Table.from_batches([reference.flush()]))
    assert jsonstream.CHUNK_BYTES > 4096  # the patch above really made chunks smaller
