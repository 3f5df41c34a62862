"""The command line: parse flags, call the library, render. Errors are mapped here, at the edge."""

from __future__ import annotations

import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from tracelens.errors import TracelensError

EXIT_FINDINGS = 3  # `analyze --fail-on`: findings at or above the severity
SEVERITY_CHOICES = ("info", "low", "medium", "high", "critical")
_DB_HELP = "DuckDB store (default: $TRACELENS_DB or ./tracelens.duckdb)"


def _db_option(func: Any) -> Any:
    return click.option(
        "--db",
        "db",
        type=click.Path(dir_okay=False),
        default=None,
        envvar="TRACELENS_DB",
        help=_DB_HELP,
    )(func)


def _format_option(func: Any) -> Any:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Output format.",
    )(func)


class _Group(click.Group):
    """Maps TracelensError to a one-line message and exit code 1, never a traceback.

    ``serve`` is loaded only when asked for: the receiver's imports (grpc, servers) would
    otherwise slow every `explain` start.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "serve"})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name == "serve" and name not in self.commands:
            from tracelens.receiver.command import serve

            self.add_command(serve, "serve")
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TracelensError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except BrokenPipeError:  # `tracelens … | head`
            sys.stderr.close()
            ctx.exit(0)


@click.group(cls=_Group)
@click.version_option(package_name="tracelens")
def main() -> None:
    """tracelens: where did the time go, and why? OpenTelemetry trace analysis."""


def _db_path(db: str | None) -> str:
    from tracelens.store import default_db_path

    return db or default_db_path()


def _open_reader(db: str | None) -> Any:
    """The server's read API when a live server holds the store, else the file itself."""
    from tracelens.access import open_reader

    return open_reader(_db_path(db))


