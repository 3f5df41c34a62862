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

# attribute key -> (slot, rank); the lowest rank (the newer convention, listed first above)
# wins when several keys are present.
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

# Spans of one kind carry the same attribute keys in the same order, so what derive_row
# reads is planned once per key tuple: ((slot, candidate keys by rank), …) for the slots that
# have a candidate. A span then costs a few dict reads instead of a lookup per attribute.
_Plan = tuple[tuple[str, tuple[str, ...]], ...]
_PLANS: dict[tuple[str, ...], _Plan] = {}
_MAX_PLANS = 4096
_NO_DERIVED = (None,) * (len(DERIVED) - 1)


def _plan(keys: tuple[str, ...]) -> _Plan:
    by_slot: dict[str, list[tuple[int, str]]] = {}
    for key in keys:
        slot = _SLOTS.get(key)
        if slot is not None:
            by_slot.setdefault(slot[0], []).append((slot[1], key))
    plan = tuple((slot, tuple(k for _, k in sorted(found))) for slot, found in by_slot.items())
    if len(_PLANS) >= _MAX_PLANS:
        _PLANS.clear()
    _PLANS[keys] = plan
    return plan


def derive_row(attrs: Mapping[str, Any], resource: Mapping[str, Any]) -> tuple[Any, ...]:
    """The derived columns for one span, in the order of ``DERIVED`` (the builder's hot path)."""
    service = resource.get("service.name")
    service = str(service) if service else UNKNOWN_SERVICE
    if not attrs:
        return (service, *_NO_DERIVED)
    keys = tuple(attrs)
    plan = _PLANS.get(keys)
    if plan is None:
        plan = _plan(keys)
    found: dict[str, Any] = {}
    for slot, candidates in plan:
        for key in candidates:
            value = attrs[key]
            if value is not None and value != "":
                found[slot] = str(value) if slot != "http_status" else value
                break
    if not found:
        return (service, *_NO_DERIVED)
    get = found.get
    db_system = get("db_system")
    statement = get("db_statement")
    if statement is None and db_system and db_system.lower() in CACHE_SYSTEMS:
        statement = get("db_operation")
    rpc = get("rpc_method")
    if rpc is not None:
        rpc = f"{get('rpc_service') or ''}/{rpc}"
    status = get("http_status")
    return (
        service,
        db_system,
        statement,
        fingerprint(statement, db_system) if statement else None,
        get("peer"),
        get("http_route"),
        get("http_method"),
        get("http_url"),
        None if status is None else _status(status),
        rpc,
    )


def derive(attrs: Mapping[str, Any], resource: Mapping[str, Any]) -> dict[str, Any]:
    """The derived columns for one span, keyed by column name."""
    return dict(zip(DERIVED, derive_row(attrs, resource), strict=True))


def _status(value: Any) -> int | None:
    """An HTTP status code, or None when the attribute is not one (the column is int32)."""
    if isinstance(value, bool):
        return None
    try:
        code = int(value)
    except (TypeError, ValueError):
        return None
    return code if 100 <= code <= 999 else None
