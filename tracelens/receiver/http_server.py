"""OTLP/HTTP: ``POST /v1/traces`` (protobuf or JSON, gzip/deflate) and the read API.

A threading HTTP/1.1 server from the standard library; each request is short: check the
token, read the body under the size limit, call ``handler.export``, answer in the request's
content type. Errors are ``google.rpc.Status`` bodies with the status from ``status.STATUS``.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from tracelens.receiver import handler
from tracelens.receiver.auth import TokenCheck
from tracelens.receiver.body import ENCODINGS, BodyReader
from tracelens.receiver.readapi import PREFIX
from tracelens.receiver.status import STATUS, Condition, ExportFault, rpc_status, rpc_status_json

if TYPE_CHECKING:
    from tracelens.receiver.handler import SpanConsumer
    from tracelens.receiver.readapi import ReadAPI

log = logging.getLogger(__name__)

TRACES_PATH = "/v1/traces"
CONTENT_TYPES = {
    "application/x-protobuf": handler.PROTOBUF,
    "application/protobuf": handler.PROTOBUF,
    "application/json": handler.JSON,
}
_RESPONSE_TYPES = {handler.PROTOBUF: "application/x-protobuf", handler.JSON: "application/json"}
IDLE_TIMEOUT_S = 30  # an idle keep-alive connection is closed after this long


class OTLPHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        consumer: SpanConsumer,
        *,
        max_request_bytes: int,
        tokens: TokenCheck,
        read_api: ReadAPI | None = None,
        tls: ssl.SSLContext | None = None,
        budget: handler.Budget | None = None,
    ) -> None:
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__(address, _Handler)
        self.consumer = consumer
        self.max_request_bytes = max_request_bytes
        self.tokens = tokens
        self.read_api = read_api
        self.budget = budget
        self.draining = False
        self._in_flight = 0
        self._idle = threading.Condition()
        if tls is not None:
            # The handshake runs in the request thread, not in the accept loop.
            self.socket = tls.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )

    def track(self, delta: int) -> None:
        with self._idle:
            self._in_flight += delta
            if not self._in_flight:
                self._idle.notify_all()

    def drain(self, timeout_s: float) -> bool:
        """Stop accepting, let running requests finish; True when none is left."""
        self.draining = True
        self.shutdown()
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout_s)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tracelens"
    sys_version = ""
    timeout = IDLE_TIMEOUT_S
    server: OTLPHTTPServer

    def do_POST(self) -> None:
        self._dispatch()

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_POST

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 — the base's name
        log.debug("%s " + format, self.client_address[0], *args)

    def _dispatch(self) -> None:
        self.server.track(+1)
        try:
            path, _, query = self.path.partition("?")
            if path == TRACES_PATH:
                self._export()
            elif path.startswith(PREFIX) and self.server.read_api is not None:
                self._read(path, query)
            else:
                self._fail(Condition.NOT_FOUND, f"no such endpoint: {path}", None)
        finally:
            self.server.track(-1)

    # -- OTLP export ---------------------------------------------------------------------------

    def _export(self) -> None:
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        encoding = CONTENT_TYPES.get(ctype)
        compression = self.headers.get("Content-Encoding", "").strip().lower()
        refusal = self._refusal(ctype, encoding, compression)
        if refusal is not None:
            self._fail(*refusal, encoding)
            return
        assert encoding is not None
        body = self._body_reader(ENCODINGS[compression])
        try:
            data = body.read()
            server = self.server
            result = handler.export(data, encoding, server.consumer, self._source(), server.budget)
        except ExportFault as fault:
            self._fail(fault.condition, fault.message, encoding, body)
            return
        self._send(200, _RESPONSE_TYPES[encoding], handler.response_body(result, encoding))

    def _refusal(
        self, ctype: str, encoding: str | None, compression: str
    ) -> tuple[Condition, str] | None:
        """Why the request is refused before its body is read, if it is."""
        if self.command != "POST":
            return Condition.METHOD_NOT_ALLOWED, f"{self.command} {TRACES_PATH}: use POST"
        if not self.server.tokens.accepts(self.headers.get("Authorization")):
            return Condition.UNAUTHENTICATED, "missing or wrong bearer token"
        if self.server.draining:
            return Condition.SHUTTING_DOWN, "tracelens is shutting down; retry"
        if encoding is None:
            problem = f"Content-Type {ctype or '(none)'!r}: send application/x-protobuf or JSON"
            return Condition.UNSUPPORTED_MEDIA_TYPE, problem
        if compression not in ENCODINGS:
            problem = f"Content-Encoding {compression!r}: use gzip, deflate or none"
            return Condition.UNSUPPORTED_MEDIA_TYPE, problem
        return None

    def _source(self) -> str:
        return f"POST {TRACES_PATH} from {self.client_address[0]}"

    def _body_reader(self, compression: str | None) -> BodyReader:
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
            self.close_connection = True
        return BodyReader(self.rfile, length, chunked, compression, self.server.max_request_bytes)

    # -- read API ------------------------------------------------------------------------------

    def _read(self, path: str, query: str) -> None:
        public = path.rstrip("/") == PREFIX + "health"
        if not public and not self.server.tokens.accepts(self.headers.get("Authorization")):
            self._fail(Condition.UNAUTHENTICATED, "missing or wrong bearer token", handler.JSON)
            return
        reader = self._body_reader(None)
        reply = self.server.read_api.handle(  # type: ignore[union-attr]
            self.command, path, query, lambda limit: _bounded(reader, limit)
        )
        if reader.remaining:
            self.close_connection = True
        self._send(reply.status, reply.content_type, reply.body)

    # -- responses ------------------------------------------------------------------------------

    def _fail(
        self,
        condition: Condition,
        message: str,
        encoding: str | None,
        body: BodyReader | None = None,
    ) -> None:
        """An error answer; the unread body is drained (bounded) or the connection closed."""
        body = body or self._body_reader(None)
        if not body.discard(4 * self.server.max_request_bytes):
            self.close_connection = True
        row = STATUS[condition]
        if encoding == handler.PROTOBUF:
            payload, ctype = rpc_status(condition, message), "application/x-protobuf"
        else:
            payload, ctype = rpc_status_json(condition, message), "application/json"
        headers = {}
        if row.retry_after_s is not None:
            headers["Retry-After"] = str(row.retry_after_s)
        if condition is Condition.METHOD_NOT_ALLOWED:
            headers["Allow"] = "POST"
        self._send(row.http_status, ctype, payload, headers)

    def _send(
        self, status: int, ctype: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection or self.server.draining:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


def _bounded(reader: BodyReader, limit: int) -> bytes:
    reader.limit = limit
    return reader.read()
