"""The read API waits for the store to hold every acknowledged span before it answers."""

from __future__ import annotations

import json
from pathlib import Path

from tracelens.receiver.readapi import PREFIX, ReadAPI
from tracelens.store import Store


def _no_body(limit: int) -> bytes:
    raise AssertionError("no route here reads a body")


class _Settle:
    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.calls: list[float] = []

    def __call__(self, timeout_s: float) -> bool:
        self.calls.append(timeout_s)
        return self.answer


def test_reads_settle_first_and_health_does_not(tmp_path: Path) -> None:
    settle = _Settle(True)
    with Store(tmp_path / "r.duckdb") as store:
        api = ReadAPI(store, settle)
        assert api.handle("GET", PREFIX + "health", "", _no_body).status == 200
        assert settle.calls == []
        reply = api.handle("GET", PREFIX + "count", "", _no_body)
        assert reply.status == 200 and json.loads(reply.body) == {"spans": 0, "traces": 0}
        assert len(settle.calls) == 1


def test_a_store_that_cannot_catch_up_answers_503(tmp_path: Path) -> None:
    with Store(tmp_path / "r.duckdb") as store:
        reply = ReadAPI(store, _Settle(False)).handle("GET", PREFIX + "count", "", _no_body)
    assert reply.status == 503
    assert "behind" in json.loads(reply.body)["error"]