def _echo_json(data: Any) -> None:
    import orjson

    sys.stdout.buffer.write(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.flush()


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


# --- import -------------------------------------------------------------------------------------


@main.command("import")
@click.argument("paths", nargs=-1, required=True)
@_db_option
@click.option(
    "--format",
    "fmt",
    default=None,
    help="Input format (default: sniffed): otlp-json, otlp-proto, jaeger-json, "
    "jaeger-proto-json, zipkin, xray.",
)
@click.option("--keep-going", is_flag=True, help="Skip bad files instead of stopping at the first.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or per-file lines.")
def import_cmd(
    paths: tuple[str, ...], db: str | None, fmt: str | None, keep_going: bool, quiet: bool
) -> None:
    """Import trace files, directories (recursively), .gz files or - (stdin).

    Each file is imported in one transaction: a bad file stores nothing.
    """
    from tracelens import importers
    from tracelens.ingest import import_paths
    from tracelens.store import Store

    if fmt:
        importers.get(fmt)  # fail on a bad --format before touching the store
    _refuse_if_served(_db_path(db))
    started = time.perf_counter()
    err = _console(stderr=True)
    with Store(_db_path(db)) as store, _progress(paths, quiet) as on_bytes:

        def on_file(result: Any) -> None:
            if result.error:
                err.print(f"[red]skipped[/] {result.error}")
            elif not quiet:
                err.print(f"{result.source}: {result.spans} spans ({result.inserted} new)")

        report = import_paths(
            store, list(paths), fmt, keep_going=keep_going, on_bytes=on_bytes, on_file=on_file
        )
        total = store.count_spans()
    elapsed = time.perf_counter() - started
    click.echo(
        f"imported {report.spans} spans from {len(report.files) - len(report.failed)} file(s) "
        f"({report.inserted} new, {total} in {_db_path(db)}) in {elapsed:.2f}s"
    )
    if report.failed:
        click.echo(f"{len(report.failed)} file(s) failed", err=True)
        sys.exit(1)


def _refuse_if_served(db_path: str) -> None:
    """DuckDB has one writer: while `serve` holds the store, files go in through the server."""
    from tracelens.access import live_server
    from tracelens.errors import StoreError

    state = live_server(db_path)
    if state is not None:
        raise StoreError(
            f"{db_path} is held by `tracelens serve` (pid {state.pid}); stop it to import "
            f"files, or send the spans to it over OTLP (HTTP {state.http}/v1/traces)"
        )


class _progress:
    """A rich progress bar over input bytes, only on a terminal."""

    def __init__(self, paths: tuple[str, ...], quiet: bool) -> None:
        self.paths = paths
        self.enabled = not quiet and sys.stderr.isatty()
        self._bar: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        from tracelens.importers.sources import expand

        total = sum(s.size or 0 for s in expand(list(self.paths))) or None
        self._bar = Progress(
            "importing",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        self._bar.start()
        task = self._bar.add_task("import", total=total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


# --- explain ------------------------------------------------------------------------------------


@main.command()
@click.option("--trace-id", default=None, help="The trace to explain (hex).")
@click.option("--slowest", is_flag=True, help="Explain the slowest trace in the store instead.")
@_db_option
@_format_option
@click.option(
    "--rules",
    "rules_dirs",
    multiple=True,
    type=click.Path(file_okay=False, exists=True),
    help="Extra rule directory (repeatable).",
)
@click.option(
    "--no-findings", is_flag=True, help="Skip the detectors (tree and critical path only)."
)
def explain(
    trace_id: str | None,
    slowest: bool,
    db: str | None,
    fmt: str,
    rules_dirs: tuple[str, ...],
    no_findings: bool,
) -> None:
    """One trace: its tree, critical path, self time per service, anomalies and findings."""
    from tracelens.errors import StoreError
    from tracelens.explain import explain as explain_trace

    if (trace_id is None) == (not slowest):
        raise click.UsageError("give exactly one of --trace-id ID or --slowest")
    rules = _load_rules(rules_dirs) if rules_dirs and not no_findings else None
    with _open_reader(db) as reader:
        if slowest:
            top = reader.list_traces(limit=1)
            if not top:
                raise StoreError(f"{_db_path(db)} holds no traces (import some first)")
            trace_id = top[0].trace_id
        assert trace_id is not None
        result = explain_trace(reader, trace_id, rules=rules, with_findings=not no_findings)
    if fmt == "json":
        _echo_json(result.to_dict())
    else:
        from tracelens.report.text import render_explanation

        render_explanation(result, _console())


def _load_rules(dirs: tuple[str, ...]) -> Any:
    from tracelens.rules import load_rules

    return load_rules([Path(d) for d in dirs])


# --- analyze ------------------------------------------------------------------------------------


@main.command()
@_db_option
@click.option(
    "--rules",
    "rules_dirs",
    multiple=True,
    type=click.Path(file_okay=False, exists=True),
    help="Extra rule directory (repeatable); loads like the built-in rules.",
)
@click.option("--service", default=None, help="Only traces whose root is in this service.")
@click.option(
    "--since", default=None, help="Only traces starting at/after: ISO time or 15m/2h/7d ago."
)
@click.option(
    "--until", default=None, help="Only traces starting before: ISO time or 15m/2h/7d ago."
)
@_format_option
@click.option(
    "--fail-on",
    type=click.Choice(SEVERITY_CHOICES),
    default=None,
    help=f"Exit {EXIT_FINDINGS} when a finding has at least this severity (for CI).",
)
def analyze(
    db: str | None,
    rules_dirs: tuple[str, ...],
    service: str | None,
    since: str | None,
    until: str | None,
    fmt: str,
    fail_on: str | None,
) -> None:
    """Run every rule over all (or the selected) traces: findings by endpoint, with evidence."""
    from tracelens.analyze import analyze as run_analysis
    from tracelens.analyze import severity_rank

    rules = _load_rules(rules_dirs)
    with _open_reader(db) as reader:
        result = run_analysis(
            reader, rules, service=service, since_ns=parse_time(since), until_ns=parse_time(until)
        )
    data = result.to_dict()
    if fmt == "json":
        _echo_json(data)
    else:
        from tracelens.report.text import render_analysis

        render_analysis(data, _console())
    if fail_on and any(
        severity_rank(f.severity) >= severity_rank(fail_on) for f in result.findings
    ):
        sys.exit(EXIT_FINDINGS)


_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d)")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str | None, now: float | None = None) -> int | None:
    """``2026-11-23T10:00:00Z``, ``2026-11-23`` or ``15m``/``2h``/``7d`` (ago) → epoch ns."""
    if text is None:
        return None
    rel = _RELATIVE.fullmatch(text.strip())
    if rel:
        now = time.time() if now is None else now
        return int((now - float(rel.group(1)) * _UNIT_S[rel.group(2)]) * 1e9)
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(f"{text!r} is neither an ISO time nor like 15m/2h/7d") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1_000_000) * 1000


# --- traces -------------------------------------------------------------------------------------


@main.command()
@_db_option
@click.option("--service", default=None, help="Root service.")
@click.option("--operation", default=None, help="Root operation (span name).")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1))
@_format_option
def traces(
    db: str | None, service: str | None, operation: str | None, limit: int, fmt: str
) -> None:
    """List traces, slowest first."""
    with _open_reader(db) as reader:
        rows = reader.list_traces(service=service, operation=operation, limit=limit)
    if fmt == "json":
        _echo_json([r.to_dict() for r in rows])
        return
    from rich.table import Table

    table = Table()
    for col in ("trace_id", "service", "operation", "duration", "spans", "errors", "start (UTC)"):
        table.add_column(col, justify="right" if col in ("duration", "spans", "errors") else "left")
    for r in rows:
        start = datetime.fromtimestamp(r.start_ns / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(
            r.trace_id,
            r.service,
            r.name,
            f"{r.duration_ns / 1e6:,.1f} ms",
            str(r.span_count),
            str(r.error_count),
            start,
        )
    _console().print(table)
