"""Derived columns and statement fingerprints."""

from __future__ import annotations

import pytest

from tracelens.semconv import UNKNOWN_SERVICE, derive, fingerprint, fingerprint_sql


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("SELECT * FROM customers WHERE id = %(pk_1)s", "SELECT * FROM customers WHERE id = ?"),
        ("SELECT * FROM customers WHERE id = 42", "SELECT * FROM customers WHERE id = ?"),
        ("SELECT * FROM customers WHERE id = $1", "SELECT * FROM customers WHERE id = ?"),
        ("SELECT * FROM customers WHERE id = ?", "SELECT * FROM customers WHERE id = ?"),
        ("SELECT * FROM customers WHERE id = :id", "SELECT * FROM customers WHERE id = ?"),
        (
            "select a from t where name='bo''b' and x in (1, 2, 3)",
            "select a from t where name=? and x IN (?)",
        ),
        ("select a from t where x IN (%s, %s)", "select a from t where x IN (?)"),
        ("insert into t values (1,2),(3,4)", "insert into t values (?,?)"),
        ("SELECT a\n   FROM t  -- why\n WHERE b = 'x1';", "SELECT a FROM t WHERE b = ?"),
        ("SELECT /* hint */ c FROM t WHERE d = 1.5e3", "SELECT c FROM t WHERE d = ?"),
        ("SELECT t1.c2 FROM t1 WHERE c3 = 7", "SELECT t1.c2 FROM t1 WHERE c3 = ?"),
    ],
)
def test_fingerprint_sql(statement: str, expected: str) -> None:
    assert fingerprint_sql(statement) == expected


def test_same_query_other_parameters_one_fingerprint() -> None:
    a = fingerprint("SELECT * FROM orders WHERE customer_id = 17 AND state = 'open'", "mysql")
    b = fingerprint("SELECT * FROM orders WHERE customer_id = 9911 AND state = 'paid'", "mysql")
    assert a == b
    assert a != fingerprint("SELECT * FROM orders WHERE id = 1", "mysql")


def test_cache_commands_keep_the_verb() -> None:
    assert fingerprint("GET user:42", "redis") == "GET ?"
    assert fingerprint("HGETALL", "redis") == "HGETALL"
    assert fingerprint(None, "redis") is None


OLD = {
    "db.system": "postgresql",
    "db.statement": "SELECT 1 FROM a WHERE b = 2",
    "http.method": "GET",
    "http.url": "http://x/y?z=1",
    "net.peer.name": "db1",
    "http.status_code": 200,
}
NEW = {
    "db.system.name": "postgresql",
    "db.query.text": "SELECT 1 FROM a WHERE b = 2",
    "http.request.method": "GET",
    "url.full": "http://x/y?z=1",
    "server.address": "db1",
    "http.response.status_code": 200,
}


@pytest.mark.parametrize("attrs", [OLD, NEW], ids=["old-names", "new-names"])
def test_old_and_new_semantic_conventions_derive_the_same(attrs: dict) -> None:
    d = derive(attrs, {"service.name": "api"})
    assert d == {
        "service": "api",
        "db_system": "postgresql",
        "db_statement": "SELECT 1 FROM a WHERE b = 2",
        "db_fingerprint": "SELECT ? FROM a WHERE b = ?",
        "peer": "db1",
        "http_route": None,
        "http_method": "GET",
        "http_url": "http://x/y?z=1",
        "http_status": 200,
        "rpc_method": None,
    }


def test_new_name_wins_when_both_present() -> None:
    d = derive({"db.statement": "SELECT old", "db.query.text": "SELECT new"}, {})
    assert d["db_statement"] == "SELECT new"
    assert d["service"] == UNKNOWN_SERVICE


def test_peer_priority_and_rpc_and_bad_status() -> None:
    d = derive(
        {
            "server.address": "10.0.0.1",
            "peer.service": "inventory",
            "rpc.service": "driver.DriverService",
            "rpc.method": "FindNearest",
            "http.status_code": 99999999999,
        },
        {"service.name": "frontend"},
    )
    assert d["peer"] == "inventory"
    assert d["rpc_method"] == "driver.DriverService/FindNearest"
    assert d["http_status"] is None  # out of range for a status code (and for int32)


def test_redis_statement_falls_back_to_operation() -> None:
    d = derive({"db.system": "redis", "db.operation": "GET"}, {})
    assert d["db_statement"] == "GET" and d["db_fingerprint"] == "GET"
