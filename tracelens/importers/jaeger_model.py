"""What the two Jaeger importers share: ids, references, and the tags that are not attributes.

Jaeger keeps OTel's span kind, status and scope as tags (``span.kind``, ``error``,
``otel.status_code``…). They become columns and leave the attributes, as the OpenTelemetry
Collector's Jaeger translator does. References become the parent (first CHILD_OF in the same
trace, else the first FOLLOWS_FROM, flagged ``follows_from``) and links (every other reference,
and every reference into another trace).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterable
from typing import Any

from tracelens import ids
from tracelens.model import SpanKind, StatusCode

KINDS = {
    "client": SpanKind.CLIENT.value,
    "server": SpanKind.SERVER.value,
    "producer": SpanKind.PRODUCER.value,
    "consumer": SpanKind.CONSUMER.value,
    "internal": SpanKind.INTERNAL.value,
}
STATUS = {"OK": StatusCode.OK.value, "ERROR": StatusCode.ERROR.value, "UNSET": 0}
# Tags that become columns besides span.kind; spans rarely have any of them.
_COLUMN_TAGS = (
    "error",
    "otel.status_code",
    "otel.status_description",
    "otel.scope.name",
    "otel.library.name",
    "otel.scope.version",
    "otel.library.version",
)
_OTHER_COLUMN_TAGS = frozenset(_COLUMN_TAGS)
CHILD_OF = "CHILD_OF"
FOLLOWS_FROM = "FOLLOWS_FROM"
REF_TYPE_ATTR = "opentracing.ref_type"  # as the Collector names it on links

HEX_SPAN = re.compile(r"[0-9a-f]{16}").fullmatch  # a canonical span id, used as is
_HEX_TRACE = re.compile(r"[0-9a-f]{32}").fullmatch
_HEX = re.compile(r"[0-9a-fA-F]+").fullmatch


def hex_id(raw: Any, nbytes: int) -> str:
    """A Jaeger UI-model id → canonical hex: hex as is (padded), anything else hashed.

    The UI model writes hex only, so synthetic ids ("A", "span-1") are never read as base64:
    ``ids.normalize(lenient=True)`` tries base64 first and maps "span-1" … "span-7" to one id
    (the padding bits it drops differ), which would merge distinct spans. The hash is the same
    one ``ids`` uses for lenient ids.
    """
    if isinstance(raw, str):
        text = raw.strip()
        if _HEX(text):
            try:
                return ids.normalize(text, nbytes)
            except ids.IdError:
                pass  # longer than the id: hash it like any other synthetic id
        if text:
            return hashlib.blake2b(text.encode(), digest_size=nbytes).hexdigest()
    return ids.normalize(raw, nbytes, lenient=True)  # integers; empty ids raise IdError


def span_id(raw: Any) -> str:
    """Canonical span id of the UI model; 16 lowercase hex digits skip all parsing."""
    if type(raw) is str and HEX_SPAN(raw):
        return raw
    return hex_id(raw, 8)


class TraceIds:
    """Canonical trace ids, memoized: every span and reference of a trace repeats its id.

    ``parse`` is :func:`hex_id` for the UI model, ``ids.trace_id`` for base64 (jsonpb) ids.
    """

    def __init__(self, parse: Callable[[Any], str] | None = None) -> None:
        self._cache: dict[Any, str] = {}
        self._parse = parse or (lambda raw: hex_id(raw, 16))

    def __call__(self, raw: Any) -> str:
        try:
            return self._cache[raw]
        except KeyError:
            pass
        except TypeError:  # unhashable: let the parser raise a clear error
            return self._parse(raw)
        value = raw if type(raw) is str and _HEX_TRACE(raw) else self._parse(raw)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[raw] = value
        return value


def pop_bookkeeping(attrs: dict[str, Any]) -> tuple[int, int, str | None, str | None, str | None]:
    """Remove the tags that are columns; returns (kind, status, message, scope, scope_version)."""
    kind = attrs.pop("span.kind", None)
    if kind is not None:
        kind = KINDS.get(kind.lower() if type(kind) is str else kind, 0)
    if _OTHER_COLUMN_TAGS.isdisjoint(attrs):  # the common case: nothing else to take out
        return kind or 0, 0, None, None, None
    status = 0
    message = attrs.pop("otel.status_description", None)
    code = attrs.pop("otel.status_code", None)
    if code is not None:
        status = STATUS.get(str(code).upper(), 0)
    error = attrs.get("error")
    if error is True or (type(error) is str and error.lower() == "true"):
        status = StatusCode.ERROR.value
        del attrs["error"]
    scope = _first_popped(attrs, "otel.scope.name", "otel.library.name")
    version = _first_popped(attrs, "otel.scope.version", "otel.library.version")
    if status != StatusCode.ERROR:
        message = None  # OTLP keeps a description only for errors
    return kind or 0, status, _text(message), _text(scope), _text(version)


def _first_popped(attrs: dict[str, Any], *keys: str) -> Any:
    values = [attrs.pop(key, None) for key in keys]
    return next((v for v in values if v is not None and v != ""), None)


def resolve_references(
    refs: Iterable[tuple[str, str, str]], trace_id: str
) -> tuple[str | None, bool, list[dict[str, Any]]]:
    """``(ref_type, trace_id, span_id)`` triples → ``(parent, follows_from, links)``."""
    refs = list(refs)
    parent = None
    for wanted in (CHILD_OF, FOLLOWS_FROM):
        for i, (ref_type, ref_trace, _) in enumerate(refs):
            if ref_type == wanted and ref_trace == trace_id:
                parent = i
                break
        if parent is not None:
            break
    links = [
        {
            "trace_id": ref_trace,
            "span_id": ref_span,
            "trace_state": None,
            "attributes": {REF_TYPE_ATTR: ref_type.lower()},
        }
        for i, (ref_type, ref_trace, ref_span) in enumerate(refs)
        if i != parent
    ]
    if parent is None:
        return None, False, links
    return refs[parent][2], refs[parent][0] == FOLLOWS_FROM, links


def ref_type(raw: Any) -> str:
    """``CHILD_OF`` / ``FOLLOWS_FROM`` in any case; a missing type means CHILD_OF."""
    if raw is None:
        return CHILD_OF
    text = str(raw).upper()
    return FOLLOWS_FROM if text in (FOLLOWS_FROM, "FOLLOWSFROM", "1") else CHILD_OF


def resource(service: Any, tags: dict[str, Any]) -> dict[str, Any]:
    """Process → resource attributes, ``service.name`` first (the process's serviceName wins)."""
    out = {"service.name": str(service) if service else ""}
    for key, value in tags.items():
        if key != "service.name" or not out["service.name"]:
            out[key] = value
    if not out["service.name"]:
        del out["service.name"]
    return out


def typed_value(kind: Any, value: Any) -> Any:
    """A typed tag's value as its type says (``int64`` may arrive as a string)."""
    kind = kind.lower() if type(kind) is str else kind
    if kind == "int64":
        return value if type(value) is int else int(value)
    if kind == "float64":
        return value if type(value) is float else float(value)
    if kind == "bool":
        return value if type(value) is bool else str(value).lower() == "true"
    if kind == "binary":
        return base64.b64decode(value) if value else b""
    return value  # "string", a missing type, or one Jaeger does not define


def micros(value: Any) -> int:
    """Jaeger's microseconds → integer nanoseconds (floats rounded, not truncated)."""
    if type(value) is int:
        return value * 1000
    if isinstance(value, float):
        return round(value * 1000)
    if isinstance(value, str):
        return int(value) * 1000
    raise TypeError(f"expected microseconds, got {type(value).__name__}")


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
