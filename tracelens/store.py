"""The DuckDB store. Only this module and ``journal`` (``serve``'s write-ahead journal, DuckDB
files of its own beside the store, replayed here when a killed server left one) talk to DuckDB.

Table ``spans`` holds ``model.SPAN_SCHEMA`` plus ``span_key`` (a hash of trace and span id).
An ART index on ``trace_id`` keeps one-trace lookups O(trace) on a store of tens of millions
of spans, and it is also what makes writes idempotent (client retries, re-imports): a write
first asks which of its trace ids are stored already (index probes, or one scan of the
``trace_id`` column, whichever costs less) and drops the rows whose ``(trace_id, span_id)`` is
there. That costs half of what a hashed PRIMARY KEY did (every row an ART insert and an
``INSERT OR IGNORE`` conflict check), which older stores still have and keep using.
Every value reaches SQL as a parameter; identifiers come only from ``SPAN_SCHEMA``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from tracelens.errors import StoreError, StoreLockedError

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from tracelens.model import Span

DEFAULT_DB = "tracelens.duckdb"
# Rows per INSERT: each one checks its trace ids against the store (on 10M spans a scan of
# ≈0.1 s for thousands of ids), so file imports insert in large chunks.
INSERT_ROWS = 131_072
LARGE_WRITE_MEMORY = "256MB"  # DuckDB's memory limit while it writes a large file
_LARGE_WRITE_SETTINGS = ("threads", "memory_limit")  # changed for a large write, then restored
# Duplicate check: trace ids per index-probing IN-list, and what probing one id costs in rows
# of a scan of the trace_id column (measured: 15-40 µs an id against ≈ 55 ns a row).
PROBE_IDS = 512
PROBE_ROWS_PER_ID = 500

_DUCK_TYPES = {
    "string": "VARCHAR",
    "int8": "TINYINT",
    "int32": "INTEGER",
    "int64": "BIGINT",
    "bool": "BOOLEAN",
}
_JSON_COLUMNS = frozenset({"attributes", "resource_attributes", "events", "links"})


def default_db_path() -> str:
    return os.environ.get("TRACELENS_DB") or DEFAULT_DB


def _create_table_sql() -> str:
    from tracelens.model import SPAN_SCHEMA

    cols = ["span_key UBIGINT NOT NULL"]
    for f in SPAN_SCHEMA:
        duck = "JSON" if f.name in _JSON_COLUMNS else _DUCK_TYPES[str(f.type)]
        cols.append(f"{f.name} {duck}{'' if f.nullable else ' NOT NULL'}")
    return "CREATE TABLE IF NOT EXISTS spans (\n  " + ",\n  ".join(cols) + "\n)"


@dataclass(frozen=True)
class WriteStats:
    received: int  # rows offered
    inserted: int  # rows new to the store (the rest were duplicates)


@dataclass(frozen=True)
class TraceSummary:
    trace_id: str
    service: str
    name: str
    start_ns: int
    duration_ns: int
    span_count: int
    error_count: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "service": self.service,
            "name": self.name,
            "start_ns": self.start_ns,
            "duration_ms": self.duration_ns / 1e6,
            "span_count": self.span_count,
            "error_count": self.error_count,
        }


@functools.cache
def _duckdb() -> ModuleType:
    """DuckDB's engine: the C extension module the ``duckdb`` package re-exports.

    ``import duckdb`` costs ≈ 170 ms here, ≈ 110 ms of it in the package's pure-Python parts;
    the extension alone ≈ 40-60 ms, and that is most of a cold ``explain``. The package's names
    are the extension's objects, so connections and exceptions are the same either way; what
    the package adds are Python methods on the connection class (``sql``, Arrow results),
    which :func:`_with_arrow` loads before a method that needs them.
    """
    try:
        import _duckdb as engine  # type: ignore[import-not-found]
    except ImportError:
        engine = None
    if engine is not None and all(hasattr(engine, n) for n in ("connect", "Error", "IOException")):
        return engine
    import duckdb

    return duckdb


def _journal_left(path: str) -> bool:
    """Whether ``serve``'s write-ahead journal (``tracelens.journal``) has files to replay."""
    from tracelens.journal import pending_files

    return bool(pending_files(path))


def _with_arrow() -> None:
    """Load the ``duckdb`` package: it patches ``sql`` and the Arrow results onto connections."""
    import duckdb  # noqa: F401


