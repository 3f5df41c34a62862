"""Derived span columns read from semantic-convention attributes, old names and new.

Every analysis needs the service, the database statement and its fingerprint, the remote
peer and the HTTP route, so they are computed once at ingest.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
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


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


# --- statement fingerprints -------------------------------------------------------------------

_COMMENT = re.compile(r"/\*.*?\*/|--[^\n]*", re.S)
_STRING = re.compile(r"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.)*\"(?=\s*(?:,|\)|$|\s(?:and|or)\b))",
                     re.I)
_PLACEHOLDER = re.compile(r"%\(\w+\)s|%s|\$\d+|(?<![\w:]):\w+|@\w+|\?")
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:0x[0-9a-f]+|\d+(?:\.\d+)?(?:e[-+]?\d+)?)(?![\w.])", re.I)
_IN_LIST = re.compile(r"\bin\s*\(\s*\?(?:\s*,\s*\?)*\s*\)", re.I)
_VALUES_LIST = re.compile(r"(\(\s*\?(?:\s*,\s*\?)*\s*\))(?:\s*,\s*\(\s*\?(?:\s*,\s*\?)*\s*\))+")
_SPACE = re.compile(r"\s+")


def fingerprint_sql(statement: str) -> str:
    """Normalize a statement so that the same query with other parameters has one fingerprint.

    Literals and every placeholder style (``%(pk_1)s``, ``%s``, ``$1``, ``:name``, ``?``) become
    ``?``; IN-lists collapse to ``IN (?)`` and multi-row VALUES to their first row; whitespace and comments go.
    """
    text = _COMMENT.sub(" ", statement)
    text = _STRING.sub("?", text)
    text = _PLACEHOLDER.sub("?", text)
    text = _NUMBER.sub("?", text)
    text = _IN_LIST.sub("IN (?)", text)
    text = _VALUES_LIST.sub(r"\1", text)
    return _SPACE.sub(" ", text).strip().rstrip(";").strip()


def fingerprint_command(statement: str) -> str:
    """Cache commands (``GET user:42``) keep the verb; arguments are parameters."""
    parts = statement.split(None, 1)
    if not parts:
        return ""
    return parts[0].upper() + (" ?" if len(parts) > 1 else "")


def fingerprint(statement: str | None, db_system: str | None) -> str | None:
    if not statement:
        return None
    if db_system and db_system.lower() in CACHE_SYSTEMS:
        return fingerprint_command(statement)
    return fingerprint_sql(statement)


# --- the derived columns ----------------------------------------------------------------------


def derive(attrs: Mapping[str, Any], resource: Mapping[str, Any]) -> dict[str, str | None]:
    """The derived columns for one span. Keys match ``model.DERIVED_COLUMNS``."""
    db_system = _text(first(attrs, DB_SYSTEM_KEYS))
    statement = _text(first(attrs, DB_STATEMENT_KEYS))
    if statement is None and db_system and db_system.lower() in CACHE_SYSTEMS:
        statement = _text(first(attrs, DB_OPERATION_KEYS))
    method = _text(first(attrs, HTTP_METHOD_KEYS))
    rpc = None
    if attrs.get("rpc.method"):
        rpc = f"{attrs.get('rpc.service') or ''}/{attrs['rpc.method']}"
    status = first(attrs, HTTP_STATUS_KEYS)
    return {
        "service": _text(resource.get("service.name")) or UNKNOWN_SERVICE,
        "db_system": db_system,
        "db_statement": statement,
        "db_fingerprint": fingerprint(statement, db_system),
        "peer": _text(first(attrs, PEER_KEYS)),
        "http_route": _text(attrs.get("http.route")),
        "http_method": method,
        "http_url": _text(first(attrs, HTTP_URL_KEYS)),
        "http_status": int(status) if _is_int(status) else None,
        "rpc_method": rpc,
    }


def _is_int(value: Any) -> bool:
    if isinstance(value, bool) or value is None:
        return False
    try:
        int(value)
    except (TypeError, ValueError):
        return False
    return True
