"""What a client span calls — its *resource* — as one string, per span or vectorized.

The target is the statement fingerprint, else the RPC method, the HTTP route, the URL with
ids and query removed, else the span name; the peer (host, peer service, database) prefixes it.
``resource_key(span)`` and ``resource_expr()`` give the same string for the same span.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl

    from tracelens.model import Span

# Shared by Python's re and polars (Rust regex): no look-around.
_ORIGIN = r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*"
_QUERY = r"[?#].*$"
_ID_SEGMENT = r"/[^/]*[0-9][^/]*"  # a path segment with a digit: an id, a hash, a date


def url_template(url: str | None) -> str | None:
    """``http://h:80/users/42/orders?x=1`` → ``http://h:80/users/?/orders``."""
    if not url:
        return None
    origin = re.match(_ORIGIN, url)
    head = origin.group(0) if origin else ""
    path = re.sub(_QUERY, "", url[len(head) :])
    return head + re.sub(_ID_SEGMENT, "/?", path)


def resource_key(span: Span) -> str:
    target = (
        span.db_fingerprint
        or span.rpc_method
        or span.http_route
        or url_template(span.http_url)
        or span.name
    )
    return f"{span.peer} {target}" if span.peer else target


def destination(span: Span) -> str:
    """Where a call goes: the HTTP origin (host and port), the database, the RPC service, else
    the peer. Calls to one destination are not parallel candidates for each other."""
    origin = re.match(_ORIGIN, span.http_url or "")
    if origin:
        return origin.group(0)
    if span.db_system:
        return f"db {span.db_system} {span.peer or ''}"
    if span.rpc_method:
        return f"rpc {span.rpc_method.rsplit('/', 1)[0]} {span.peer or ''}"
    return span.peer or resource_key(span)


def resource_expr() -> pl.Expr:
    """The same string as :func:`resource_key`, over a span frame."""
    import polars as pl

    url = pl.col("http_url")
    head = url.str.extract(f"({_ORIGIN})", 1).fill_null("")
    path = (
        url.str.replace(_ORIGIN, "")
        .str.replace(_QUERY, "")
        .str.replace_all(_ID_SEGMENT, "/?", literal=False)
    )
    template = pl.when(url.is_null() | (url == "")).then(None).otherwise(head + path)
    target = pl.coalesce(
        _non_empty("db_fingerprint"),
        _non_empty("rpc_method"),
        _non_empty("http_route"),
        template,
        pl.col("name"),
    )
    peer = pl.col("peer")
    return (
        pl.when(peer.is_null() | (peer == ""))
        .then(target)
        .otherwise(peer + " " + target)
        .alias("resource")
    )


def _non_empty(col: str) -> pl.Expr:
    import polars as pl

    return pl.when(pl.col(col) == "").then(None).otherwise(pl.col(col))
