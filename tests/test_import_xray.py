"""AWS X-Ray importer: corpus conformance, containers, nesting, times, causes, SQL."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pytest
from corpus_support import corpus_files, manifest_spans, other_format_files

from tracelens.errors import InputFormatError
from tracelens.importers import xray, zipkin
from tracelens.model import Span, SpanKind, StatusCode, spans_from_table

DATA = Path(__file__).resolve().parent / "data" / "xray"


def load_table(path: Path) -> pa.Table:
    with path.open("rb") as stream:
        return pa.Table.from_batches(list(xray.read(stream, str(path))))


def load(path: Path) -> list[Span]:
    return spans_from_table(load_table(path))


def load_bytes(data: bytes, source: str = "inline.json") -> list[Span]:
    return spans_from_table(pa.Table.from_batches(list(xray.read(io.BytesIO(data), source))))


def resources(path: Path) -> list[dict]:
    return [json.loads(r) for r in load_table(path).column("resource_attributes").to_pylist()]


def depth(spans: list[Span]) -> int:
    parents = {s.span_id: s.parent_span_id for s in spans}
    deepest = 0
    for span in spans:
        level, node = 1, span.parent_span_id
        while node in parents:
            level, node = level + 1, parents[node]
        deepest = max(deepest, level)
    return deepest


# --- corpus -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", corpus_files("xray"), ids=lambda p: p.stem)
def test_corpus_file_imports_with_manifest_count(corpus: Path, path: Path) -> None:
    # MANIFEST counts each segment plus each nested subsegment.
    table = load_table(path)
    assert table.num_rows == manifest_spans()[f"xray/{path.name}"]
    assert all(len(t) == 32 for t in table.column("trace_id").to_pylist())


@pytest.mark.parametrize("path", corpus_files("xray"), ids=lambda p: p.stem)
def test_corpus_file_is_sniffed_as_xray_only(corpus: Path, path: Path) -> None:
    head = path.read_bytes()[: 64 * 1024]
    assert xray.sniff(head, path.name)
    assert not zipkin.sniff(head, path.name)


@pytest.mark.parametrize(
    "path", other_format_files("xray"), ids=lambda p: f"{p.parent.name}/{p.stem}"
)
def test_other_formats_are_not_sniffed_as_xray(corpus: Path, path: Path) -> None:
    assert not xray.sniff(path.read_bytes()[: 64 * 1024], path.name)


def test_trace_id_and_float_seconds_keep_microseconds(corpus: Path) -> None:
    spans = load(corpus / "xray" / "ddbSample.json")
    root = spans[0]
    assert root.trace_id == "5f29ab21d4ebf299219a65bd5c31d6da"  # 1-5f29ab21-d4ebf2…
    assert root.start_ns == 1596566305535414000  # 1596566305.535414
    assert root.end_ns == 1596566305592854500  # 1596566305.5928545
    assert root.kind == SpanKind.SERVER and root.service == "DDB"


def test_nested_subsegments_point_at_the_enclosing_object(corpus: Path) -> None:
    spans = load(corpus / "xray" / "ddbSample.json")
    by_id = {s.span_id: s for s in spans}
    assert depth(spans) == 6
    dns = next(s for s in spans if s.name == "dns")
    chain = [dns.name]
    node = dns
    while node.parent_span_id:
        node = by_id[node.parent_span_id]
        chain.append(node.name)
    assert chain[1:] == [
        "connect",
        "attempt",
        "dynamodb",
        "DDB.DescribeExistingTableAndPutToMissingTable",
        "DDB",
    ]
    assert {s.service for s in spans} == {"DDB"}
    dynamo = [s for s in spans if s.name == "dynamodb"]
    assert {s.kind for s in dynamo} == {SpanKind.CLIENT}
    assert {s.rpc_method for s in dynamo} == {"dynamodb/DescribeTable", "dynamodb/PutItem"}
    assert {s.kind for s in spans if s.name == "marshal"} == {SpanKind.INTERNAL}


def test_fault_cause_becomes_error_and_exception_events(corpus: Path) -> None:
    spans = load(corpus / "xray" / "ddbSample.json")
    root = spans[0]
    assert root.status_code == StatusCode.ERROR
    assert root.status_message == "ResourceNotFoundException: Requested resource not found"
    (event,) = root.events
    assert event["name"] == "exception" and event["time_ns"] == root.end_ns
    attrs = event["attributes"]
    assert attrs["exception.type"] == "dynamodb.ResourceNotFoundException"
    assert attrs["exception.stacktrace"].splitlines()[1] == "\tat main(runtime/proc.go:203)"
    assert attrs["xray.exception.remote"] is True
    assert sum(s.is_error for s in spans) == 5


def test_in_progress_segment_ends_where_it_starts(corpus: Path) -> None:
    (span,) = load(corpus / "xray" / "minInProgress.json")
    assert span.end_ns == span.start_ns == 1595437651680097000
    assert span.attributes["xray.in_progress"] is True


def test_cause_given_as_exception_id_string(corpus: Path) -> None:
    (span,) = load(corpus / "xray" / "minCauseIsExceptionId.json")
    assert span.status_code == StatusCode.ERROR
    assert span.status_message == "abcdefghijklmnop"
    assert span.attributes["xray.cause.exception_id"] == "abcdefghijklmnop"


def test_throttle_alone_is_a_flag_not_an_error(corpus: Path) -> None:
    (span,) = load(corpus / "xray" / "minOtherFields.json")
    assert span.status_code == StatusCode.UNSET
    assert span.attributes["xray.throttle"] is True and span.attributes["xray.error"] is False
    assert span.kind == SpanKind.INTERNAL  # an independent subsegment without a namespace
    assert span.parent_span_id == "defdfd9912dc5a56"
    (resource,) = resources(corpus / "xray" / "minOtherFields.json")
    assert resource["cloud.platform"] == "aws_ec2" and resource["cloud.resource_id"] == "chicken"


def test_batch_get_traces_documents_link_across_documents(corpus: Path) -> None:
    spans = load(corpus / "xray" / "aws-cli_batch-get-traces_scorekeep.json")
    by_name = {(s.name, s.kind): s for s in spans}
    segment = by_name[("Scorekeep", SpanKind.SERVER)]
    call = by_name[("DynamoDB", SpanKind.CLIENT)]
    inferred = by_name[("DynamoDB", SpanKind.SERVER)]
    assert call.parent_span_id == segment.span_id
    assert inferred.parent_span_id == call.span_id == "2d6900034ccfe558"
    assert inferred.service == "DynamoDB" and inferred.attributes["xray.inferred"] is True
    assert segment.start_ns == 1568835610432000000  # 1.568835610432E9
    assert segment.http_method == "POST" and segment.http_status == 200
    assert {s.trace_id for s in spans} == {"5d82881a0a9126e92a73e971eed891b9"}


def test_batch_get_traces_services_and_resource(corpus: Path) -> None:
    path = corpus / "xray" / "awsdocs_batch-get-traces_scorekeep-lambda-sns.json"
    spans = load(path)
    assert {s.service for s in spans} == {"Scorekeep", "random-name", "DynamoDB", "SNS"}
    ids = {s.span_id for s in spans}
    assert all(s.parent_span_id in ids for s in spans if s.parent_span_id)
    scorekeep = resources(path)[[s.name for s in spans].index("Scorekeep")]
    assert scorekeep["cloud.platform"] == "aws_elastic_beanstalk"
    assert scorekeep["service.instance.id"] == "406" and scorekeep["host.id"].startswith("i-")


def test_daemon_datagram_header_is_skipped(corpus: Path) -> None:
    (span,) = load(corpus / "xray" / "daemon-udp_serverSample.txt")
    assert span.name == "SampleServer" and span.http_url == "http://localhost:8000/"
    assert span.attributes["client.address"] == "127.0.0.1"


def test_independent_sql_subsegment(corpus: Path) -> None:
    (span,) = load(corpus / "xray" / "indepSubsegmentWithSql.json")
    assert span.kind == SpanKind.CLIENT and span.parent_span_id == "defdfd9912dc5a56"
    assert span.service == "unknown_service"  # its segment is not in the file
    assert span.db_system == "postgresql"
    assert span.db_statement == "SELECT  *  FROM  customers  WHERE  customer_id=?;"
    assert span.db_fingerprint == "SELECT * FROM customers WHERE customer_id=?"
    host = "aawijb5u25wdoy.cpamxznpdoq8.us-west-2.rds.amazonaws.com"
    assert span.attributes["server.address"] == host and span.attributes["server.port"] == 5432
    assert span.attributes["db.name"] == "ebdb" and span.attributes["db.user"] == "dbuser"


# --- hand-written inputs ----------------------------------------------------------------------


def test_hand_written_nested_document() -> None:
    spans = load(DATA / "nested_with_cause.json")
    by = {s.name: s for s in spans}
    assert [s.name for s in spans] == [
        "orders-api",
        "place-order",
        "orders-db",
        "billing.example.com",
        "connect",
        "SQS",
    ]
    root = by["orders-api"]
    assert root.start_ns == 1700000000123456700  # 1.7000000001234567E9, exact
    assert root.end_ns == 1700000000900000000
    assert by["connect"].parent_span_id == by["billing.example.com"].span_id
    assert by["billing.example.com"].parent_span_id == by["place-order"].span_id
    # The segment's cause is a bare id naming an exception recorded in a subsegment.
    assert root.status_message == "billing answered 502"
    assert by["billing.example.com"].status_message == "billing answered 502"
    assert root.attributes["xray.annotation.tenant"] == "acme"
    assert root.attributes["xray.annotation.attempt"] == 2
    cart = by["place-order"].attributes["xray.metadata.debug.cart"]
    assert json.loads(cart) == {"items": 3, "total": 19.5}


def test_hand_written_sql_http_and_aws_subsegments() -> None:
    by = {s.name: s for s in load(DATA / "nested_with_cause.json")}
    db = by["orders-db"]
    assert db.db_system == "mysql" and db.kind == SpanKind.CLIENT
    assert (
        db.db_fingerprint == "SELECT id, total FROM orders WHERE customer_id = ? AND status IN (?)"
    )
    assert db.attributes["server.address"] == "orders.cluster-abc.eu-west-1.rds.amazonaws.com"
    assert db.attributes["db.name"] == "orders" and db.attributes["server.port"] == 3306
    billing = by["billing.example.com"]
    assert billing.attributes["server.address"] == "billing.example.com"
    assert billing.attributes["server.port"] == 8443 and billing.http_status == 502
    assert billing.peer == "billing.example.com"
    sqs = by["SQS"]
    assert sqs.rpc_method == "SQS/SendMessage" and sqs.status_code == StatusCode.UNSET
    assert sqs.attributes["aws.queue_url"].endswith("/orders")
    assert sqs.attributes["aws.xray.retries"] == 1 and sqs.attributes["xray.throttle"] is True
    assert by["connect"].kind == SpanKind.INTERNAL and by["connect"].service == "orders-api"


def test_hand_written_resource() -> None:
    resource = resources(DATA / "nested_with_cause.json")[0]
    assert resource["service.name"] == "orders-api"
    assert resource["cloud.platform"] == "aws_ecs" and resource["container.name"] == "orders-7f9c"
    assert resource["service.version"] == "1.4.2"
    assert resource["process.runtime.version"] == "3.11.6"
    assert resource["telemetry.sdk.name"] == "X-Ray for Python"


def test_concatenated_datagrams_and_independent_subsegment_service() -> None:
    worker, cache = load(DATA / "two_datagrams.txt")
    assert worker.trace_id == cache.trace_id == "6553f200" + "a" * 24
    assert cache.parent_span_id == worker.span_id and cache.kind == SpanKind.CLIENT
    assert cache.service == "worker"  # taken from its parent segment in the same file
    assert cache.end_ns == cache.start_ns == 1700000256600000000
    assert cache.attributes["xray.in_progress"] is True
    assert worker.duration_ns == 750_000_000


def test_array_of_document_strings() -> None:
    doc = {"trace_id": "1-6553f200-" + "b" * 24, "id": "3" * 16, "name": "a", "start_time": 1}
    data = json.dumps([json.dumps(doc), {**doc, "id": "4" * 16, "end_time": 2.5}]).encode()
    first, second = load_bytes(data)
    assert (first.start_ns, first.end_ns) == (1_000_000_000, 1_000_000_000)
    assert (second.span_id, second.end_ns) == ("4" * 16, 2_500_000_000)


def test_deep_nesting_is_walked_without_recursion() -> None:
    levels = 400  # the JSON parser, not the walk, bounds the depth
    doc: dict = {"id": f"{levels:016x}", "name": "leaf", "start_time": 1, "end_time": 2}
    for level in range(levels - 1, 0, -1):
        doc = {
            "id": f"{level:016x}",
            "name": "n",
            "start_time": 1,
            "end_time": 2,
            "subsegments": [doc],
        }
    doc.update(trace_id="1-6553f200-" + "c" * 24, name="root")
    spans = load_bytes(json.dumps(doc).encode())
    assert len(spans) == levels and depth(spans) == levels


def test_too_deep_json_is_an_input_error() -> None:
    data = b'{"trace_id": "1-6553f200-cccccccccccccccccccccccc", "x": ' + b"[" * 5000 + b"]" * 5000
    with pytest.raises(InputFormatError, match="nested too deeply"):
        load_bytes(data + b"}", "deep.json")


@pytest.mark.parametrize(
    ("data", "where", "problem"),
    [
        (b'{"trace_id": "1-6553f200-cccccccccccccccccccccccc",\n  "id": }', "line 2", "invalid"),
        (
            b'{"Traces": [{"Segments": [{"Id": "1", "Document": "{\\"id\\": "}]}]}',
            "Traces[0].Segments[0].Document line 1",
            "invalid JSON",
        ),
        (b'{"id": "1000000000000001", "name": "x", "start_time": 1}', "value 1", "no trace_id"),
        (
            b'{"trace_id": "1-6553f200-cccccccccccccccccccccccc", "id": "1000000000000001",'
            b' "name": "x", "start_time": 1, "subsegments": [{"id": "2", "name": "y"}]}',
            "value 1.subsegments[0]",
            "missing field 'start_time'",
        ),
        (
            b'{"trace_id": "1-6553f200-cccccccccccccccccccccccc", "id": "1000000000000001",'
            b' "name": "x", "start_time": "soon"}',
            "value 1",
            "not a number",
        ),
        (b'{"trace_id": "1-xyz", "id": "1000000000000001", "start_time": 1}', "trace_id", "id"),
    ],
)
def test_bad_input_names_file_and_place(data: bytes, where: str, problem: str) -> None:
    with pytest.raises(InputFormatError) as info:
        load_bytes(data, "bad.json")
    assert info.value.source == "bad.json"
    assert where in (info.value.where or "") and problem in info.value.problem
    assert str(info.value).startswith("bad.json at ")


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b'{"format": "json", "version": 1}\n{"trace_id"', True),
        (b'{"Traces": [{"Id": "1-x", "Segments": [{"Document": "{', True),  # truncated
        (b'{"name": "x", "trace_id": "1-5f84c7a1-4a3b4a3b4a3b4a3b4a3b4a3b", "id": "0', True),
        (b'{"trace_id": "1-5f84c7a1-4a3b4a3b4a3b4a3b4a3b4a3b", "id": "1", "start_time": 1}', True),
        (b'[{"traceId": "1-5f84c7a1-4a3b4a3b4a3b4a3b4a3b4a3b", "id": "1"}]', False),  # Zipkin
        (b'[{"traceId": "ab", "id": "0a", "tags": {"trace_id": "1-5f84c7a1-4a3b"}}]', False),
        (b'{"resourceSpans": [{"resource": {}}]}', False),
        (b'{"data": [{"traceID": "ab"}]}', False),
    ],
)
def test_sniff(head: bytes, expected: bool) -> None:
    assert xray.sniff(head, "x.json") is expected
