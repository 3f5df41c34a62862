"""Reading a store whether or not ``tracelens serve`` holds it.

DuckDB lets one process open a database file. While ``serve`` runs, it writes a state file
beside the DB (``<db>.tracelens-server.json``: pid, read-API address, whether a token is
needed — never the token) and CLIs read through its HTTP read API; otherwise they open the
file. :func:`open_reader` chooses, so a user never meets a lock error. A state file whose
pid is dead (``kill -9``) is ignored.

Both readers offer the Store's read methods: ``get_trace``, ``list_traces``, ``scan``,
``count_spans``, ``count_traces``, ``close``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlencode

from tracelens.errors import StoreError, StoreLockedError

# ssl and urllib.request (≈ 35 ms to import) are loaded only when a server is there to talk
# to: a cold `explain` on a file pays for neither.
if TYPE_CHECKING:
    import ssl
    import urllib.error

    import pyarrow as pa

    from tracelens.model import Finding, Span
    from tracelens.store import TraceSummary

STATE_SUFFIX = ".tracelens-server.json"
HEALTH_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 300.0
STARTUP_WAIT_S = 5.0  # a server that holds the lock but has not written its state file yet


class Reader(Protocol):
    def get_trace(self, trace_id: str) -> pa.Table: ...
    def list_traces(self, **filters: Any) -> list[TraceSummary]: ...
    def scan(self, columns: Sequence[str] | None = None, **filters: Any) -> pa.Table: ...
    def count_spans(self) -> int: ...
    def count_traces(self) -> int: ...
    def close(self) -> None: ...


# --- the state file ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerState:
    pid: int
    http: str  # base URL of the read API, e.g. http://127.0.0.1:4318
    grpc: str
    db: str
    token_required: bool = False
    token_file: str | None = None
    tls_cert: str | None = None  # the server's own certificate, pinned by local clients


def state_path(db_path: str | os.PathLike[str]) -> Path:
    db = Path(os.path.realpath(db_path))
    return db.with_name(db.name + STATE_SUFFIX)


def write_state(state: ServerState) -> None:
    path = state_path(state.db)
    tmp = path.with_name(path.name + f".{state.pid}.tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(state), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def remove_state(state: ServerState) -> None:
    """Remove the state file if it is still ours (a newer server may have replaced it)."""
    current = read_state(state.db)
    if current is not None and current.pid == state.pid:
        state_path(state.db).unlink(missing_ok=True)


def read_state(db_path: str | os.PathLike[str]) -> ServerState | None:
    try:
        data = json.loads(state_path(db_path).read_text(encoding="utf-8"))
        return ServerState(**data)
    except (OSError, ValueError, TypeError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


# --- choosing a reader ---------------------------------------------------------------------------


def open_reader(db_path: str | os.PathLike[str]) -> Reader:
    """The server's read API when a live server holds ``db_path``, else the file read-only."""
    from tracelens.store import Store

    remote = _remote(db_path)
    if remote is not None:
        return remote
    try:
        return Store(db_path, read_only=True)
    except StoreLockedError:
        # Locked: a server may be starting and about to write its state file.
        deadline = time.monotonic() + STARTUP_WAIT_S
        while time.monotonic() < deadline:
            time.sleep(0.1)
            remote = _remote(db_path)
            if remote is not None:
                return remote
        raise


def live_server(db_path: str | os.PathLike[str]) -> ServerState | None:
    """The state of the server holding ``db_path``, if one runs and answers."""
    remote = _remote(db_path)
    return remote.state if remote is not None else None


def _remote(db_path: str | os.PathLike[str]) -> RemoteReader | None:
    state = read_state(db_path)
    if state is None or not pid_alive(state.pid):
        return None
    reader = RemoteReader(state)
    return reader if reader.healthy() else None


# --- the remote reader ---------------------------------------------------------------------------


class RouteMissing(StoreError):
    """The server does not know the route (it is older than this client)."""


