"""Tests for vmid.api.quantity: Kubernetes quantity parsing with exact arithmetic."""

from __future__ import annotations

import enum
import math
import re
from fractions import Fraction

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmid.api.quantity import (
    FORMAT_MESSAGE,
    MAX_EXPONENT,
    MAX_TEXT_LENGTH,
    TOO_LARGE_MESSAGE,
    Quantity,
    QuantityError,
)

BINARY_SUFFIXES = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]
DECIMAL_SUFFIXES = {
    "n": -9,
    "u": -6,
    "m": -3,
    "": 0,
    "k": 3,
    "M": 6,
    "G": 9,
    "T": 12,
    "P": 15,
    "E": 18,
}

F = Fraction


@pytest.mark.parametrize(
    ("text", "exact", "value", "milli"),
    [
        ("1024M", F(1_024_000_000), 1_024_000_000, 1_024_000_000_000),
        ("1Gi", F(2**30), 2**30, 2**30 * 1000),
        ("2Gi", F(2147483648), 2147483648, 2147483648000),
        ("100m", F(1, 10), 1, 100),
        ("1500m", F(3, 2), 2, 1500),
        ("1.5", F(3, 2), 2, 1500),
        ("-1.5", F(-3, 2), -1, -1500),
        ("1e3", F(1000), 1000, 1_000_000),
        ("1E3", F(1000), 1000, 1_000_000),
        ("1.5E-2", F(15, 1000), 1, 15),
        ("1E-2", F(1, 100), 1, 10),
        ("1e+3", F(1000), 1000, 1_000_000),
        ("1e-0", F(1), 1, 1000),
        ("1.5Gi", F(1610612736), 1610612736, 1610612736000),
        ("0.5Ki", F(512), 512, 512_000),
        ("128Mi", F(134217728), 134217728, 134217728000),
        ("1Ki", F(1024), 1024, 1_024_000),
        ("1Ti", F(2**40), 2**40, 2**40 * 1000),
        ("1Pi", F(2**50), 2**50, 2**50 * 1000),
        ("1Ei", F(2**60), 2**60, 2**60 * 1000),
        ("-1", F(-1), -1, -1000),
        ("0", F(0), 0, 0),
        ("-0", F(0), 0, 0),
        ("+5", F(5), 5, 5000),
        ("007", F(7), 7, 7000),
        (".5", F(1, 2), 1, 500),
        ("5.", F(5), 5, 5000),
        ("-.5", F(-1, 2), 0, -500),
        ("1.G", F(10**9), 10**9, 10**12),
        ("1n", F(1, 10**9), 1, 1),
        ("1u", F(1, 10**6), 1, 1),
        ("250m", F(1, 4), 1, 250),
        ("0.1m", F(1, 10_000), 1, 1),
        ("-0.1m", F(-1, 10_000), 0, 0),
        ("1k", F(1000), 1000, 1_000_000),
        ("1M", F(10**6), 10**6, 10**9),
        ("1G", F(10**9), 10**9, 10**12),
        ("1T", F(10**12), 10**12, 10**15),
        ("1P", F(10**15), 10**15, 10**18),
        ("1E", F(10**18), 10**18, 10**21),
        ("1e100", F(10**100), 10**100, 10**103),
        ("1e-100", F(1, 10**100), 1, 1),
        ("123456789.123456789", F(123456789123456789, 10**9), 123456790, 123456789124),
    ],
)
def test_valid(text: str, exact: Fraction, value: int, milli: int) -> None:
    q = Quantity.parse(text)
    assert q.exact == exact
    assert q.value() == value
    assert q.milli_value() == milli
    assert q.text == text
    assert str(q) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        ".",
        "-",
        "+",
        "+.",
        "1 Gi",
        " 1",
        "1 ",
        "1\n",
        "1KB",
        "1kB",
        "1K",
        "1gi",
        "1ki",
        "1Ki3",
        "1m3",
        "1i",
        "0x10",
        "1_000",
        "1,5",
        "1.2.3",
        "1e",
        "1E+",
        "1e-",
        "1e3.5",
        "1e1e1",
        "1Ee3",
        "1.5E-2Gi",
        "Gi",
        "e3",
        "--1",
        "+-1",
        "abc",
        "inf",
        "nan",
        "\u0661",  # ARABIC-INDIC DIGIT ONE: a digit to Python, not to Kubernetes
        "1\u0661",
        "\uff11",  # FULLWIDTH DIGIT ONE
    ],
)
def test_invalid_text(text: str) -> None:
    with pytest.raises(QuantityError, match=re.escape(FORMAT_MESSAGE)):
        Quantity.parse(text)


@pytest.mark.parametrize(
    "text",
    [
        f"1e{MAX_EXPONENT + 1}",
        f"1e-{MAX_EXPONENT + 1}",
        "1e999999999",
        "1E999999999999999999999999999999",
        "9" * (MAX_TEXT_LENGTH + 1),
        "x" * 10_000,
    ],
)
def test_too_large(text: str) -> None:
    with pytest.raises(QuantityError, match=TOO_LARGE_MESSAGE):
        Quantity.parse(text)


