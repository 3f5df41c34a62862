"""Every row of the status table, provoked over real HTTP and gRPC connections.

The receiver runs in-process on free loopback ports around a consumer chosen per row: an
in-memory sink, or the real writer over a store that blocks or fails.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from receiver_support import EXPORT_PATH, FakeStore, export_request, sdk_spans

from tracelens.receiver.server import Receiver, ServeConfig
from tracelens.receiver.status import STATUS, Condition, ExportFault
from tracelens.receiver.writer import Writer

LIMIT = 64 * 1024
TOKEN = "s3cret-token-value"
PROTOBUF = "application/x-protobuf"


class Sink:
    """A consumer that keeps what it is given (or fails like a bug would)."""

    def __init__(self, broken: bool = False) -> None:
        self.batches: list = []
        self.broken = broken

    def consume(self, batches: list) -> None:
        if self.broken:
            raise RuntimeError("a bug")
        self.batches.extend(batches)


def _valid() -> bytes:
    return export_request(sdk_spans(3)).SerializeToString()


def _partial() -> bytes:
    request = export_request(sdk_spans(3))
    request.resource_spans[0].scope_spans[0].spans[1].span_id = b"\x00" * 8
    return request.SerializeToString()


@dataclass(frozen=True)
class Case:
    body: bytes
    path: str = "/v1/traces"
    method: str = "POST"
    content_type: str = PROTOBUF
    grpc: bool = True  # reachable over gRPC too
    grpc_method: str = EXPORT_PATH
    consumer: str = "sink"  # sink | broken | blocked | closed | failing
    token: str | None = None


CASES: dict[Condition, Case] = {
    Condition.OK: Case(_valid()),
    Condition.PARTIAL: Case(_partial()),
    Condition.UNDECODABLE: Case(b"\xff\xff\xff"),
    Condition.TOO_LARGE: Case(b"\x0a" * (LIMIT + 1)),
    Condition.OVERLOADED: Case(_valid(), consumer="blocked"),
    Condition.SHUTTING_DOWN: Case(_valid(), consumer="closed"),
    Condition.COMMIT_FAILED: Case(_valid(), consumer="failing"),
    Condition.UNAUTHENTICATED: Case(_valid(), token=TOKEN),
    Condition.NOT_FOUND: Case(_valid(), path="/v1/tracez", grpc_method=EXPORT_PATH + "z"),
    Condition.METHOD_NOT_ALLOWED: Case(b"", method="GET", grpc=False),
    Condition.UNSUPPORTED_MEDIA_TYPE: Case(_valid(), content_type="text/plain", grpc=False),
    Condition.INTERNAL: Case(_valid(), consumer="broken"),
}


def test_every_condition_has_a_case() -> None:
    assert set(CASES) == set(Condition) == set(STATUS)


@pytest.fixture
def receiver_for() -> Iterator[Any]:
    started: list[tuple[Receiver, Writer | None, FakeStore | None]] = []

    def make(case: Case) -> Receiver:
        writer, store = None, None
        consumer: Any = Sink(broken=case.consumer == "broken")
        if case.consumer not in ("sink", "broken"):
            store = FakeStore()
            writer = Writer(store, max_pending_spans=4).start()  # type: ignore[arg-type]
            consumer = writer
        if case.consumer == "blocked":  # one request holds the queue inside a commit
            store.gate.clear()  # type: ignore[union-attr]
            threading.Thread(target=_swallow, args=(writer, 3), daemon=True).start()
            assert store.entered.wait(5)  # type: ignore[union-attr]
        elif case.consumer == "closed":
            writer.close()  # type: ignore[union-attr]
        elif case.consumer == "failing":
            store.poison = {"GET /orders/{id}", "SELECT orders"}  # type: ignore[union-attr]
        config = ServeConfig(
            db="unused", grpc_port=0, http_port=0, max_request_bytes=LIMIT, token=case.token
        )
        receiver = Receiver(config, consumer).start()
        started.append((receiver, writer, store))
        return receiver

    yield make
    for receiver, writer, store in started:
        if store is not None:
            store.gate.set()
        receiver.stop(5)
        if writer is not None:
            writer.close(5)


def _swallow(writer: Writer, spans: int) -> None:
    from receiver_support import export_request as encode

    from tracelens.receiver.decode import decode

    try:
        writer.consume(decode(encode(sdk_spans(spans)).SerializeToString(), "t").batches)
    except ExportFault:
        pass


def _http(receiver: Receiver, case: Case) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", receiver.http_port, timeout=10)
    conn.request(
        case.method, case.path, body=case.body, headers={"Content-Type": case.content_type}
    )
    response = conn.getresponse()
    response.body = response.read()  # type: ignore[attr-defined]
    conn.close()
    return response


@pytest.mark.parametrize("condition", list(Condition), ids=[c.value for c in Condition])
def test_http_answers_the_table_row(receiver_for: Any, condition: Condition) -> None:
    case, row = CASES[condition], STATUS[condition]
    response = _http(receiver_for(case), case)
    body: bytes = response.body  # type: ignore[attr-defined]
    assert response.status == row.http_status, body
    retry_after = response.getheader("Retry-After")
    assert retry_after == (str(row.retry_after_s) if row.retryable else None)
    if row.http_status == 200:
        assert response.getheader("Content-Type") == PROTOBUF
        answer = ExportTraceServiceResponse.FromString(body)
        assert answer.HasField("partial_success") == (condition is Condition.PARTIAL)
        if condition is Condition.PARTIAL:
            assert answer.partial_success.rejected_spans == 1
            assert "span_id is all zeros" in answer.partial_success.error_message
        return
    if response.getheader("Content-Type") == PROTOBUF:
        status = status_pb2.Status.FromString(body)
    else:
        from google.protobuf import json_format

        status = json_format.Parse(body, status_pb2.Status())
    assert status.code == row.grpc_code.value[0] and status.message
    assert _has_retry_info(status) == row.retryable
    if condition is Condition.METHOD_NOT_ALLOWED:
        assert response.getheader("Allow") == "POST"


@pytest.mark.parametrize(
    "condition",
    [c for c in Condition if CASES[c].grpc],
    ids=[c.value for c in Condition if CASES[c].grpc],
)
def test_grpc_answers_the_table_row(receiver_for: Any, condition: Condition) -> None:
    case, row = CASES[condition], STATUS[condition]
    receiver = receiver_for(case)
    with grpc.insecure_channel(f"127.0.0.1:{receiver.grpc_port}") as channel:
        call = channel.unary_unary(case.grpc_method)
        try:
            reply = call(case.body, timeout=10)
        except grpc.RpcError as error:
            assert error.code() == row.grpc_code, error.details()
            trailing = dict(error.trailing_metadata() or ())
            if row.retryable:
                status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
                assert _has_retry_info(status)
                info = error_details_pb2.RetryInfo.FromString(trailing["google.rpc.retryinfo-bin"])
                assert info.retry_delay.seconds == row.retry_after_s
            else:
                assert "google.rpc.retryinfo-bin" not in trailing
            return
    assert row.grpc_code == grpc.StatusCode.OK
    answer = ExportTraceServiceResponse.FromString(reply)
    assert answer.HasField("partial_success") == (condition is Condition.PARTIAL)


def _has_retry_info(status: status_pb2.Status) -> bool:
    return any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)


def test_wrong_token_is_refused_without_echoing_it(receiver_for: Any) -> None:
    receiver = receiver_for(Case(_valid(), token=TOKEN))
    conn = http.client.HTTPConnection("127.0.0.1", receiver.http_port, timeout=10)
    headers = {"Content-Type": PROTOBUF, "Authorization": "Bearer guess-" + TOKEN}
    conn.request("POST", "/v1/traces", body=_valid(), headers=headers)
    response = conn.getresponse()
    body = response.read()
    assert response.status == 401 and b"guess" not in body and TOKEN.encode() not in body
    conn.close()
    with grpc.insecure_channel(f"127.0.0.1:{receiver.grpc_port}") as channel:
        call = channel.unary_unary(EXPORT_PATH)
        with pytest.raises(grpc.RpcError) as err:
            call(_valid(), metadata=(("authorization", "Bearer nope"),), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "nope" not in err.value.details()
        assert call(_valid(), metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=10) == b""


@pytest.mark.parametrize("condition", [Condition.OK, Condition.PARTIAL, Condition.UNDECODABLE])
def test_json_requests_get_json_answers(receiver_for: Any, condition: Condition) -> None:
    from receiver_support import otlp_json_body

    spans = sdk_spans(3)
    body = {
        Condition.OK: otlp_json_body(spans),
        Condition.PARTIAL: otlp_json_body(spans).replace(b'"spanId": "', b'"spanId": "zz', 1),
        Condition.UNDECODABLE: b'{"resourceSpans": [',
    }[condition]
    receiver = receiver_for(Case(body))
    response = _http(receiver, Case(body, content_type="application/json"))
    assert response.status == STATUS[condition].http_status
    assert response.getheader("Content-Type") == "application/json"
    import json

    answer = json.loads(response.body)  # type: ignore[attr-defined]
    if condition is Condition.OK:
        assert answer == {}
    elif condition is Condition.PARTIAL:
        assert answer["partialSuccess"]["rejectedSpans"] == "1"
        assert "spanId" in answer["partialSuccess"]["errorMessage"]
    else:
        assert answer["code"] == 3 and "invalid JSON" in answer["message"]


def test_request_bytes_beyond_the_budget_are_refused_as_overloaded() -> None:
    from tracelens.receiver import handler

    budget = handler.Budget(limit=len(_valid()) + 10)
    sink = Sink()
    with budget.hold(20):  # another request in progress
        with pytest.raises(ExportFault) as fault:
            handler.export(_valid(), handler.PROTOBUF, sink, "t", budget)
        assert fault.value.condition is Condition.OVERLOADED
    assert budget.used == 0
    assert handler.export(_valid(), handler.PROTOBUF, sink, "t", budget).accepted == 3
    big = export_request(sdk_spans(40)).SerializeToString()  # alone, even over the limit
    assert handler.export(big, handler.PROTOBUF, sink, "t", budget).accepted == 40