class RemoteReader:
    """The Store read methods over the server's HTTP read API (urllib, Arrow IPC)."""

    def __init__(self, state: ServerState, token: str | None = None) -> None:
        self.state = state
        self.base = state.http.rstrip("/") + "/api/v1/"
        self._token = token if token is not None else _local_token(state)
        self._ssl = _pinned_context(state.tls_cert) if self.base.startswith("https:") else None

    def __enter__(self) -> RemoteReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass  # one connection per request; nothing to release

    def healthy(self) -> bool:
        try:
            reply = json.loads(self._request("GET", "health", timeout=HEALTH_TIMEOUT_S))
        except (StoreError, ValueError):
            return False
        return reply.get("status") == "ok" and reply.get("pid") == self.state.pid

    # -- the Store read methods -----------------------------------------------------------------

    def count_spans(self) -> int:
        return int(json.loads(self._request("GET", "count"))["spans"])

    def count_traces(self) -> int:
        return int(json.loads(self._request("GET", "count"))["traces"])

    def get_trace(self, trace_id: str) -> pa.Table:
        return _table(self._request("GET", "traces/" + _path_id(trace_id)))

    def get_trace_spans(self, trace_id: str) -> list[Span]:
        """One trace as ``Span`` objects from JSON rows: ``explain`` then needs no pyarrow."""
        from tracelens.model import spans_from_rows, spans_from_table

        route = "traces/" + _path_id(trace_id)
        try:
            reply = json.loads(self._request("GET", route + "/rows"))
        except RouteMissing:  # a server from before the route: the Arrow way
            return spans_from_table(self.get_trace(trace_id))
        return spans_from_rows([tuple(row) for row in reply["rows"]], reply["columns"])

    def trace_findings(self, trace_id: str) -> list[Finding] | None:
        """The built-in rules' findings for one trace, computed by the server (None: the
        server cannot; the caller computes them)."""
        from tracelens.model import Finding

        try:
            found = json.loads(self._request("GET", "findings/" + _path_id(trace_id)))
        except RouteMissing:
            return None
        return [Finding(**f) for f in found]

    def list_traces(
        self,
        *,
        service: str | None = None,
        operation: str | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        limit: int = 20,
    ) -> list[TraceSummary]:
        from tracelens.store import TraceSummary

        params = {"service": service, "operation": operation, "since_ns": since_ns,
                  "until_ns": until_ns, "limit": limit}  # fmt: skip
        query = urlencode({k: v for k, v in params.items() if v is not None})
        rows = json.loads(self._request("GET", f"traces?{query}"))
        return [TraceSummary(**row) for row in rows]

    def scan(
        self,
        columns: Sequence[str] | None = None,
        *,
        trace_ids: Sequence[str] | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        ordered: bool = True,
    ) -> pa.Table:
        body = {
            "columns": list(columns) if columns is not None else None,
            "trace_ids": list(trace_ids) if trace_ids is not None else None,
            "since_ns": since_ns,
            "until_ns": until_ns,
            "ordered": ordered,
        }
        return _table(self._request("POST", "scan", json.dumps(body).encode()))

    def overlapping_trace_ids(self, t0_ns: int, t1_ns: int, limit: int) -> list[str]:
        query = urlencode({"t0_ns": int(t0_ns), "t1_ns": int(t1_ns), "limit": int(limit)})
        return list(json.loads(self._request("GET", f"overlapping?{query}")))

    # -- transport -------------------------------------------------------------------------------

    def _request(
        self, method: str, route: str, data: bytes | None = None, timeout: float = READ_TIMEOUT_S
    ) -> bytes:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(self.base + route, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self._ssl) as reply:
                return reply.read()
        except urllib.error.HTTPError as exc:
            raise self._error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise StoreError(
                f"{self.state.db}: the tracelens server at {self.state.http} (pid "
                f"{self.state.pid}) holds the store but did not answer: {reason}"
            ) from exc

    def _error(self, exc: urllib.error.HTTPError) -> StoreError:
        if exc.code == 404:
            return RouteMissing(f"{self.state.db}: server pid {self.state.pid} has no {exc.url}")
        if exc.code == 401:
            return StoreError(
                f"{self.state.db} is served by pid {self.state.pid}, which needs a token: "
                "set TRACELENS_AUTH_TOKEN (or read it from the server's --auth-token-file)"
            )
        try:
            message = json.loads(exc.read()).get("error") or exc.reason
        except (ValueError, AttributeError):
            message = exc.reason
        return StoreError(f"{self.state.db} (via the server): {message}")


def _path_id(trace_id: str) -> str:
    """A trace id as one URL path segment (whatever the user typed)."""
    return quote(trace_id.lower(), safe="")


def _table(data: bytes) -> pa.Table:
    import pyarrow as pa

    return pa.ipc.open_stream(data).read_all()


def _local_token(state: ServerState) -> str | None:
    """``$TRACELENS_AUTH_TOKEN``, else the server's token file if this user can read it."""
    from tracelens.errors import ReceiverError
    from tracelens.receiver.auth import env_token, read_token_file

    if not state.token_required:
        return None
    token = env_token()
    if token or not state.token_file:
        return token
    try:
        return read_token_file(state.token_file)
    except ReceiverError:
        return None


def _pinned_context(cert: str | None) -> ssl.SSLContext:
    """Trust exactly the server's own certificate (it is local; its name may not match)."""
    import ssl

    context = ssl.create_default_context(cafile=cert) if cert else ssl.create_default_context()
    if cert:
        context.check_hostname = False
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context
