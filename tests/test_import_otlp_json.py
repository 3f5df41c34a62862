"""OTLP/JSON importer: every corpus file, every variant, strict and lenient conversion."""

from __future__ import annotations

import base64
import gc
import io
from pathlib import Path
from typing import Any

import orjson
import pytest
from corpus_support import manifest_spans as _manifest_spans

from tracelens.errors import InputFormatError
from tracelens.importers import otlp_json
from tracelens.model import SpanBatchBuilder, spans_from_table

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent.parent / "shared" / "corpus"  # as in conftest.py
DATA = HERE / "data" / "otlp_json"
CORPUS_DIR = CORPUS / "otlp-json"

# The offending field and problem each negative corpus case must be reported with.
INVALID_EXPECTED = {
    "invalid_otlp2parquet_trace_invalid_base64.json": (
        "spans[0].traceId",
        "traceId '!!!INVALID_BASE64!!!' is neither hex nor base64 of 16 bytes",
    ),
    "invalid_otlp2parquet_trace_invalid_kind.json": (
        "spans[0].kind",
        "kind 'SPAN_KIND_INVALID_TYPE' is not a span kind",
    ),
    "invalid_otlp2parquet_trace_mixed_encoding.json": (
        "spans[0].traceId",
        "traceId 'zzz' is neither hex nor base64 of 16 bytes",
    ),
}


def _corpus_files() -> list[Path]:
    return sorted(CORPUS_DIR.glob("*")) if CORPUS_DIR.is_dir() else []


def _read(path: Path) -> list:
    with open(path, "rb") as fh:
        return list(otlp_json.read(io.BufferedReader(fh), str(path)))


def _read_bytes(data: bytes, source: str = "mem.json") -> list:
    return list(otlp_json.read(io.BufferedReader(io.BytesIO(data)), source))


def _spans(path: Path) -> dict[str, Any]:
    """Imported spans by name (names are unique in the files where this is used)."""
    import pyarrow as pa

    table = pa.Table.from_batches(_read(path))
    return {s.name: s for s in spans_from_table(table)}