def test_longest_allowed_text() -> None:
    text = "9" * MAX_TEXT_LENGTH
    assert Quantity.parse(text).value() == int(text)


@pytest.mark.parametrize("raw", [True, False, None, [], ["1Gi"], {"a": 1}, b"1Gi", F(1), 1j])
def test_non_scalar_rejected(raw: object) -> None:
    with pytest.raises(QuantityError):
        Quantity.parse(raw)


@pytest.mark.parametrize(
    ("raw", "text", "exact"),
    [
        (0.5, "0.5", F(1, 2)),
        (0.1, "0.1", F(1, 10)),
        (2.0, "2.0", F(2)),
        (-0.25, "-0.25", F(-1, 4)),
        (-0.0, "-0.0", F(0)),
        (1e20, "1e+20", F(10**20)),
        (1.5e-05, "1.5e-05", F(15, 10**6)),
    ],
)
def test_float_input_is_exact(raw: float, text: str, exact: Fraction) -> None:
    q = Quantity.parse(raw)
    assert q.text == text
    assert q.exact == exact


@pytest.mark.parametrize("raw", [math.nan, math.inf, -math.inf])
def test_non_finite_float_rejected(raw: float) -> None:
    with pytest.raises(QuantityError, match="finite"):
        Quantity.parse(raw)


def test_huge_float_rejected() -> None:
    with pytest.raises(QuantityError, match=TOO_LARGE_MESSAGE):
        Quantity.parse(1e300)


@pytest.mark.parametrize(
    ("raw", "text"), [(0, "0"), (4, "4"), (-7, "-7"), (2**40, "1099511627776")]
)
def test_int_input(raw: int, text: str) -> None:
    q = Quantity.parse(raw)
    assert q.text == text
    assert str(q) == text
    assert q.exact == raw
    assert q.value() == raw


def test_int_subclass_uses_its_number() -> None:
    class Cores(enum.IntEnum):
        FOUR = 4

    assert Quantity.parse(Cores.FOUR).text == "4"


# Explicit ids: pytest would otherwise str() these, which Python refuses past 4300 digits.
@pytest.mark.parametrize(
    "raw", [10**5000, -(10**5000), 10**MAX_TEXT_LENGTH], ids=["10^5000", "-10^5000", "10^limit"]
)
def test_huge_int_rejected(raw: int) -> None:
    with pytest.raises(QuantityError, match=TOO_LARGE_MESSAGE):
        Quantity.parse(raw)


def test_quantity_is_frozen() -> None:
    q = Quantity.parse("1Gi")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        q.text = "2Gi"  # type: ignore[misc]


def test_error_is_value_error() -> None:
    assert issubclass(QuantityError, ValueError)


@settings(deadline=None)
@given(n=st.integers(min_value=-(10**15), max_value=10**15), k=st.integers(1, 6))
def test_binary_suffix_property(n: int, k: int) -> None:
    q = Quantity.parse(f"{n}{BINARY_SUFFIXES[k - 1]}")
    assert q.value() == n * 1024**k
    assert q.exact == n * 1024**k


_DIGITS = st.text(alphabet="0123456789", max_size=12)


@settings(deadline=None)
@given(
    sign=st.sampled_from(["", "+", "-"]),
    whole=_DIGITS,
    frac=st.none() | _DIGITS,
    suffix=st.sampled_from(sorted(DECIMAL_SUFFIXES)) | st.integers(-30, 30),
)
def test_decimal_property(sign: str, whole: str, frac: str | None, suffix: str | int) -> None:
    if not whole and not frac:
        whole = "0"
    if isinstance(suffix, int):
        suffix_text, power = f"e{suffix}", suffix
    else:
        suffix_text, power = suffix, DECIMAL_SUFFIXES[suffix]
    dot = "" if frac is None else f".{frac}"
    frac_digits = frac or ""
    magnitude = F(int(whole + frac_digits or "0"), 10 ** len(frac_digits)) * F(10) ** power
    expected = -magnitude if sign == "-" else magnitude

    q = Quantity.parse(f"{sign}{whole}{dot}{suffix_text}")
    assert q.exact == expected
    assert q.value() == math.ceil(expected)
    assert q.milli_value() == math.ceil(expected * 1000)


@settings(deadline=None)
@given(text=st.text() | st.from_regex(r"[+-]?[0-9.]*[eEinumkKMGTP]*[-+]?[0-9]*", fullmatch=True))
def test_parse_only_raises_quantity_error(text: str) -> None:
    try:
        q = Quantity.parse(text)
    except QuantityError:
        return
    assert q.text == text
    assert isinstance(q.value(), int)


@settings(deadline=None)
@given(n=st.integers(min_value=-(10**30), max_value=10**30))
def test_milli_suffix_property(n: int) -> None:
    assert Quantity.parse(f"{n}m").milli_value() == n
