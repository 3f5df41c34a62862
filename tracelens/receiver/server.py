"""``tracelens serve``: start both transports over one writer, run until a signal, drain, stop.

:class:`Receiver` is the two servers around any ``SpanConsumer`` (tests run it in-process
with a sink); :func:`run` is the command: it opens the store, starts the writer and the
receiver, writes the state file that lets CLIs read through the server, prints one startup
line and, on SIGTERM or Ctrl-C, stops accepting, commits everything acknowledged-to-be and
exits 0.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import ssl
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tracelens.errors import ReceiverError
from tracelens.receiver.auth import TokenCheck

if TYPE_CHECKING:
    import grpc

    from tracelens.access import ServerState
    from tracelens.receiver.grpc_server import GrpcServer, TraceService
    from tracelens.receiver.handler import SpanConsumer
    from tracelens.receiver.http_server import OTLPHTTPServer
    from tracelens.receiver.journaled import JournaledStore
    from tracelens.receiver.pool import DecodePool
    from tracelens.receiver.readapi import ReadAPI
    from tracelens.receiver.writer import Writer
    from tracelens.store import Store

log = logging.getLogger("tracelens.serve")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_GRPC_PORT = 4317
DEFAULT_HTTP_PORT = 4318
DEFAULT_MAX_REQUEST_BYTES = 64 << 20
DRAIN_TIMEOUT_S = 30.0
REQUEST_BUDGET_FACTOR = 4  # request bytes in progress at once, in units of the size limit
SWITCH_INTERVAL_S = 0.0002


@dataclass(frozen=True)
class ServeConfig:
    db: str
    host: str = DEFAULT_HOST
    grpc_port: int = DEFAULT_GRPC_PORT
    http_port: int = DEFAULT_HTTP_PORT
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    tls_cert: str | None = None
    tls_key: str | None = None
    token: str | None = None
    token_file: str | None = None  # recorded in the state file so local CLIs find the token
    max_pending_spans: int | None = None
    decode_workers: int = 0  # processes decoding OTLP/gRPC requests; 0: the event loop


def default_decode_workers() -> int:
    """Decoding processes for ``serve``: the other cores but one, which the writer needs."""
    cpus = os.cpu_count() or 1
    return 0 if cpus < 2 else min(4, cpus - 1)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(config: ServeConfig) -> str | None:
    """The startup warning for a non-loopback address without TLS or without a token."""
    if is_loopback(config.host):
        return None
    missing = [
        what
        for what, present in (("TLS", config.tls_cert), ("an auth token", config.token))
        if not present
    ]
    if not missing:
        return None
    return (
        f"warning: listening on {config.host} without {' or '.join(missing)}: anyone who can "
        "reach this address can write spans and read the store "
        "(use --tls-cert/--tls-key and --auth-token-file)"
    )


def _url_host(host: str) -> str:
    """The address a local client should dial: wildcard binds are reached on loopback."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class Receiver:
    """The gRPC and HTTP servers around one consumer."""

    def __init__(
        self, config: ServeConfig, consumer: SpanConsumer, read_api: ReadAPI | None = None
    ) -> None:
        self.config = config
        self.consumer = consumer
        self.read_api = read_api
        self.tokens = TokenCheck(config.token)
        self.grpc_port = 0
        self.http_port = 0
        self._grpc: GrpcServer | None = None
        self._service: TraceService | None = None
        self._http: OTLPHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._pool: DecodePool | None = None

    @property
    def tls(self) -> bool:
        return bool(self.config.tls_cert)

    @property
    def grpc_target(self) -> str:
        return f"{_url_host(self.config.host)}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{_url_host(self.config.host)}:{self.http_port}"

    def start(self) -> Receiver:
        from tracelens.receiver.grpc_server import GrpcServer, TraceService
        from tracelens.receiver.handler import Budget
        from tracelens.receiver.http_server import OTLPHTTPServer

        tls_context, credentials = _tls(self.config)
        cfg = self.config
        budget = Budget(REQUEST_BUDGET_FACTOR * cfg.max_request_bytes)
        self._service = TraceService(self.consumer, self.tokens, budget)
        self._grpc = GrpcServer(
            self._service, cfg.host, cfg.grpc_port,
            max_request_bytes=cfg.max_request_bytes, credentials=credentials,
        )  # fmt: skip
        self.grpc_port = self._grpc.port
        try:
            self._http = OTLPHTTPServer(
                (cfg.host, cfg.http_port), self.consumer,
                max_request_bytes=cfg.max_request_bytes, tokens=self.tokens,
                read_api=self.read_api, tls=tls_context, budget=budget,
            )  # fmt: skip
        except OSError as exc:
            self._grpc.stop(None).result(10)
            raise ReceiverError(
                f"cannot listen for OTLP/HTTP on {cfg.host}:{cfg.http_port}: {exc.strerror}"
            ) from exc
        self.http_port = self._http.server_address[1]
        self._grpc.start()
        self._http_thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.2},
            name="tracelens-http", daemon=True,
        )  # fmt: skip
        self._http_thread.start()
        if cfg.decode_workers:
            from tracelens.receiver.pool import DecodePool

            self._pool = self._service.pool = DecodePool(cfg.decode_workers)
        return self

    def stop(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Refuse new requests and wait (bounded) for the running ones to be answered."""
        if self._service is not None:
            self._service.draining = True
        done = self._grpc.stop(timeout_s) if self._grpc is not None else None
        if self._http is not None:
            if not self._http.drain(timeout_s):
                log.warning("HTTP requests still running after %.0f s", timeout_s)
            self._http.server_close()
        if done is not None:
            done.result(timeout_s + 10)
        if self._pool is not None:
            self._pool.close()


def _tls(config: ServeConfig) -> tuple[ssl.SSLContext | None, grpc.ServerCredentials | None]:
    if not config.tls_cert and not config.tls_key:
        return None, None
    if not (config.tls_cert and config.tls_key):
        raise ReceiverError("--tls-cert and --tls-key go together")
    import grpc

    try:
        cert = Path(config.tls_cert).read_bytes()
        key = Path(config.tls_key).read_bytes()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ReceiverError(f"cannot load the TLS certificate/key: {exc}") from exc
    return context, grpc.ssl_server_credentials([(key, cert)])


# --- the command's lifecycle ----------------------------------------------------------------------


def run(config: ServeConfig, *, out=None) -> int:  # noqa: ANN001 — a text stream
    """Serve until SIGTERM/SIGINT; returns the exit code (0 after a clean drain)."""
    from tracelens.access import remove_state, write_state

    out = out or sys.stdout
    logging.basicConfig(level=logging.WARNING, format="tracelens serve: %(levelname)s: %(message)s")
    warning = exposure_warning(config)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    tune_runtime()
    stop = threading.Event()
    _on_signals(stop)
    store, journaled, writer, receiver = _start(config)
    state = _state(config, receiver, store.path)
    write_state(state)
    print(
        f"tracelens serve: OTLP/gRPC {receiver.grpc_target}, "
        f"OTLP/HTTP {receiver.http_url}/v1/traces, store {store.path} (Ctrl-C to stop)",
        file=out, flush=True,
    )  # fmt: skip
    try:
        while not stop.wait(0.5):
            pass
        print("tracelens serve: stopping: answering running requests…", file=out, flush=True)
        receiver.stop()
        drained = writer.close()
        drained = journaled.close() and drained
    finally:
        remove_state(state)
        store.close()
    stored, journal = journaled.stats, writer.stats
    print(
        f"tracelens serve: stopped; {stored.inserted} new spans stored in {stored.commits} "
        f"commits ({stored.seconds:.1f} s storing; {journal.commits} journal commits, "
        f"{journal.commit_seconds:.1f} s journaling, {journal.convert_seconds:.1f} s converting; "
        f"{journal.requests} requests answered {_ms(journal.wait_seconds, journal.requests)} "
        "after reaching the writer, on average)",
        file=out, flush=True,
    )  # fmt: skip
    return 0 if drained else 1


def _ms(seconds: float, count: int) -> str:
    return f"{seconds / count * 1e3:.0f} ms" if count else "–"


def _start(config: ServeConfig) -> tuple[Store, JournaledStore, Writer, Receiver]:
    """Open the store, start the writer and bind both ports; undo it all if a step fails."""
    from tracelens.access import live_server
    from tracelens.journal import Journal
    from tracelens.receiver.journaled import JournaledStore
    from tracelens.receiver.readapi import ReadAPI
    from tracelens.receiver.writer import MAX_PENDING_SPANS, Writer, tune_store
    from tracelens.store import Store

    db = os.path.realpath(config.db)
    holder = live_server(db)
    if holder is not None:
        raise ReceiverError(f"{db} is already served by pid {holder.pid} at {holder.http}")
    existed = os.path.exists(db)
    store = Store(db)  # replays the journal a killed server left
    tune_store(store)
    journaled = JournaledStore(store, Journal(db))
    writer = Writer(journaled, max_pending_spans=config.max_pending_spans or MAX_PENDING_SPANS)
    try:
        receiver = Receiver(config, writer.start(), ReadAPI(store, journaled.settle)).start()
    except BaseException:
        writer.close()
        journaled.close()
        store.close()
        if not existed:  # do not leave an empty store behind a failed start
            for path in (db, db + ".wal"):
                with contextlib.suppress(OSError):
                    os.remove(path)
        raise
    return store, journaled, writer, receiver


def _state(config: ServeConfig, receiver: Receiver, db: str) -> ServerState:
    from tracelens.access import ServerState

    def real(path: str | None) -> str | None:
        return os.path.realpath(path) if path else None

    return ServerState(
        pid=os.getpid(), http=receiver.http_url, grpc=receiver.grpc_target, db=db,
        token_required=receiver.tokens.required, token_file=real(config.token_file),
        tls_cert=real(config.tls_cert),
    )  # fmt: skip


def _on_signals(stop: threading.Event) -> None:
    def handle(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def tune_runtime() -> None:
    """Interpreter settings for a serving process (the benchmark applies them too)."""
    import gc

    # Decoding builds many short-lived containers; the default gen-0 threshold (700) makes
    # the cyclic GC rescan them constantly. The long-lived startup objects are frozen.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    # The writer's DuckDB calls give the GIL up and take it back dozens of times a commit;
    # while a thread converts or decodes, each take waits out the switch interval (5 ms by
    # default). Measured: a commit of 10k spans beside a busy Python thread ran at 29k
    # spans/s with 5 ms, 47k with 1 ms, 64k with 0.2 ms (100k alone). Decoding moves to
    # worker processes for the same reason (receiver.pool).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
