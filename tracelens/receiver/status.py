"""The one table from receiver conditions to gRPC code, HTTP status and retryability.

Both transports answer through :data:`STATUS`; a parametrized test sends a request for every
row. Retryable rows carry ``retry_after_s``: gRPC sends it as ``RetryInfo``, HTTP as
``Retry-After`` (the OTLP specification's throttling signals).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import grpc

from tracelens.errors import TracelensError


class Condition(Enum):
    OK = "ok"
    PARTIAL = "partial"  # some spans rejected; the rest stored
    UNDECODABLE = "undecodable"
    TOO_LARGE = "too_large"  # over --max-request-bytes after decompression
    OVERLOADED = "overloaded"  # the write queue is full
    SHUTTING_DOWN = "shutting_down"
    COMMIT_FAILED = "commit_failed"  # the store could not commit (disk full, …)
    UNAUTHENTICATED = "unauthenticated"
    NOT_FOUND = "not_found"  # unknown path / method name
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"  # content type or content encoding
    INTERNAL = "internal"  # a bug: logged with its traceback


@dataclass(frozen=True)
class Status:
    grpc_code: grpc.StatusCode
    http_status: int
    retryable: bool
    retry_after_s: int | None = None


STATUS: dict[Condition, Status] = {
    Condition.OK: Status(grpc.StatusCode.OK, 200, False),
    Condition.PARTIAL: Status(grpc.StatusCode.OK, 200, False),
    Condition.UNDECODABLE: Status(grpc.StatusCode.INVALID_ARGUMENT, 400, False),
    Condition.TOO_LARGE: Status(grpc.StatusCode.RESOURCE_EXHAUSTED, 413, False),
    Condition.OVERLOADED: Status(grpc.StatusCode.UNAVAILABLE, 503, True, 1),
    Condition.SHUTTING_DOWN: Status(grpc.StatusCode.UNAVAILABLE, 503, True, 5),
    Condition.COMMIT_FAILED: Status(grpc.StatusCode.UNAVAILABLE, 503, True, 5),
    Condition.UNAUTHENTICATED: Status(grpc.StatusCode.UNAUTHENTICATED, 401, False),
    Condition.NOT_FOUND: Status(grpc.StatusCode.UNIMPLEMENTED, 404, False),
    Condition.METHOD_NOT_ALLOWED: Status(grpc.StatusCode.UNIMPLEMENTED, 405, False),
    Condition.UNSUPPORTED_MEDIA_TYPE: Status(grpc.StatusCode.INVALID_ARGUMENT, 415, False),
    Condition.INTERNAL: Status(grpc.StatusCode.INTERNAL, 500, False),
}


class ExportFault(TracelensError):
    """A request the receiver answers with an error: the condition picks the status."""

    def __init__(self, condition: Condition, message: str) -> None:
        super().__init__(message)
        self.condition = condition
        self.message = message

    @property
    def status(self) -> Status:
        return STATUS[self.condition]


def rpc_status(condition: Condition, message: str) -> bytes:
    """A serialized ``google.rpc.Status``, with ``RetryInfo`` for retryable conditions."""
    from google.rpc import error_details_pb2, status_pb2

    row = STATUS[condition]
    status = status_pb2.Status(code=row.grpc_code.value[0], message=message)
    info = retry_info(condition)
    if info is not None:
        status.details.add().Pack(info)
    elif row.grpc_code is grpc.StatusCode.INVALID_ARGUMENT:
        bad = error_details_pb2.BadRequest()
        bad.field_violations.add(description=message)
        status.details.add().Pack(bad)
    return status.SerializeToString()


def retry_info(condition: Condition) -> Any:
    """A ``google.rpc.RetryInfo`` for retryable conditions, else None."""
    from google.protobuf.duration_pb2 import Duration
    from google.rpc import error_details_pb2

    seconds = STATUS[condition].retry_after_s
    if seconds is None:
        return None
    return error_details_pb2.RetryInfo(retry_delay=Duration(seconds=seconds))


def rpc_status_json(condition: Condition, message: str) -> bytes:
    """The same ``google.rpc.Status`` in the proto3 JSON mapping (for OTLP/HTTP JSON)."""
    from google.protobuf import json_format
    from google.rpc import status_pb2

    status = status_pb2.Status.FromString(rpc_status(condition, message))
    return json_format.MessageToJson(status, indent=None).encode()
