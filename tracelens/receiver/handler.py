"""The OTLP export handler: body → span batches → the next consumer → response.

OTLP/HTTP calls :func:`export` from its request threads, OTLP/gRPC :func:`export_async` from
its event loop; neither knows about sockets. The store's writer is one
:class:`SpanConsumer`; tests pass an in-memory sink.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from tracelens.errors import InputFormatError
from tracelens.receiver.status import Condition, ExportFault

if TYPE_CHECKING:
    import pyarrow as pa

    from tracelens.receiver.pool import DecodePool

log = logging.getLogger(__name__)

PROTOBUF = "protobuf"
JSON = "json"
_MESSAGES_SHOWN = 5  # rejected-span messages quoted in a partial-success answer


class SpanConsumer(Protocol):
    """Takes record batches of ``SPAN_SCHEMA``; one whose ``takes_columns`` is true also
    takes the decoder's unconverted ``receiver.columns.Columns`` blocks in their place."""

    def consume(self, batches: list[pa.RecordBatch]) -> None:
        """Return once the spans are durable; raise ``ExportFault`` when they cannot be."""


@dataclass(frozen=True)
class ExportResult:
    accepted: int
    rejected: int
    error_message: str = ""

    @property
    def condition(self) -> Condition:
        return Condition.PARTIAL if self.rejected else Condition.OK


class Budget:
    """Bytes of request bodies being decoded or waiting for a commit, across both transports.

    The write queue bounds the spans waiting; this bounds the requests in front of it, so
    many large requests at once are refused (retryable) instead of growing memory.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, size: int) -> Iterator[None]:
        with self._lock:
            # One request is always admitted when nothing else is held.
            if self.used and self.used + size > self.limit:
                raise ExportFault(
                    Condition.OVERLOADED, f"{self.used} bytes of requests in progress; retry later"
                )
            self.used += size
        try:
            yield
        finally:
            with self._lock:
                self.used -= size


def export(
    body: bytes,
    encoding: str,
    consumer: SpanConsumer,
    source: str,
    budget: Budget | None = None,
) -> ExportResult:
    """Decode one ``ExportTraceServiceRequest`` and hand its valid spans to ``consumer``."""
    with _faults(source), budget.hold(len(body)) if budget is not None else nullcontext():
        batches, accepted, rejected = _decode(body, encoding, source, consumer)
        if accepted:
            consumer.consume(batches)
    return ExportResult(accepted, len(rejected), _summary(rejected, accepted))


async def export_async(
    body: bytes,
    encoding: str,
    consumer: SpanConsumer,
    source: str,
    budget: Budget | None = None,
    pool: DecodePool | None = None,
) -> ExportResult:
    """:func:`export` for an event loop: decodes protobuf in ``pool``'s worker processes
    (else in the loop's thread) and awaits the commit.

    A consumer with ``consume_async`` (the writer) is awaited; any other consumer runs in
    the loop's default executor.
    """
    with _faults(source), budget.hold(len(body)) if budget is not None else nullcontext():
        if pool is not None and encoding == PROTOBUF:
            decoded = await pool.decode(body, source)
            batches, accepted, rejected = decoded.batches, decoded.accepted, decoded.rejected
        else:
            batches, accepted, rejected = _decode(body, encoding, source, consumer)
        if accepted:
            consume_async = getattr(consumer, "consume_async", None)
            if consume_async is not None:
                await consume_async(batches)
            else:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, consumer.consume, batches)
    return ExportResult(accepted, len(rejected), _summary(rejected, accepted))


@contextmanager
def _faults(source: str) -> Iterator[None]:
    """Undecodable bytes and bugs as the table's conditions; ``ExportFault`` passes."""
    try:
        yield
    except ExportFault:
        raise
    except InputFormatError as exc:
        raise ExportFault(Condition.UNDECODABLE, str(exc)) from exc
    except Exception as exc:
        log.exception("%s: export failed", source)
        problem = f"internal error ({type(exc).__name__}); see the tracelens log"
        raise ExportFault(Condition.INTERNAL, problem) from exc


def _decode(
    body: bytes, encoding: str, source: str, consumer: SpanConsumer
) -> tuple[list[Any], int, list[str]]:
    """(batches or, for a consumer that takes them, unconverted column blocks; accepted
    span count; rejected-span messages)."""
    if encoding == PROTOBUF:
        from tracelens.receiver.decode import decode

        decoded = decode(body, source)
        items = decoded.blocks if getattr(consumer, "takes_columns", False) else decoded.batches
        return items, decoded.accepted, decoded.rejected
    from tracelens.importers.otlp_json import convert_document, parse_bytes
    from tracelens.model import SpanBatchBuilder

    if not body.strip():
        return [], 0, []  # an empty body is an empty request
    builder = SpanBatchBuilder()
    rejected = convert_document(parse_bytes(body, source), source, builder, strict=False)
    accepted = len(builder)
    batch = builder.flush()
    return ([batch] if batch is not None else []), accepted, rejected


def _summary(rejected: list[str], accepted: int) -> str:
    if not rejected:
        return ""
    shown = "; ".join(rejected[:_MESSAGES_SHOWN])
    more = (
        f"; and {len(rejected) - _MESSAGES_SHOWN} more" if len(rejected) > _MESSAGES_SHOWN else ""
    )
    return f"rejected {len(rejected)} invalid span(s), stored {accepted}: {shown}{more}"


def response_body(result: ExportResult, encoding: str) -> bytes:
    """``ExportTraceServiceResponse``: empty on full success, ``partial_success`` otherwise."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTracePartialSuccess,
        ExportTraceServiceResponse,
    )

    response = ExportTraceServiceResponse()
    if result.rejected:
        response.partial_success.CopyFrom(
            ExportTracePartialSuccess(
                rejected_spans=result.rejected, error_message=result.error_message
            )
        )
    if encoding == JSON:
        from google.protobuf import json_format

        return json_format.MessageToJson(response, indent=None).encode()
    return response.SerializeToString()
