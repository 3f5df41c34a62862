"""OTLP/gRPC: ``opentelemetry.proto.collector.trace.v1.TraceService/Export``.

The method is registered with raw-bytes (de)serializers, so undecodable requests reach our
decoder and get ``INVALID_ARGUMENT`` with a ``google.rpc.Status``, and the decoder parses
the bytes once. gRPC itself enforces the size limit on the decompressed message
(``RESOURCE_EXHAUSTED``) and handles gzip.

The server is gRPC's asyncio server on one event-loop thread: a request is decoded by a
worker process (``receiver.pool``; or in the loop's thread without one) and then awaits its
group commit without holding a thread. (The thread-per-request server spent its CPU
switching 64 threads that all want the GIL: its poller thread, which starts every call,
waited a switch interval each time, and ingest stalled at a fraction of what the decoder
does.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from tracelens.errors import ReceiverError
from tracelens.receiver import handler
from tracelens.receiver.status import STATUS, Condition, ExportFault, retry_info, rpc_status

if TYPE_CHECKING:
    from tracelens.receiver.auth import TokenCheck
    from tracelens.receiver.handler import SpanConsumer
    from tracelens.receiver.pool import DecodePool

log = logging.getLogger(__name__)

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
_T = TypeVar("_T")


class TraceService:
    """The Export method: auth, decode, hand to the consumer, answer."""

    def __init__(
        self,
        consumer: SpanConsumer,
        tokens: TokenCheck,
        budget: handler.Budget | None = None,
        pool: DecodePool | None = None,
    ) -> None:
        self.consumer = consumer
        self.tokens = tokens
        self.budget = budget
        self.pool = pool
        self.draining = False

    async def export(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            self._check(context)
            result = await handler.export_async(
                request, handler.PROTOBUF, self.consumer, _source(context), self.budget, self.pool
            )
        except ExportFault as fault:
            await _abort(context, fault.condition, fault.message)  # raises
            raise
        return handler.response_body(result, handler.PROTOBUF)

    def _check(self, context: grpc.aio.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata() or ())
        if not self.tokens.accepts(metadata.get("authorization")):
            raise ExportFault(Condition.UNAUTHENTICATED, "missing or wrong bearer token")
        if self.draining:
            raise ExportFault(Condition.SHUTTING_DOWN, "tracelens is shutting down; retry")


def _source(context: grpc.aio.ServicerContext) -> str:
    return f"gRPC Export from {context.peer()}"


async def _abort(context: grpc.aio.ServicerContext, condition: Condition, message: str) -> None:
    """End the call with the table's code and a ``google.rpc.Status`` (RetryInfo if retryable).

    The RetryInfo also goes alone under ``google.rpc.retryinfo-bin``: that is where the
    OpenTelemetry Python exporter looks for it.
    """
    metadata = [("grpc-status-details-bin", rpc_status(condition, message))]
    info = retry_info(condition)
    if info is not None:
        metadata.append(("google.rpc.retryinfo-bin", info.SerializeToString()))
    await context.abort(STATUS[condition].grpc_code, message, trailing_metadata=tuple(metadata))


class _Loop:
    """The process's one event-loop thread for gRPC servers (gRPC's asyncio stack is made
    for one loop; every server of the process, tests included, shares it)."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def run(cls, coro: Coroutine[Any, Any, _T], timeout_s: float | None = None) -> _T:
        return cls.submit(coro).result(timeout_s)

    @classmethod
    def submit(cls, coro: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        with cls._lock:
            if cls._loop is None:
                cls._loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=cls._loop.run_forever, name="tracelens-grpc", daemon=True
                )
                thread.start()
            loop = cls._loop
        return asyncio.run_coroutine_threadsafe(coro, loop)


class GrpcServer:
    """An OTLP/gRPC server bound to ``host:port``, driven from synchronous code."""

    def __init__(
        self,
        service: TraceService,
        host: str,
        port: int,
        *,
        max_request_bytes: int,
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self.service = service
        self._server, self.port = _Loop.run(
            _bind(service, host, port, max_request_bytes, credentials)
        )

    def start(self) -> None:
        _Loop.run(self._server.start())

    def stop(self, timeout_s: float | None) -> concurrent.futures.Future[None]:
        """Refuse new calls; the future is done when the running ones have finished (or
        were cancelled after ``timeout_s``)."""
        return _Loop.submit(self._server.stop(timeout_s))


async def _bind(
    service: TraceService,
    host: str,
    port: int,
    max_request_bytes: int,
    credentials: grpc.ServerCredentials | None,
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share
        ],
    )
    method = grpc.unary_unary_rpc_method_handler(
        service.export, request_deserializer=None, response_serializer=None
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Export": method}),)
    )
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise ReceiverError(f"cannot listen for OTLP/gRPC on {address}: {exc}") from exc
    if not bound:
        raise ReceiverError(f"cannot listen for OTLP/gRPC on {address} (port in use?)")
    return server, bound
