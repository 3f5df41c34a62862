"""Id normalization: every textual and binary form sources use → canonical lowercase hex."""

from __future__ import annotations

import pytest

from tracelens import ids


@pytest.mark.parametrize(
    ("value", "kwargs", "expected"),
    [
        ("4BF92F3577B34DA6A3CE929D0E0E4736", {}, "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("a3ce929d0e0e4736", {}, "0000000000000000a3ce929d0e0e4736"),  # 64-bit, left-padded
        ("QpC1h3qZMN55u0KDZTmOzA==", {"exact": True}, "4290b5877a9930de79bb428365398ecc"),
        ("1-5f84c7a1-4a3b00000000000000000001", {}, "5f84c7a14a3b00000000000000000001"),
        (bytes.fromhex("00" * 15 + "11"), {"exact": True}, "0" * 30 + "11"),
        (0x11, {}, "0" * 30 + "11"),
    ],
)
def test_trace_id_forms(value: object, kwargs: dict, expected: str) -> None:
    assert ids.trace_id(value, **kwargs) == expected


@pytest.mark.parametrize("value", ["zzz", "!!!INVALID_BASE64!!!", "", "abc", b"\x01\x02"])
def test_exact_trace_ids_reject_wrong_width_and_garbage(value: object) -> None:
    with pytest.raises(ids.IdError):
        ids.trace_id(value, exact=True)


def test_span_id_accepts_zero_high_half_of_128_bit_hex() -> None:
    assert ids.span_id("0000000000000000a3ce929d0e0e4736") == "a3ce929d0e0e4736"
    with pytest.raises(ids.IdError):
        ids.span_id("1000000000000000a3ce929d0e0e4736")


def test_lenient_ids_are_stable_hashes_of_synthetic_names() -> None:
    first = ids.span_id("root-span", lenient=True)
    assert first == ids.span_id("root-span", lenient=True)
    assert len(first) == 16 and first != ids.span_id("other-span", lenient=True)
    with pytest.raises(ids.IdError):
        ids.span_id("root-span")


def test_is_zero() -> None:
    assert ids.is_zero("0" * 16)
    assert not ids.is_zero("0" * 15 + "1")


def test_lossy_base64_is_not_an_id() -> None:
    # "span-1".."span-7" are valid URL-safe base64 alphabets but decode dropping bits; they
    # must hash to distinct ids, not collapse onto one decoded value.
    got = {ids.span_id(f"span-{i}", lenient=True) for i in range(1, 8)}
    assert len(got) == 7
    assert ids.span_id("AAAAAAAAAAE=", exact=True) == "0000000000000001"