class Store:
    """A DuckDB file of spans. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, read_only: bool = False):
        duckdb = _duckdb()
        self.path = str(path or default_db_path())
        self.read_only = read_only
        if read_only and not Path(self.path).exists():
            raise StoreError(f"{self.path}: no such store (import traces or run serve first)")
        if read_only and _journal_left(self.path):
            Store(self.path).close()  # a server was killed: replay its journal first
        try:
            self.con: duckdb.DuckDBPyConnection = duckdb.connect(self.path, read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise StoreLockedError(
                    f"{self.path} is in use by another tracelens process "
                    "(stop it, or query it through its server)"
                ) from exc
            raise StoreError(f"{self.path}: cannot open store: {exc}") from exc
        except duckdb.Error as exc:
            raise StoreError(f"{self.path}: not a tracelens store: {exc}") from exc
        # DuckDB draws a progress bar on stdout during long queries; it would corrupt JSON output.
        self.con.execute("SET enable_progress_bar = false")
        if not read_only:
            self._ensure_schema()
        self._check_schema()
        if not read_only and _journal_left(self.path):
            from tracelens.journal import recover

            try:
                recover(self)
            except BaseException:
                self.con.close()
                raise

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()

    def _ensure_schema(self) -> None:
        self.con.execute(_create_table_sql())
        self.con.execute("CREATE INDEX IF NOT EXISTS spans_trace_id ON spans (trace_id)")
        # Stores made before the write path checked trace ids have a hashed PRIMARY KEY.
        self._keyed = bool(
            self.con.execute(
                "SELECT count(*) FROM duckdb_constraints() "
                "WHERE table_name = 'spans' AND constraint_type = 'PRIMARY KEY'"
            ).fetchall()[0][0]
        )

    def _check_schema(self) -> None:
        try:
            self.con.execute("SELECT trace_id, span_id, span_key FROM spans LIMIT 0")
        except _duckdb().Error as exc:
            raise StoreError(f"{self.path}: no spans table (is this a tracelens store?)") from exc

    # -- writes ----------------------------------------------------------------------------

    def write(self, batches: Iterable[pa.RecordBatch]) -> WriteStats:
        """Insert all batches in one transaction: all are stored, or none (duplicates skipped).

        An exception raised by the ``batches`` iterator (bad input half-way through a file)
        rolls back everything this call wrote. Of rows sharing ``(trace_id, span_id)`` the
        first one offered is kept.
        """
        duckdb = _duckdb()
        received = inserted = 0
        pending: list[pa.RecordBatch] = []
        rows = 0
        restore: list[tuple[str, Any]] = []  # settings changed for a large write
        self.con.execute("BEGIN TRANSACTION")
        try:
            for batch in batches:
                if batch.num_rows:
                    pending.append(batch)
                    rows += batch.num_rows
                if rows >= INSERT_ROWS:
                    if not restore:
                        restore = self._large_write()
                    received, inserted = received + rows, inserted + self._insert(pending)
                    pending, rows = [], 0
            if pending:
                received, inserted = received + rows, inserted + self._insert(pending)
            self.con.execute("COMMIT")
        except BaseException as exc:
            self.con.execute("ROLLBACK")
            if isinstance(exc, duckdb.Error):
                raise StoreError(f"{self.path}: write failed: {exc}") from exc
            raise
        finally:
            self._restore(restore)
        return WriteStats(received, inserted)

    def _large_write(self) -> list[tuple[str, Any]]:
        """Settings for a large write (a file import); returns the ones to restore.

        One thread: parallel INSERTs leave a part-filled row group per thread per INSERT, which
        the checkpoint at close merges again, holding it all in memory; one thread fills whole
        row groups. A memory limit: DuckDB otherwise keeps the written blocks cached. Measured
        on 600k spans: 40% less CPU, no checkpoint work, a 40% smaller file, and peak RSS
        ≈200 MB above the batches instead of ≈500 MB and growing with the file (3.5M spans fit
        in 330 MB under a 128 MB limit). Small writes (the receiver's group commits) keep
        DuckDB's defaults, and so do reads after the write.
        """
        get = "SELECT current_setting(?)"
        saved = [(n, self.con.execute(get, [n]).fetchall()[0][0]) for n in _LARGE_WRITE_SETTINGS]
        self.con.execute("SET threads = 1")
        self.con.execute("SET memory_limit = ?", [LARGE_WRITE_MEMORY])
        return saved

    def _restore(self, saved: list[tuple[str, Any]]) -> None:
        # RESET first: a size read back as text ("18.8 GiB") does not set the same limit again,
        # and a setting nobody changed is then exactly its default again.
        for name, value in saved:
            self.con.execute(f"RESET {name}")
            if self.con.execute("SELECT current_setting(?)", [name]).fetchall()[0][0] != value:
                self.con.execute(f"SET {name} = ?", [value])

    def _insert(self, batches: list[pa.RecordBatch]) -> int:
        """Insert the rows that are new to the store; returns how many.

        The SQL reads Arrow tables from local variables (``_incoming``, ``_stored``: DuckDB's
        scan of Python variables). Not ``register``: a registered view outlives its
        ``unregister`` until the transaction ends, and with it every batch of a file.
        """
        import pyarrow as pa

        _with_arrow()
        _incoming = pa.Table.from_batches(batches)
        con = self.con
        if self._keyed:  # an older store: its PRIMARY KEY skips what is there
            return int(con.execute(_insert_sql("INSERT OR IGNORE", "")).fetchall()[0][0])
        _stored = self._stored_pairs(_incoming)  # usually empty: new traces
        repeated = con.execute(_REPEATED_SQL).fetchall()[0][0] > 0
        if not _stored.num_rows and not repeated:
            return int(con.execute(_insert_sql("INSERT", "")).fetchall()[0][0])
        if repeated:  # keep the first of rows that share (trace_id, span_id)
            rows = pa.array(range(_incoming.num_rows), pa.int64())
            _incoming = _incoming.append_column("_row", rows)
        tail = "ANTI JOIN _stored USING (trace_id, span_id) " if _stored.num_rows else ""
        if repeated:
            tail += "QUALIFY row_number() OVER (PARTITION BY trace_id, span_id ORDER BY _row) = 1"
        return int(con.execute(_insert_sql("INSERT", tail)).fetchall()[0][0])

    def _stored_pairs(self, _incoming: pa.Table) -> pa.Table:
        """``(trace_id, span_id)`` of the stored rows of the incoming traces.

        Either the ids are looked up in the ``trace_id`` index, ``PROBE_IDS`` per IN-list,
        or one semi join reads the whole ``trace_id`` column, whichever costs less: a probe
        costs the same on any store, a scan grows with it (4,000 ids: ≈ 140 ms either way at
        2.4M spans; at 10M the scan takes ≈ 0.5 s).
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        ids = pc.unique(_incoming.column("trace_id")).to_pylist()
        if len(ids) * PROBE_ROWS_PER_ID > self.count_spans():
            return _to_arrow(self.con.sql(_STORED_SQL))
        rows: list[tuple[str, str]] = []
        for at in range(0, len(ids), PROBE_IDS):
            chunk = ids[at : at + PROBE_IDS]
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT trace_id, span_id FROM spans WHERE trace_id IN ({marks})"
            rows += self.con.execute(sql, chunk).fetchall()
        columns = [pa.array([row[i] for row in rows], pa.string()) for i in (0, 1)]
        return pa.table(columns, names=["trace_id", "span_id"])

    # -- reads -----------------------------------------------------------------------------

    def count_spans(self) -> int:
        # fetchall, not fetchone: DuckDB 2 keeps a partly fetched result open on the connection.
        return int(self.con.execute("SELECT count(*) FROM spans").fetchall()[0][0])

    def count_traces(self) -> int:
        return int(self.con.execute("SELECT count(DISTINCT trace_id) FROM spans").fetchall()[0][0])

    def get_trace(self, trace_id: str) -> pa.Table:
        """All stored spans of one trace (canonical columns), ordered by start time."""
        from tracelens.model import COLUMNS

        return _arrow(
            self.con,
            (
                f"SELECT {', '.join(COLUMNS)} FROM spans WHERE trace_id = ? "
                "ORDER BY start_ns, span_id",
                [trace_id.lower()],
            ),
        )

    def get_trace_spans(self, trace_id: str) -> list[Span]:
        """One trace as ``Span`` objects straight from DuckDB rows: ``explain``'s cold path,
        which then never imports pyarrow."""
        from tracelens.model import spans_from_rows

        return spans_from_rows(self.get_trace_rows(trace_id))

    def get_trace_rows(self, trace_id: str) -> list[tuple[Any, ...]]:
        """One trace's stored rows as tuples in ``model.COLUMNS`` order, by start time."""
        from tracelens.model import COLUMNS

        return self.con.execute(
            f"SELECT {', '.join(COLUMNS)} FROM spans WHERE trace_id = ? ORDER BY start_ns, span_id",
            [trace_id.lower()],
        ).fetchall()

    def list_traces(
        self,
        *,
        service: str | None = None,
        operation: str | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        limit: int = 20,
    ) -> list[TraceSummary]:
        """Traces, slowest first. ``service``/``operation`` filter on the root span."""
        where, params = _time_filter(since_ns, until_ns)
        having, hparams = [], []
        if service:
            having.append("root_service = ?")
            hparams.append(service)
        if operation:
            having.append("root_name = ?")
            hparams.append(operation)
        sql = f"""
            SELECT trace_id,
                   coalesce(arg_min(service, start_ns) FILTER (WHERE parent_span_id IS NULL),
                            arg_min(service, start_ns)) AS root_service,
                   coalesce(arg_min(name, start_ns) FILTER (WHERE parent_span_id IS NULL),
                            arg_min(name, start_ns)) AS root_name,
                   min(start_ns) AS t0, max(end_ns) - min(start_ns) AS dur,
                   count(*) AS n, count(*) FILTER (WHERE status_code = 2) AS errs
            FROM spans {where}
            GROUP BY trace_id
            {"HAVING " + " AND ".join(having) if having else ""}
            ORDER BY dur DESC, trace_id
            LIMIT ?"""
        rows = self.con.execute(sql, params + hparams + [int(limit)]).fetchall()
        return [TraceSummary(*row) for row in rows]

    def scan(
        self,
        columns: Sequence[str] | None = None,
        *,
        trace_ids: Sequence[str] | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        ordered: bool = True,
    ) -> pa.Table:
        """Spans for batch analysis, ordered by trace then start time unless ``ordered=False``
        (sorting costs about a second per million spans and most analyses group anyway)."""
        from tracelens.model import COLUMNS

        names = list(columns or COLUMNS)
        unknown = sorted(set(names) - set(COLUMNS))
        if unknown:
            raise StoreError(f"unknown span columns: {', '.join(unknown)}")
        where, params = _time_filter(since_ns, until_ns, alias="")
        if trace_ids is not None:
            where += (" AND " if where else "WHERE ") + "trace_id IN (SELECT unnest(?))"
            params.append(list(trace_ids))
        return _arrow(
            self.con,
            (
                f"SELECT {', '.join(names)} FROM spans {where}"
                + (" ORDER BY trace_id, start_ns" if ordered else ""),
                params,
            ),
        )

    def overlapping_trace_ids(self, t0_ns: int, t1_ns: int, limit: int) -> list[str]:
        """Ids of traces with a span overlapping [t0, t1]: the traces concurrent with a moment.

        A span-level range query, so DuckDB's min/max zone maps read only the row groups of
        that moment instead of grouping the whole table by trace."""
        rows = self.con.execute(
            "SELECT DISTINCT trace_id FROM spans WHERE start_ns <= ? AND end_ns >= ? LIMIT ?",
            [int(t1_ns), int(t0_ns), int(limit)],
        ).fetchall()
        return sorted(r[0] for r in rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        """A read-only SQL query (for the server's read API and power users)."""
        return _arrow(self.con, (sql, list(params)))


@functools.cache
def _insert_sql(verb: str, tail: str) -> str:
    from tracelens.model import COLUMNS

    cols = ", ".join(COLUMNS)
    return (
        f"{verb} INTO spans (span_key, {cols}) "
        f"SELECT hash(trace_id, span_id), {cols} FROM _incoming {tail}"
    )


# The stored rows of the incoming traces: a semi join, which probes the trace_id index for a few
# ids and scans the trace_id column for many (≈0.1 s on 10M spans).
_STORED_SQL = (
    "SELECT trace_id, span_id FROM spans WHERE trace_id IN (SELECT trace_id FROM _incoming)"
)
# Equal (trace_id, span_id) pairs hash alike, so a repeat always shows (a collision only costs
# the slower insert).
_REPEATED_SQL = "SELECT count(*) - count(DISTINCT hash(trace_id, span_id)) FROM _incoming"


def _time_filter(
    since_ns: int | None, until_ns: int | None, alias: str = ""
) -> tuple[str, list[Any]]:
    """Whole traces are kept: a trace is in the window when it starts inside it."""
    clauses, params = [], []
    if since_ns is not None:
        clauses.append(
            "trace_id IN (SELECT trace_id FROM spans GROUP BY trace_id HAVING min(start_ns) >= ?)"
        )
        params.append(int(since_ns))
    if until_ns is not None:
        clauses.append(
            "trace_id IN (SELECT trace_id FROM spans GROUP BY trace_id HAVING min(start_ns) < ?)"
        )
        params.append(int(until_ns))
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


def _arrow(con: duckdb.DuckDBPyConnection, query: tuple[str, list[Any]]) -> pa.Table:
    # A relation converts to Arrow without the extra copy a DB-API result makes.
    sql, params = query
    _with_arrow()
    return _to_arrow(con.sql(sql, params=params))


def _to_arrow(rel: duckdb.DuckDBPyRelation) -> pa.Table:
    # DuckDB 2 renamed fetch_arrow_table to to_arrow_table, so accept both.
    fetch = getattr(rel, "to_arrow_table", None) or rel.fetch_arrow_table
    return fetch()
