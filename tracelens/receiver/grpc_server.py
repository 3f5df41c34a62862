"""OTLP/gRPC: ``opentelemetry.proto.collector.trace.v1.TraceService/Export``.

The method is registered with raw-bytes (de)serializers, so undecodable requests reach our
decoder and get ``INVALID_ARGUMENT`` with a ``google.rpc.Status``, and the decoder parses
the bytes once. gRPC itself enforces the size limit on the decompressed message
(``RESOURCE_EXHAUSTED``) and handles gzip.
"""

from __future__ import annotations

import logging
from concurrent import futures
from typing import TYPE_CHECKING

import grpc

from tracelens.errors import ReceiverError
from tracelens.receiver import handler
from tracelens.receiver.status import STATUS, Condition, ExportFault, retry_info, rpc_status

if TYPE_CHECKING:
    from tracelens.receiver.auth import TokenCheck
    from tracelens.receiver.handler import SpanConsumer

log = logging.getLogger(__name__)

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
WORKERS = 64  # request threads; most of them wait for a group commit, not the CPU


class TraceService:
    """The Export method: auth, decode, hand to the consumer, answer."""

    def __init__(
        self, consumer: SpanConsumer, tokens: TokenCheck, budget: handler.Budget | None = None
    ) -> None:
        self.consumer = consumer
        self.tokens = tokens
        self.budget = budget
        self.draining = False

    def export(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            self._check(context)
            result = handler.export(
                request, handler.PROTOBUF, self.consumer, _source(context), self.budget
            )
        except ExportFault as fault:
            _abort(context, fault.condition, fault.message)  # raises
            raise
        return handler.response_body(result, handler.PROTOBUF)

    def _check(self, context: grpc.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata() or ())
        if not self.tokens.accepts(metadata.get("authorization")):
            raise ExportFault(Condition.UNAUTHENTICATED, "missing or wrong bearer token")
        if self.draining:
            raise ExportFault(Condition.SHUTTING_DOWN, "tracelens is shutting down; retry")


def _source(context: grpc.ServicerContext) -> str:
    return f"gRPC Export from {context.peer()}"


def _abort(context: grpc.ServicerContext, condition: Condition, message: str) -> None:
    """End the call with the table's code and a ``google.rpc.Status`` (RetryInfo if retryable).

    The RetryInfo also goes alone under ``google.rpc.retryinfo-bin``: that is where the
    OpenTelemetry Python exporter looks for it.
    """
    metadata = [("grpc-status-details-bin", rpc_status(condition, message))]
    info = retry_info(condition)
    if info is not None:
        metadata.append(("google.rpc.retryinfo-bin", info.SerializeToString()))
    context.set_trailing_metadata(tuple(metadata))
    context.abort(STATUS[condition].grpc_code, message)


def build_server(
    service: TraceService,
    host: str,
    port: int,
    *,
    max_request_bytes: int,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.Server, int]:
    """A started-but-not-running gRPC server bound to ``host:port``, and the bound port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="tracelens-grpc"),
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
