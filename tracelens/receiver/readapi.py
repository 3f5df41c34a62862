"""The read API on the HTTP port: the Store's read methods for CLIs while ``serve`` holds the DB.

DuckDB lets one process open the file, so ``tracelens explain/analyze/traces`` ask the server
(``tracelens.access`` is the client). Tables travel as Arrow IPC streams, lists as JSON.
Each request reads through its own DuckDB cursor and sees only committed spans.

- ``GET /api/v1/health``: ``{"status": "ok", "pid": …}`` (the only route without the token)
- ``GET /api/v1/count``: ``{"spans": n, "traces": n}``
- ``GET /api/v1/traces?service=&operation=&since_ns=&until_ns=&limit=``: ``list_traces``, JSON
- ``GET /api/v1/traces/<trace id>``: ``get_trace``, Arrow
- ``GET /api/v1/traces/<trace id>/rows``: ``get_trace_rows`` as JSON ``{columns, rows}`` (what
  ``explain`` reads: no pyarrow needed on the client)
- ``GET /api/v1/findings/<trace id>``: the built-in rules' findings for one trace, JSON; computed
  here, where polars and the rules stay loaded between calls (a CLI would pay ≈ 0.5 s for them)
- ``POST /api/v1/scan`` with ``{columns, trace_ids, since_ns, until_ns, ordered}``: ``scan``, Arrow
- ``GET /api/v1/overlapping?t0_ns=&t1_ns=&limit=``: ``overlapping_trace_ids``, JSON
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from tracelens.errors import StoreError, TracelensError

if TYPE_CHECKING:
    import pyarrow as pa

    from tracelens.store import Store

log = logging.getLogger(__name__)

PREFIX = "/api/v1/"
ARROW_STREAM = "application/vnd.apache.arrow.stream"
JSON_TYPE = "application/json"
MAX_QUERY_BODY = 16 << 20
SETTLE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes


class ReadAPI:
    """Answers read requests from a live store (the writer's connection is not used)."""

    def __init__(self, store: Store, settle: Callable[[float], bool] | None = None) -> None:
        self.store = store
        # Waits until every acknowledged span is in the store (see receiver.journaled).
        self._settle = settle
        self._rules: list[Any] | None = None  # the built-in rules, loaded on first use

    @contextmanager
    def _view(self) -> Iterator[Store]:
        # A Store sharing the server's database through a cursor: a separate DuckDB
        # connection, safe to use beside the writer thread.
        from tracelens.store import Store

        view = Store.__new__(Store)
        view.path = self.store.path
        view.read_only = True
        view.con = self.store.con.cursor()
        try:
            yield view
        finally:
            view.con.close()

    def handle(self, method: str, path: str, query: str, body: Callable[[int], bytes]) -> Reply:
        """One request; ``body(limit)`` reads the request body when the route needs it."""
        route = path[len(PREFIX) :].strip("/")
        try:
            if route == "health" and method == "GET":
                return _json({"status": "ok", "pid": os.getpid()})
            if self._settle is not None and not self._settle(SETTLE_TIMEOUT_S):
                return _json({"error": "the store is behind the acknowledged spans; retry"}, 503)
            if route == "count" and method == "GET":
                with self._view() as store:
                    return _json({"spans": store.count_spans(), "traces": store.count_traces()})
            if route == "traces" and method == "GET":
                return self._list(parse_qs(query))
            if route.startswith("traces/") and route.endswith("/rows") and method == "GET":
                return self._rows(route[len("traces/") : -len("/rows")])
            if route.startswith("traces/") and method == "GET":
                with self._view() as store:
                    return _arrow(store.get_trace(route[len("traces/") :]))
            if route.startswith("findings/") and method == "GET":
                return self._findings(route[len("findings/") :])
            if route == "scan" and method == "POST":
                return self._scan(body(MAX_QUERY_BODY))
            if route == "overlapping" and method == "GET":
                return self._overlapping(parse_qs(query))
        except (TracelensError, ValueError, TypeError) as exc:
            return _json({"error": str(exc)}, 400)
        except Exception as exc:  # noqa: BLE001 — a DuckDB failure: answer, log, keep serving
            log.exception("read API %s %s failed", method, path)
            return _json({"error": f"the store failed: {exc}"}, 500)
        known = route in ("health", "count", "traces", "scan", "overlapping") or route.startswith(
            ("traces/", "findings/")
        )
        return _json({"error": f"{method} {path} is not allowed"}, 405 if known else 404)

    def _list(self, params: dict[str, list[str]]) -> Reply:
        def one(name: str) -> str | None:
            values = params.get(name)
            return values[-1] if values else None

        kwargs: dict[str, Any] = {"service": one("service"), "operation": one("operation")}
        for name in ("since_ns", "until_ns", "limit"):
            if one(name) is not None:
                kwargs[name] = int(one(name))  # type: ignore[arg-type]
        with self._view() as store:
            rows = store.list_traces(**kwargs)
        return _json([dataclasses.asdict(r) for r in rows])

    def _rows(self, trace_id: str) -> Reply:
        from tracelens.model import COLUMNS

        with self._view() as store:
            return _json({"columns": COLUMNS, "rows": store.get_trace_rows(trace_id)})

    def _findings(self, trace_id: str) -> Reply:
        from tracelens.explain import explain
        from tracelens.rules import load_rules

        if self._rules is None:
            self._rules = load_rules()
        with self._view() as store:
            found = explain(store, trace_id, rules=self._rules).findings
        return _json([f.to_dict() for f in found])

    def _scan(self, raw: bytes) -> Reply:
        try:
            query = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError as exc:
            raise StoreError(f"scan: the request body is not JSON: {exc}") from exc
        if not isinstance(query, dict):
            raise StoreError("scan: the request body must be a JSON object")
        unknown = set(query) - {"columns", "trace_ids", "since_ns", "until_ns", "ordered"}
        if unknown:
            raise StoreError(f"scan: unknown fields {sorted(unknown)}")
        with self._view() as store:
            table = store.scan(
                query.get("columns"),
                trace_ids=query.get("trace_ids"),
                since_ns=query.get("since_ns"),
                until_ns=query.get("until_ns"),
                ordered=bool(query.get("ordered", True)),
            )
        return _arrow(table)

    def _overlapping(self, params: dict[str, list[str]]) -> Reply:
        try:
            t0, t1, limit = (int(params[name][-1]) for name in ("t0_ns", "t1_ns", "limit"))
        except (KeyError, ValueError) as exc:
            raise StoreError("overlapping: t0_ns, t1_ns and limit must be integers") from exc
        with self._view() as store:
            return _json(store.overlapping_trace_ids(t0, t1, limit))


def _json(data: Any, status: int = 200) -> Reply:
    return Reply(status, JSON_TYPE, orjson.dumps(data))


def _arrow(table: pa.Table) -> Reply:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return Reply(200, ARROW_STREAM, sink.getvalue().to_pybytes())
