"""``open_reader``: the server's read API while ``serve`` holds the store, else the file."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from receiver_support import ServerProcess, export_request, sdk_spans, start_server

import tracelens.access as access
from tracelens.access import RemoteReader, ServerState, open_reader, read_state, state_path
from tracelens.errors import StoreError
from tracelens.receiver.decode import decode
from tracelens.store import Store


def _fill(db: Path) -> None:
    with Store(db) as store:
        for service in ("api", "worker", "api"):
            spans = sdk_spans(25, service=service)
            store.write(decode(export_request(spans).SerializeToString(), "t").batches)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    db = tmp_path_factory.mktemp("access") / "a.duckdb"
    _fill(db)
    server = start_server(db)
    yield server
    server.stop()


def test_missing_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such store"):
        open_reader(tmp_path / "none.duckdb")


def test_without_a_server_the_file_is_opened_read_only(tmp_path: Path) -> None:
    _fill(tmp_path / "f.duckdb")
    with open_reader(tmp_path / "f.duckdb") as reader:
        assert isinstance(reader, Store) and reader.read_only
        assert reader.count_spans() == 75


def test_a_stale_state_file_is_ignored(tmp_path: Path) -> None:
    db = tmp_path / "stale.duckdb"
    _fill(db)
    state = ServerState(pid=_dead_pid(), http="http://127.0.0.1:9", grpc="x", db=str(db))
    access.write_state(state)
    with open_reader(db) as reader:
        assert isinstance(reader, Store)


def test_a_live_pid_that_does_not_answer_is_not_trusted(tmp_path: Path) -> None:
    db = tmp_path / "other.duckdb"
    _fill(db)
    import os

    access.write_state(
        ServerState(pid=os.getpid(), http="http://127.0.0.1:9", grpc="x", db=str(db))
    )
    with open_reader(db) as reader:
        assert isinstance(reader, Store)


def test_remote_reader_answers_like_the_store(served: ServerProcess) -> None:
    with open_reader(served.db) as remote:
        assert isinstance(remote, RemoteReader)
        answers = _answers(remote)
    assert served.terminate() == 0
    with open_reader(served.db) as local:
        assert isinstance(local, Store)
        assert _answers(local) == answers


def _answers(r: Any) -> dict:
    summaries = r.list_traces(limit=100)
    some = sorted(s.trace_id for s in summaries)[:3]
    t0 = min(s.start_ns for s in summaries)
    return {
        "spans": r.count_spans(),
        "traces": r.count_traces(),
        "list": summaries,
        "api": r.list_traces(service="api", limit=5),
        "op": r.list_traces(operation="GET /orders/{id}", since_ns=t0, limit=3),
        "trace": r.get_trace(some[0].upper()).to_pylist(),
        "trace_spans": r.get_trace_spans(some[1].upper()),
        "missing": r.get_trace("0" * 31 + "1").num_rows,
        "scan": r.scan().to_pylist(),
        "cols": r.scan(["trace_id", "db_fingerprint"], trace_ids=some).to_pylist(),
        "window": r.scan(["span_id"], since_ns=t0, until_ns=t0 + 1).to_pylist(),
        "unordered": sorted(r.scan(["span_id"], ordered=False).column("span_id").to_pylist()),
        "overlapping": r.overlapping_trace_ids(t0, t0 + 1, 50),
    }


LAZY = Path(__file__).resolve().parent.parent / "fixtures" / "scenarios" / "n_plus_one_lazy_load"


def test_explain_through_the_server_equals_explain_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Served: spans come as JSON rows and the findings from the server's warm rules; an older
    server without those routes is read the Arrow way with findings computed here."""
    from tracelens.cli import main
    from tracelens.explain import explain

    db = tmp_path / "n1.duckdb"
    result = CliRunner().invoke(main, ["import", "--db", str(db), str(LAZY / "traces.otlp.json")])
    assert result.exit_code == 0, result.output
    with Store(db, read_only=True) as store:
        trace_id = store.list_traces(limit=1)[0].trace_id
    server = start_server(db)
    try:
        with open_reader(db) as remote:
            assert isinstance(remote, RemoteReader)
            served = explain(remote, trace_id).to_dict()
            asked: list[str] = []
            real = RemoteReader._request

            def older(self: RemoteReader, method: str, route: str, *args: Any, **kw: Any) -> bytes:
                asked.append(route)
                if route.endswith("/rows") or route.startswith("findings/"):
                    raise access.RouteMissing("no such route")
                return real(self, method, route, *args, **kw)

            monkeypatch.setattr(RemoteReader, "_request", older)
            fallback = explain(remote, trace_id).to_dict()
            monkeypatch.undo()
        assert f"findings/{trace_id}" in asked and f"traces/{trace_id}" in asked  # Arrow
    finally:
        assert server.terminate() == 0
    with open_reader(db) as local:
        assert isinstance(local, Store)
        from_file = explain(local, trace_id).to_dict()
    assert from_file["findings"] and from_file["findings"][0]["kind"] == "n_plus_one"
    assert served == from_file == fallback


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    db = tmp_path / "s.duckdb"
    _fill(db)
    proc = start_server(db)
    yield proc
    proc.stop()


def test_store_errors_come_back_as_store_errors(server: ServerProcess) -> None:
    with open_reader(server.db) as reader, pytest.raises(StoreError, match="unknown span columns"):
        reader.scan(["no_such_column"])


def test_reader_waits_for_a_starting_server(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server holds the lock before its state file exists: the reader waits for it."""
    path = state_path(server.db)
    saved = path.read_text()
    path.unlink()
    threading.Timer(0.5, path.write_text, args=(saved,)).start()
    started = time.monotonic()
    with open_reader(server.db) as reader:
        assert isinstance(reader, RemoteReader)
        assert reader.count_spans() == 75
    assert time.monotonic() - started < access.STARTUP_WAIT_S


def test_locked_store_without_a_server_is_a_clear_error(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_path(server.db).unlink()
    monkeypatch.setattr(access, "STARTUP_WAIT_S", 0.3)
    with pytest.raises(StoreError, match="in use by another tracelens process"):
        open_reader(server.db)


def test_state_file_names_the_server_and_goes_away_on_stop(server: ServerProcess) -> None:
    state = read_state(server.db)
    assert state is not None
    assert (state.pid, state.http, state.grpc) == (server.pid, server.http, server.grpc)
    assert state.token_required is False
    assert json.loads(state_path(server.db).read_text())["db"] == str(Path(server.db).resolve())
    assert server.terminate() == 0
    assert not state_path(server.db).exists()


def test_cli_import_while_served_names_the_server(server: ServerProcess, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tracelens.cli import main

    sample = Path(__file__).resolve().parent.parent / "fixtures" / "scenarios" / "slow_query"
    result = CliRunner().invoke(
        main, ["import", "--db", str(server.db), str(sample / "traces.otlp.json")]
    )
    assert result.exit_code == 1, result.output
    assert "held by `tracelens serve`" in result.output
    assert f"pid {server.proc.pid}" in result.output
