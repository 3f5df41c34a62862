"""Derived span columns read from semantic-convention attributes, old names and new.

Every analysis needs the service, the database statement and its fingerprint, the remote
peer and the HTTP route, so they are computed once at ingest.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

UNKNOWN_SERVICE = "unknown_service"

# Newer name first: when both are present the stable convention wins.
DB_SYSTEM_KEYS = ("db.system.name", "db.system")
DB_STATEMENT_KEYS = ("db.query.text", "db.statement")
DB_OPERATION_KEYS = ("db.operation.name", "db.operation")
HTTP_METHOD_KEYS = ("http.request.method", "http.method")
HTTP_URL_KEYS = ("url.full", "http.url", "http.target", "url.path")
HTTP_STATUS_KEYS = ("http.response.status_code", "http.status_code")
PEER_KEYS = (
    "peer.service",
    "service.peer.name",
    "server.address",
    "net.peer.name",
    "db.namespace",
    "db.name",
    "net.sock.peer.addr",
    "network.peer.address",
    "http.host",
)
CACHE_SYSTEMS = frozenset({"redis", "memcached", "valkey"})


def first(attrs: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = attrs.get(key)
        if value is not None and value != "":
            return value
    return None


# --- statement fingerprints -------------------------------------------------------------------

_COMMENT = re.compile(r"/\*.*?\*/|--[^\n]*", re.S)
_STRING = re.compile(
    r"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.)*\"(?=\s*(?:,|\)|$|\s(?:and|or)\b))", re.I
)
_PLACEHOLDER = re.compile(r"%\(\w+\)s|%s|\$\d+|(?<![\w:]):\w+|@\w+|\?")
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:0x[0-9a-f]+|\d+(?:\.\d+)?(?:e[-+]?\d+)?)(?![\w.])", re.I)
_IN_LIST = re.compile(r"\bin\s*\(\s*\?(?:\s*,\s*\?)*\s*\)", re.I)
_VALUES_LIST = re.compile(r"(\(\s*\?(?:\s*,\s*\?)*\s*\))(?:\s*,\s*\(\s*\?(?:\s*,\s*\?)*\s*\))+")
_SPACE = re.compile(r"\s+")
# Strings, placeholders and numbers in one pass: at any position at most one can start.
_LITERAL = re.compile("|".join(f"(?:{r.pattern})" for r in (_STRING, _PLACEHOLDER, _NUMBER)), re.I)
_ODD_SPACE = re.compile(r"\s\s|[\t\n\r\f\v]")


def fingerprint_sql(statement: str) -> str:
    """Normalize a statement so that the same query with other parameters has one fingerprint.

    Literals and every placeholder style (``%(pk_1)s``, ``%s``, ``$1``, ``:name``, ``?``) become
    ``?``; IN-lists collapse to ``IN (?)`` and multi-row VALUES to their first row;
    whitespace and comments go.
    """
    text = statement
    if "--" in text or "/*" in text:
        text = _COMMENT.sub(" ", text)
    text = _LITERAL.sub("?", text)
    if "(" in text:  # IN-lists and VALUES rows: only worth a regex when a parenthesis is there
        text = _IN_LIST.sub("IN (?)", text)
        text = _VALUES_LIST.sub(r"\1", text)
    if _ODD_SPACE.search(text):
        text = _SPACE.sub(" ", text)
    return text.strip().rstrip(";").strip()


def fingerprint_command(statement: str) -> str:
    """Cache commands (``GET user:42``) keep the verb; arguments are parameters."""
    parts = statement.split(None, 1)
    if not parts:
        return ""
    return parts[0].upper() + (" ?" if len(parts) > 1 else "")


@lru_cache(maxsize=8192)
def fingerprint(statement: str | None, db_system: str | None) -> str | None:
    # Cached: an N+1 repeats one statement many times, often with the same text.
    if not statement:
        return None
    if db_system and db_system.lower() in CACHE_SYSTEMS:
        return fingerprint_command(statement)
    return fingerprint_sql(statement)


# --- the derived columns ----------------------------------------------------------------------

DERIVED = (
    "service",
    "db_system",
    "db_statement",
    "db_fingerprint",
    "peer",
    "http_route",
    "http_method",
    "http_url",
    "http_status",
    "rpc_method",
)

# attribute key -> (slot, rank): one dict lookup per attribute instead of ~30 per span; the
# lowest rank (the newer convention, listed first above) wins when several keys are present.
_SLOTS: dict[str, tuple[str, int]] = {}
for _slot, _keys in (
    ("db_system", DB_SYSTEM_KEYS),
    ("db_statement", DB_STATEMENT_KEYS),
    ("db_operation", DB_OPERATION_KEYS),
    ("peer", PEER_KEYS),
    ("http_route", ("http.route",)),
    ("http_method", HTTP_METHOD_KEYS),
    ("http_url", HTTP_URL_KEYS),
    ("http_status", HTTP_STATUS_KEYS),
    ("rpc_method", ("rpc.method",)),
    ("rpc_service", ("rpc.service",)),
):
    for _rank, _key in enumerate(_keys):
        _SLOTS[_key] = (_slot, _rank)


def derive_row(attrs: Mapping[str, Any], resource: Mapping[str, Any]) -> tuple[Any, ...]:
    """The derived columns for one span, in the order of ``DERIVED`` (the builder's hot path)."""
    found: dict[str, tuple[int, Any]] = {}
    slots = _SLOTS
    for key, value in attrs.items():
        slot = slots.get(key)
        if slot is None or value is None or value == "":
            continue
        prev = found.get(slot[0])
        if prev is None or slot[1] < prev[0]:
            found[slot[0]] = (slot[1], value)
    service = resource.get("service.name")
    if not found:
        return (str(service) if service else UNKNOWN_SERVICE,) + (None,) * 9
    get = found.get
    db_system = _value(get("db_system"))
    statement = _value(get("db_statement"))
    if statement is None and db_system and db_system.lower() in CACHE_SYSTEMS:
        statement = _value(get("db_operation"))
    rpc = _value(get("rpc_method"))
    if rpc is not None:
        rpc = f"{_value(get('rpc_service')) or ''}/{rpc}"
    return (
        str(service) if service else UNKNOWN_SERVICE,
        db_system,
        statement,
        fingerprint(statement, db_system),
        _value(get("peer")),
        _value(get("http_route")),
        _value(get("http_method")),
        _value(get("http_url")),
        _status(get("http_status")),
        rpc,
    )


def derive(attrs: Mapping[str, Any], resource: Mapping[str, Any]) -> dict[str, Any]:
    """The derived columns for one span, keyed by column name."""
    return dict(zip(DERIVED, derive_row(attrs, resource), strict=True))


def _value(found: tuple[int, Any] | None) -> str | None:
    return None if found is None else str(found[1])


def _status(found: tuple[int, Any] | None) -> int | None:
    """An HTTP status code, or None when the attribute is not one (the column is int32)."""
    if found is None or isinstance(found[1], bool):
        return None
    try:
        code = int(found[1])
    except (TypeError, ValueError):
        return None
    return code if 100 <= code <= 999 else None