def _rows(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for batch in _read(path):
        rows.extend(batch.to_pylist())
    return rows


class Recorder:
    """Stands in for SpanBatchBuilder to see the Python values the importer hands over."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []

    def add(self, **span: Any) -> None:
        self.spans.append(span)


def _doc(*spans: dict[str, Any]) -> dict[str, Any]:
    return {"resourceSpans": [{"scopeSpans": [{"spans": list(spans)}]}]}


def _span(**fields: Any) -> dict[str, Any]:
    span = {
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": "eee19b7ec3c1b174",
        "name": "op",
        "startTimeUnixNano": "100",
        "endTimeUnixNano": "200",
    }
    span.update(fields)
    return {k: v for k, v in span.items() if v is not None}


# --- the public corpus ------------------------------------------------------------------------


@pytest.mark.parametrize("path", _corpus_files(), ids=lambda p: p.name)
def test_corpus_file(corpus: Path, path: Path) -> None:
    assert otlp_json.sniff(path.read_bytes()[:65536], path.name)
    if path.name.startswith("invalid_"):
        field, problem = INVALID_EXPECTED[path.name]
        with pytest.raises(InputFormatError) as info:
            _read(path)
        message = str(info.value)
        assert path.name in message
        assert info.value.where == f"resourceSpans[0].scopeSpans[0].{field}"
        assert problem in message
    else:
        expected = _manifest_spans(corpus)[f"otlp-json/{path.name}"]
        assert sum(batch.num_rows for batch in _read(path)) == expected


def test_other_corpus_formats_are_not_sniffed(corpus: Path) -> None:
    others = [p for p in corpus.glob("*/*") if p.parent.name != "otlp-json"]
    assert others
    claimed = [p.name for p in others if otlp_json.sniff(p.read_bytes()[:65536], p.name)]
    assert claimed == []


def test_base64_ids_and_enum_names(corpus: Path) -> None:
    spans = _spans(corpus / "otlp-json" / "tempo_mythical_trace-with-failed-requests.json")
    requester = spans["requester"]
    assert requester.trace_id == "e8b6dff9f8d44b28f1b22bc3bd2f6768"  # "6Lbf+fjUSyjxsivDvS9naA=="
    assert requester.span_id == "9007fea484554ad7"  # "kAf+pIRVStc="
    assert requester.kind == 3  # SPAN_KIND_CLIENT
    assert requester.status_code == 2  # STATUS_CODE_ERROR
    assert requester.parent_span_id is None


def test_tempo_batches_with_legacy_library_names(corpus: Path) -> None:
    rows = _rows(corpus / "otlp-json" / "grafana_tempo_upload_mockJsonResponse.json")
    assert {r["service"] for r in rows} == {"db", "app", "lb"}
    # A 64-bit trace id zero-padded to 16 bytes, in base64.
    assert {r["trace_id"] for r in rows} == {"000000000000000060ba2abb44f13eae"}
    root = next(r for r in rows if r["name"] == "HTTP GET - root")
    assert root["span_id"] == base64.b64decode("cmteMBAvwNA=").hex()
    assert root["kind"] == 2
    assert root["http_status"] == 200


def test_legacy_names_keep_scope_and_accept_url_safe_ids() -> None:
    rows = {r["name"]: r for r in _rows(DATA / "legacy_batches.json")}
    get = rows["HTTP GET"]
    assert (get["scope_name"], get["scope_version"]) == ("io.opentracing", "0.33")
    assert get["trace_id"] == "000000000000000060ba2abb44f13eae"
    assert (get["kind"], get["status_code"]) == (3, 1)
    child = rows["url-safe unpadded ids"]
    assert child["trace_id"] == get["trace_id"]
    assert child["span_id"] == "1957671c4ad85a8a"
    assert child["parent_span_id"] == get["span_id"]


def test_result_wrapper_without_timestamps_or_service(corpus: Path) -> None:
    (row,) = _rows(corpus / "otlp-json" / "jaeger_apiv3_GetTrace_result_wrapper.json")
    assert row["trace_id"] == "0" * 31 + "1"
    assert row["span_id"] == "0" * 15 + "2"
    assert (row["start_ns"], row["end_ns"], row["duration_ns"]) == (0, 0, 0)
    assert row["service"] == "unknown_service"
    assert row["status_code"] == 2


def test_tempo_v2_trace_wrapper() -> None:
    doc = {"trace": _doc(_span())}
    (batch,) = _read_bytes(orjson.dumps(doc))
    assert batch.column("span_id").to_pylist() == ["eee19b7ec3c1b174"]


def test_uppercase_hex_ids_are_lowered(corpus: Path) -> None:
    (row,) = _rows(corpus / "otlp-json" / "otel-proto_examples_trace.json")
    assert row["trace_id"] == "5b8efff798038103d269b633813fc60c"
    assert row["parent_span_id"] == "eee19b7ec3c1b173"
    assert row["scope_name"] == "my.library"


# --- JSON Lines and streaming -----------------------------------------------------------------


def test_jsonl_parent_links_cross_lines(corpus: Path) -> None:
    rows = _rows(corpus / "otlp-json" / "jaeger-ui_otlp2jaeger-multi-in.jsonl")
    by_id = {r["span_id"]: r for r in rows}
    roots = [r for r in rows if r["parent_span_id"] is None]
    assert [r["name"] for r in roots] == ["main"]
    assert all(r["parent_span_id"] in by_id for r in rows if r is not roots[0])
    assert by_id["49b8e9efa1e8a3b1"]["parent_span_id"] == "eff3153be6b1fb93"


def test_handwritten_jsonl_with_blank_line() -> None:
    rows = {r["name"]: r for r in _rows(DATA / "lines.jsonl")}
    assert rows["grandchild"]["parent_span_id"] == rows["child"]["span_id"]
    assert rows["child"]["parent_span_id"] == rows["root"]["span_id"]
    assert rows["root"]["service"] == "web"


def test_jsonl_streams_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otlp_json, "BATCH_SPANS", 2)
    lines = [orjson.dumps(_doc(_span(spanId=f"{i + 1:016x}"))) for i in range(5)]
    batches = _read_bytes(b"\n".join(lines) + b"\n", "five.jsonl")
    assert [b.num_rows for b in batches] == [2, 2, 1]
    assert gc.isenabled()


def test_jsonl_error_names_the_line() -> None:
    good = orjson.dumps(_doc(_span()))
    bad = orjson.dumps(_doc(_span(spanId="abc")))
    with pytest.raises(InputFormatError) as info:
        _read_bytes(b"\n".join([good, good, bad]), "three.jsonl")
    assert info.value.where == "line 3, resourceSpans[0].scopeSpans[0].spans[0].spanId"
    assert "spanId 'abc' has 3 hex digits, OTLP needs 16" in str(info.value)


def test_jsonl_invalid_json_names_line_and_column() -> None:
    good = orjson.dumps(_doc(_span()))
    with pytest.raises(InputFormatError) as info:
        _read_bytes(good + b"\n" + good + b"\n" + b'{"resourceSpans": [}\n', "x.jsonl")
    assert info.value.where == "line 3, column 20"
    assert "invalid JSON" in info.value.problem


# --- attribute values, events, links ----------------------------------------------------------


def test_typed_attribute_values_reach_the_builder() -> None:
    recorder = Recorder()
    doc = otlp_json.parse_bytes((DATA / "typed_attributes.json").read_bytes(), "typed")
    assert otlp_json.convert_document(doc, "typed", recorder) == []  # type: ignore[arg-type]
    attrs = recorder.spans[0]["attributes"]
    assert attrs["str"] == "text" and attrs["empty.str"] == ""
    assert attrs["int"] == 9007199254740993 and type(attrs["int"]) is int  # beyond 2**53
    assert attrs["int.number"] == 42 and attrs["int.negative"] == -7
    assert attrs["bool"] is True and attrs["bool.false"] is False
    assert attrs["double"] == 0.25
    assert attrs["double.whole"] == 3.0 and type(attrs["double.whole"]) is float
    assert attrs["bytes"] == b"\x00\x01\x02\xff"
    assert attrs["array"] == ["a", 2, False, None]
    assert attrs["kvlist"] == {"inner.int": 1, "inner.list": {"deep": 1.5}}
    assert attrs["no.value"] is None and attrs["empty.value"] is None
    assert recorder.spans[0]["resource"] == {"service.name": "checkout", "host.cpus": 8}


def test_typed_attributes_stored_as_json() -> None:
    (row, *_) = _rows(DATA / "typed_attributes.json")
    attrs = orjson.loads(row["attributes"])
    assert attrs["int"] == 9007199254740993
    assert attrs["bytes"] == "AAEC/w=="  # the builder base64s bytes
    assert attrs["kvlist"]["inner.list"] == {"deep": 1.5}


def test_span_fields_events_and_links() -> None:
    rows = {r["name"]: r for r in _rows(DATA / "typed_attributes.json")}
    span = rows["POST /checkout"]
    assert span["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert span["span_id"] == "b7ad6b7169203331"
    assert span["parent_span_id"] is None  # all-zero parent id means root
    assert span["trace_state"] == "vendor=abc"
    assert (span["kind"], span["status_code"]) == (2, 2)
    assert span["status_message"] == "card declined"
    assert (span["scope_name"], span["scope_version"]) == ("handwritten.tests", "0.3.1")
    assert span["duration_ns"] == 250_000_000
    events = orjson.loads(span["events"])
    assert events == [
        {
            "time_ns": 1700000000100000000,
            "name": "exception",
            "attributes": {"exception.type": "ValueError", "attempt": 3},
        },
        {"time_ns": 1700000000200000000, "name": "", "attributes": {}},
    ]
    links = orjson.loads(span["links"])
    assert links == [
        {
            "trace_id": "00000000000000000000000000000011",
            "span_id": "0000000000000012",
            "trace_state": "k=v",
            "attributes": {"link.kind": "batch"},
        },
        {
            "trace_id": "0af7651916cd43dd8448eb211c80319c",
            "span_id": "00f067aa0ba902b7",
            "trace_state": None,
            "attributes": {},
        },
    ]


def test_spans_without_timestamps_are_kept() -> None:
    rows = {r["name"]: r for r in _rows(DATA / "typed_attributes.json")}
    assert (rows["no timestamps"]["start_ns"], rows["no timestamps"]["end_ns"]) == (0, 0)
    start_only = rows["start only"]
    assert start_only["start_ns"] == start_only["end_ns"] == 1700000000300000000
    assert start_only["parent_span_id"] is None  # empty parentSpanId
    assert start_only["kind"] == 0 and start_only["status_code"] == 1


def test_corpus_typed_values(corpus: Path) -> None:
    recorder = Recorder()
    path = corpus / "otlp-json" / "jaeger_memory_otel_traces_01.json"
    otlp_json.convert_document(otlp_json.parse_bytes(path.read_bytes(), path.name), "m", recorder)  # type: ignore[arg-type]
    first = recorder.spans[0]
    assert first["attributes"]["peer.ipv4"] == 23456
    assert first["attributes"]["blob"] == b"\x00\x000\x39"
    assert first["attributes"]["temperature"] == 72.5
    assert first["trace_state"] == "state.2"
    assert [link["span_id"] for link in first["links"]] == ["0000000000000004", "00000000000000ff"]
    assert [s["kind"] for s in recorder.spans] == [2, 3, 4, 5]


# --- derived columns --------------------------------------------------------------------------


def test_hotrod_derived_columns(corpus: Path) -> None:
    spans = _spans(corpus / "otlp-json" / "jaeger_hotrod_n_plus_one_full_concurrent.json")
    sql = spans["SQL SELECT"]
    assert sql.service == "mysql"
    assert sql.kind == 3
    assert sql.db_system == "mysql"  # db.system.name
    assert sql.db_statement == "SELECT * FROM customer WHERE customer_id=731"  # db.query.text
    assert sql.db_fingerprint == "SELECT * FROM customer WHERE customer_id=?"
    assert sql.peer == "mysql"  # service.peer.name
    assert sql.parent_span_id == spans["GET /customer"].span_id
    customer = spans["GET /customer"]
    assert (customer.service, customer.http_route) == ("customer", "/customer")
    assert (customer.http_method, customer.http_status) == ("GET", 200)


def test_hotrod_error_spans(corpus: Path) -> None:
    rows = _rows(corpus / "otlp-json" / "jaeger_hotrod_n_plus_one_full_concurrent.json")
    errors = [r for r in rows if r["status_code"] == 2]
    assert len(errors) == 3
    assert {(r["name"], r["status_message"]) for r in errors} == {
        ("GetDriver", "An error occurred")
    }


def test_old_and_new_semconv_names_derive_the_same_columns() -> None:
    rows = {r["name"]: r for r in _rows(DATA / "semconv_old_new.json")}
    old, new = rows["old names"], rows["new names"]
    for column in ("db_system", "db_fingerprint", "peer", "http_method", "http_status"):
        assert old[column] == new[column], column
    assert old["db_fingerprint"] == "SELECT name FROM users WHERE id = ?"
    assert (old["peer"], old["http_status"]) == ("users-db", 503)


# --- strict and lenient conversion ------------------------------------------------------------


def test_lenient_conversion_skips_and_reports_invalid_spans() -> None:
    doc = otlp_json.parse_bytes((DATA / "partial.json").read_bytes(), "partial")
    builder = SpanBatchBuilder()
    rejected = otlp_json.convert_document(doc, "partial", builder, strict=False)
    base = "resourceSpans[0].scopeSpans[0].spans"
    assert rejected == [
        f"{base}[1].traceId: traceId 'aaaa' has 4 hex digits, OTLP needs 32",
        f"{base}[2].spanId: spanId is all zeros",
        f"{base}[3].endTimeUnixNano: end 20 is before start 30",
        f"{base}[4].kind: kind 9 is not a span kind",
    ]
    batch = builder.flush()
    assert batch is not None
    assert batch.column("name").to_pylist() == ["good one", "good two"]


def test_strict_conversion_raises_on_first_invalid_span() -> None:
    doc = otlp_json.parse_bytes((DATA / "partial.json").read_bytes(), "partial")
    builder = SpanBatchBuilder()
    with pytest.raises(InputFormatError) as info:
        otlp_json.convert_document(doc, "partial.json", builder)
    assert str(info.value) == (
        "partial.json at resourceSpans[0].scopeSpans[0].spans[1].traceId: "
        "traceId 'aaaa' has 4 hex digits, OTLP needs 32"
    )


def test_file_import_is_all_or_nothing() -> None:
    with pytest.raises(InputFormatError):
        _read(DATA / "partial.json")


@pytest.mark.parametrize(
    ("span", "where", "problem"),
    [
        (_span(traceId="0" * 32), "traceId", "traceId is all zeros"),
        (_span(traceId=None), "traceId", "traceId is missing"),
        (_span(spanId=12), "spanId", "spanId must be a string, got a number"),
        (_span(spanId="AAAAAAAAAAAAAAAAAAAAEQ=="), "spanId", "neither hex nor base64 of 8 bytes"),
        (_span(parentSpanId="nothex!"), "parentSpanId", "neither hex nor base64"),
        (_span(kind="SERVER"), "kind", "kind 'SERVER' is not a span kind"),
        (_span(kind=True), "kind", "kind True is not a span kind"),
        (_span(startTimeUnixNano="soon"), "startTimeUnixNano", "'soon' is not an integer"),
        (_span(status={"code": "BROKEN"}), "status.code", "'BROKEN' is not a status code"),
        (_span(status={"code": 3}), "status.code", "status.code 3 is not a status code"),
        (_span(name=["x"]), "name", "name must be a string"),
        (_span(traceState=5), "traceState", "traceState must be a string"),
        (
            _span(attributes=[{"key": "a", "value": {"intValue": "1.5"}}]),
            "attributes[0].value",
            "intValue '1.5' is not an integer",
        ),
        (
            _span(attributes=[{"key": "a", "value": {"intValue": "99999999999999999999"}}]),
            "attributes[0].value",
            "does not fit in 64 bits",
        ),
        (
            _span(attributes=[{"key": "a", "value": {"boolValue": "yes"}}]),
            "attributes[0].value",
            "boolValue 'yes' is not true or false",
        ),
        (
            _span(attributes=[{"key": "a", "value": {"bytesValue": "%%%"}}]),
            "attributes[0].value",
            "attribute 'a'",
        ),
        (_span(attributes=[{"value": {"stringValue": "x"}}]), "attributes[0]", "string 'key'"),
        (_span(attributes={"a": 1}), "attributes", "must be an array of key/value objects"),
        (
            _span(
                attributes=[
                    {"key": "ok", "value": {"stringValue": "x"}},
                    {
                        "key": "nested",
                        "value": {
                            "kvlistValue": {
                                "values": [{"key": "n", "value": {"doubleValue": "fast"}}]
                            }
                        },
                    },
                ]
            ),
            "attributes[1].value.kvlistValue.values[0].value",
            "doubleValue 'fast' is not a number",
        ),
        (
            _span(events=[{"timeUnixNano": "x"}]),
            "events[0].timeUnixNano",
            "timeUnixNano 'x' is not an integer",
        ),
        (
            _span(events=[{"attributes": [{"key": "k", "value": {"intValue": "z"}}]}]),
            "events[0].attributes[0].value",
            "intValue 'z' is not an integer",
        ),
        (
            _span(links=[{"traceId": "abcd", "spanId": "0000000000000001"}]),
            "links[0].traceId",
            "links[0].traceId 'abcd' has 4 hex digits",
        ),
        (_span(links="none"), "links", "links must be an array"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_invalid_span_reports_place_and_problem(span: dict, where: str, problem: str) -> None:
    builder = SpanBatchBuilder()
    with pytest.raises(InputFormatError) as info:
        otlp_json.convert_document(_doc(span), "req", builder)
    assert info.value.where == f"resourceSpans[0].scopeSpans[0].spans[0].{where}"
    assert problem in info.value.problem
    assert len(builder) == 0
    rejected = otlp_json.convert_document(
        _doc(span, _span(spanId="1" * 16)), "r", builder, strict=False
    )
    assert len(rejected) == 1 and problem in rejected[0]
    assert len(builder) == 1  # the valid span beside it is kept


def test_lenient_ids_and_values_that_are_valid() -> None:
    recorder = Recorder()
    doc = _doc(
        _span(parentSpanId="0000000000000000", kind="SPAN_KIND_PRODUCER", status={"code": None}),
        _span(spanId="0000000000000009", kind=None, startTimeUnixNano=None, endTimeUnixNano="50"),
        _span(
            spanId="000000000000000a", attributes=[{"key": "n", "value": {"doubleValue": "NaN"}}]
        ),
    )
    assert otlp_json.convert_document(doc, "r", recorder, strict=False) == []  # type: ignore[arg-type]
    first, second, third = recorder.spans
    assert first["parent_span_id"] is None and first["kind"] == 4 and first["status_code"] == 0
    assert second["kind"] == 0 and (second["start_ns"], second["end_ns"]) == (50, 50)
    assert third["attributes"]["n"] != third["attributes"]["n"]  # NaN


@pytest.mark.parametrize(
    ("doc", "where", "problem"),
    [
        ([], None, "expected a JSON object (OTLP TracesData), got an array"),
        ({"resourceSpans": {}}, "resourceSpans", "expected an array, got an object"),
        ({"resourceSpans": [5]}, "resourceSpans[0]", "expected an object, got a number"),
        (
            {"resourceSpans": [{"scopeSpans": [{"spans": "x"}]}]},
            "resourceSpans[0].scopeSpans[0].spans",
            "expected an array",
        ),
        (
            {"resourceSpans": [{"resource": {"attributes": [{"key": 1}]}}]},
            "resourceSpans[0].resource.attributes[0]",
            "string 'key'",
        ),
        (
            {"resourceSpans": [{"scopeSpans": [{"scope": {"name": 3}}]}]},
            "resourceSpans[0].scopeSpans[0].scope.name",
            "scope name must be a string",
        ),
        ({"data": [], "total": 0}, None, "no 'resourceSpans' array (keys: data, total)"),
        ({"error": {"message": "trace not found"}}, None, "error response: trace not found"),
    ],
)
def test_structural_errors_always_raise(doc: Any, where: str | None, problem: str) -> None:
    with pytest.raises(InputFormatError) as info:
        otlp_json.convert_document(doc, "req", SpanBatchBuilder(), strict=False)
    assert info.value.where == where
    assert problem in info.value.problem


def test_empty_request_is_empty() -> None:
    builder = SpanBatchBuilder()
    assert otlp_json.convert_document({}, "req", builder, strict=False) == []
    assert otlp_json.convert_document({"resourceSpans": []}, "req", builder) == []
    assert len(builder) == 0


# --- parsing ----------------------------------------------------------------------------------


def test_parse_bytes_reports_line_and_column() -> None:
    with pytest.raises(InputFormatError) as info:
        otlp_json.parse_bytes(b'{\n  "resourceSpans": [\n    {"x": }\n  ]\n}', "body.json")
    assert info.value.where == "line 3, column 11"
    assert str(info.value).startswith("body.json at line 3, column 11: invalid JSON")


def test_parse_bytes_reports_bad_utf8() -> None:
    with pytest.raises(InputFormatError) as info:
        otlp_json.parse_bytes(b'{"a":\n "\xff"}', "body.json")
    assert info.value.where == "line 2, column 3"
    assert "0xff" in info.value.problem


def test_parse_bytes_wants_an_object() -> None:
    with pytest.raises(InputFormatError, match="got an array"):
        otlp_json.parse_bytes(b"[1, 2]", "body.json")


def test_empty_file_is_an_error() -> None:
    with pytest.raises(InputFormatError, match="empty input"):
        _read_bytes(b"\n \n", "empty.json")


def test_pretty_document_error_names_line() -> None:
    data = (
        b'{\n "resourceSpans": [\n  {"scopeSpans": [{"spans": [\n   {"traceId": 1}\n  ]}]}\n]\n}\n'
    )
    with pytest.raises(InputFormatError) as info:
        _read_bytes(data, "pretty.json")
    assert info.value.where == "resourceSpans[0].scopeSpans[0].spans[0].traceId"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b'\xef\xbb\xbf {"resourceSpans": []}', True),
        (b'{"batches": [{"instrumentationLibrarySpans": []}]}', True),
        (b'{"result": {"resourceSpans": [', True),
        (b'[{"traceId": "x", "id": "y"}]', False),
        (b'{"data": [{"traceID": "x", "spans": []}]}', False),
        (b"\x0a\x8a\x01\x0a", False),
    ],
)
def test_sniff(head: bytes, expected: bool) -> None:
    assert otlp_json.sniff(head, "x") is expected


@pytest.mark.parametrize("path", sorted(DATA.glob("*")), ids=lambda p: p.name)
def test_handwritten_files_sniff(path: Path) -> None:
    assert otlp_json.sniff(path.read_bytes()[:65536], path.name)


# --- into a real store ------------------------------------------------------------------------


def test_write_to_store_and_read_back(corpus: Path, store) -> None:
    path = corpus / "otlp-json" / "jaeger_hotrod_n_plus_one_full_concurrent.json"
    stats = store.write(_read(path))
    assert (stats.received, stats.inserted) == (40, 40)
    spans = {
        s.span_id: s for s in spans_from_table(store.get_trace("1a4e4a7b270e9f2a0f716e3ee115218a"))
    }
    assert len(spans) == 40
    sql = spans["7b8acf143a39ba57"]
    assert (sql.name, sql.db_system, sql.parent_span_id) == (
        "SQL SELECT",
        "mysql",
        "1a6b421c38807f84",
    )
    assert sql.attributes["db.operation.name"] == "SELECT"
    again = store.write(_read(path))  # re-import: deduplicated on (trace_id, span_id)
    assert (again.received, again.inserted) == (40, 0)
