"""One exception root; foreign errors are mapped at the boundary with ``raise … from exc``."""

from __future__ import annotations


class TracelensError(Exception):
    """Root of every error tracelens raises on purpose. The CLI maps these to exit code 1."""

    exit_code = 1


class InputFormatError(TracelensError):
    """A trace file or request body that cannot be read.

    ``source`` names the file (or request), ``where`` the place inside it (a JSON path,
    a line number, a byte offset), ``problem`` what is wrong.
    """

    def __init__(self, source: str, problem: str, where: str | None = None) -> None:
        self.source = source
        self.problem = problem
        self.where = where
        place = f" at {where}" if where else ""
        super().__init__(f"{source}{place}: {problem}")


class UnknownFormatError(InputFormatError):
    """No importer recognised the content, or ``--format`` names no importer."""


class StoreError(TracelensError):
    """The DuckDB store could not be opened, read or written."""


class StoreLockedError(StoreError):
    """Another process holds the DuckDB file (DuckDB allows one writer and no other readers)."""


class TraceNotFoundError(TracelensError):
    """No spans for the requested trace id."""

    def __init__(self, trace_id: str) -> None:
        self.trace_id = trace_id
        super().__init__(f"trace {trace_id} not found in the store")


class RuleError(TracelensError):
    """A rule file that does not validate: names the file, line and key."""


class ReceiverError(TracelensError):
    """The OTLP receiver could not start (port in use, bad TLS files, …)."""
