"""Decoding in worker processes: the same answers as in-process, and a dead worker is replaced."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pyarrow as pa
import pytest
from receiver_support import export_request, sdk_spans

from tracelens.errors import InputFormatError
from tracelens.model import SPAN_SCHEMA
from tracelens.receiver.decode import Decoder
from tracelens.receiver.pool import DecodePool, WorkerDied


@pytest.fixture(scope="module")
def pool() -> Iterator[DecodePool]:
    started = DecodePool(1)
    yield started
    started.close()


def _decode(pool: DecodePool, body: bytes, source: str = "req") -> object:
    return asyncio.run(pool.decode(body, source))


def test_worker_rows_equal_the_in_process_rows(pool: DecodePool) -> None:
    body = export_request(sdk_spans(30)).SerializeToString()
    result = _decode(pool, body)
    assert result.accepted == 30 and result.rejected == []  # type: ignore[attr-defined]
    here = Decoder().decode(body, "req")
    got = pa.Table.from_batches(result.batches, schema=SPAN_SCHEMA)  # type: ignore[attr-defined]
    assert got.equals(pa.Table.from_batches(here.batches, schema=SPAN_SCHEMA))


def test_rejected_spans_come_back_with_their_messages(pool: DecodePool) -> None:
    request = export_request(sdk_spans(3))
    request.resource_spans[0].scope_spans[0].spans[1].span_id = bytes(8)
    result = _decode(pool, request.SerializeToString())
    assert result.accepted == 2  # type: ignore[attr-defined]
    assert result.rejected == [  # type: ignore[attr-defined]
        "resource_spans[0].scope_spans[0].spans[1]: span_id is all zeros"
    ]


def test_undecodable_bytes_raise_input_format_error(pool: DecodePool) -> None:
    with pytest.raises(InputFormatError) as err:
        _decode(pool, b"\xff\xff\xff", "gRPC Export from test")
    assert err.value.source == "gRPC Export from test"
    assert "not an OTLP protobuf" in err.value.problem


def test_an_empty_request_has_no_batches(pool: DecodePool) -> None:
    result = _decode(pool, b"")
    assert (result.batches, result.accepted) == ([], 0)  # type: ignore[attr-defined]


def test_a_worker_that_died_idle_is_replaced_before_the_next_request() -> None:
    pool = DecodePool(1)
    try:
        body = export_request(sdk_spans(5)).SerializeToString()
        assert _decode(pool, body).accepted == 5  # type: ignore[attr-defined]
        pids = pool.worker_pids()
        assert len(pids) == 1
        os.kill(pids[0], signal.SIGKILL)
        time.sleep(0.2)
        assert _decode(pool, body).accepted == 5  # type: ignore[attr-defined]
        assert pool.worker_pids() not in ([], pids)
    finally:
        pool.close()
    assert pool.worker_pids() == []


@contextmanager
def _pool_of_failing_workers(
    monkeypatch: pytest.MonkeyPatch, code: str
) -> Iterator[tuple[DecodePool, Callable[[], None]]]:
    """A pool whose workers run ``code`` instead of decoding, and a function that makes the
    workers started after it real ones again."""
    from tracelens.receiver import pool as pool_module

    real = list(pool_module.WORKER_COMMAND)
    monkeypatch.setattr(pool_module, "WORKER_COMMAND", [sys.executable, "-c", code])
    pool = DecodePool(1)
    try:
        yield pool, lambda: monkeypatch.setattr(pool_module, "WORKER_COMMAND", real)
    finally:
        pool.close()


def test_a_worker_dying_on_a_request_fails_only_that_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    crashing = "import sys; sys.stdin.buffer.read(8); sys.exit(3)"
    with _pool_of_failing_workers(monkeypatch, crashing) as (pool, make_real):
        body = export_request(sdk_spans(5)).SerializeToString()
        with pytest.raises(WorkerDied):
            _decode(pool, body)
        make_real()
        assert _decode(pool, body).accepted == 5  # type: ignore[attr-defined]


def test_requests_in_flight_together_get_their_own_answers(pool: DecodePool) -> None:
    """More requests than the pipeline holds, decoded at once: each caller gets its rows."""
    from tracelens.receiver.pool import PIPELINE_DEPTH

    bodies = [
        export_request(sdk_spans(5 + i, service=f"svc-{i}")).SerializeToString()
        for i in range(3 * PIPELINE_DEPTH)
    ]

    async def all_at_once() -> list:
        return await asyncio.gather(*(pool.decode(b, f"req-{i}") for i, b in enumerate(bodies)))

    results = asyncio.run(all_at_once())
    for i, result in enumerate(results):
        services = set(pa.Table.from_batches(result.batches)["service"].to_pylist())
        assert (result.accepted, services) == (5 + i, {f"svc-{i}"})


def test_close_answers_the_requests_already_in_a_workers_pipe() -> None:
    """Shutdown drains: requests sent to the worker before close are decoded, not failed."""
    from tracelens.receiver.pool import PIPELINE_DEPTH

    pool = DecodePool(1)
    body = export_request(sdk_spans(200)).SerializeToString()

    async def close_while_decoding() -> list:
        calls = [
            asyncio.ensure_future(pool.decode(body, f"req-{i}")) for i in range(PIPELINE_DEPTH)
        ]
        await asyncio.sleep(0)  # the jobs are queued; close() lets the dispatcher send them first
        await asyncio.get_running_loop().run_in_executor(None, pool.close)
        return await asyncio.wait_for(asyncio.gather(*calls), 30)

    results = asyncio.run(close_while_decoding())
    assert [r.accepted for r in results] == [200] * PIPELINE_DEPTH
    assert pool.worker_pids() == []


def test_a_worker_dying_with_requests_in_its_pipe_fails_them_all_then_recovers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker answers none of the requests sent to it and exits: every request waiting on
    it fails with WorkerDied (none hangs), and the next one gets a fresh worker."""
    from tracelens.receiver.pool import PIPELINE_DEPTH

    silent = "import sys, time; time.sleep(0.5); sys.exit(3)"
    with _pool_of_failing_workers(monkeypatch, silent) as (pool, make_real):
        body = export_request(sdk_spans(5)).SerializeToString()

        async def several() -> list:
            calls = (pool.decode(body, f"req-{i}") for i in range(PIPELINE_DEPTH))
            return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 20)

        assert [type(o) for o in asyncio.run(several())] == [WorkerDied] * PIPELINE_DEPTH
        make_real()
        assert _decode(pool, body).accepted == 5  # type: ignore[attr-defined]


def test_grpc_answers_through_a_worker() -> None:
    import grpc
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceResponse,
    )
    from receiver_support import EXPORT_PATH

    from tracelens.receiver.server import Receiver, ServeConfig

    class Sink:
        def __init__(self) -> None:
            self.batches: list = []

        def consume(self, batches: list) -> None:
            self.batches.extend(batches)

    sink = Sink()
    config = ServeConfig(db="unused", grpc_port=0, http_port=0, decode_workers=1)
    receiver = Receiver(config, sink).start()
    try:
        partial = export_request(sdk_spans(4))
        partial.resource_spans[0].scope_spans[0].spans[0].trace_id = b"\x01"
        with grpc.insecure_channel(f"127.0.0.1:{receiver.grpc_port}") as channel:
            call = channel.unary_unary(EXPORT_PATH)
            reply = ExportTraceServiceResponse.FromString(call(partial.SerializeToString()))
            assert reply.partial_success.rejected_spans == 1
            with pytest.raises(grpc.RpcError) as err:
                call(b"\xff\xff\xff", timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert sum(b.num_rows for b in sink.batches) == 3
    finally:
        receiver.stop(5)
