"""Trace and span ids in their canonical form: lowercase hex, 32 chars for traces, 16 for spans.

Sources write ids as hex (any case, 64-bit trace ids unpadded), base64 (OTLP/JSON from gogo
protojson, Jaeger jsonpb), raw bytes (protobuf) or X-Ray's ``1-<8 hex>-<24 hex>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

TRACE_ID_HEX = 32
SPAN_ID_HEX = 16

_HEX = re.compile(r"[0-9a-fA-F]+")
_B64 = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_XRAY = re.compile(r"1-([0-9a-fA-F]{8})-([0-9a-fA-F]{24})")


class IdError(ValueError):
    """An id that is neither hex nor base64 of the right length."""


def from_bytes(raw: bytes, nbytes: int) -> str:
    """Raw protobuf id bytes → hex; shorter ids are left-padded with zeros."""
    if not raw or len(raw) > nbytes:
        raise IdError(f"id must be 1..{nbytes} bytes, got {len(raw)}")
    return raw.hex().rjust(nbytes * 2, "0")


def _from_hex(text: str, width: int) -> str:
    if len(text) > width:
        # 128-bit ids whose high half is zero are sometimes written for 64-bit span ids.
        if text[: len(text) - width].strip("0"):
            raise IdError(f"hex id {text!r} is longer than {width} digits")
        text = text[len(text) - width :]
    return text.lower().rjust(width, "0")


def _from_base64(text: str, nbytes: int, exact: bool) -> str | None:
    altchars = b"-_" if ("-" in text or "_" in text) else None
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        return None
    if not raw or len(raw) > nbytes or (exact and len(raw) != nbytes):
        return None
    # Only a faithful encoding counts: "span-1" and "span-2" decode (dropping bits) to the
    # same bytes, which would merge distinct synthetic ids.
    encoded = base64.b64encode(raw, altchars=altchars).decode().rstrip("=")
    if encoded != text.rstrip("="):
        return None
    return raw.hex().rjust(nbytes * 2, "0")


def normalize(value: object, nbytes: int, *, exact: bool = False, lenient: bool = False) -> str:
    """Any textual or binary id → canonical lowercase hex of ``nbytes`` bytes.

    Hex is tried before base64 when the text has a plausible hex length, because a short hex
    id like ``"1234abcd"`` is also valid base64. ``exact`` (OTLP) demands the full width:
    32/16 hex digits or base64 of exactly 16/8 bytes. ``lenient`` maps anything else (synthetic ids
    such as ``"A"`` in hand-written test traces) to a stable hash instead of raising.
    """
    width = nbytes * 2
    if isinstance(value, bytes | bytearray):
        if exact and len(value) != nbytes:
            raise IdError(f"id must be {nbytes} bytes, got {len(value)}")
        return from_bytes(bytes(value), nbytes)
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            value &= (1 << (nbytes * 8)) - 1
        return format(value, "x").rjust(width, "0")[-width:]
    if not isinstance(value, str):
        raise IdError(f"id must be a string, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise IdError("id is empty")
    xray = _XRAY.fullmatch(text)
    if xray:
        return (xray.group(1) + xray.group(2)).lower()
    if _HEX.fullmatch(text) and (not exact or len(text) == width):
        try:
            return _from_hex(text, width)
        except IdError:
            if not lenient:
                raise
    if _B64.fullmatch(text):
        decoded = _from_base64(text, nbytes, exact)
        if decoded is not None:
            return decoded
    if lenient:
        return hashlib.blake2b(text.encode(), digest_size=nbytes).hexdigest()
    raise IdError(f"id {text!r} is neither hex nor base64 of {nbytes} bytes")


def trace_id(value: object, *, exact: bool = False, lenient: bool = False) -> str:
    return normalize(value, 16, exact=exact, lenient=lenient)


def span_id(value: object, *, exact: bool = False, lenient: bool = False) -> str:
    return normalize(value, 8, exact=exact, lenient=lenient)


def is_zero(hex_id: str) -> bool:
    return not hex_id.strip("0")
