"""Parse Kubernetes resource quantities ("512Mi", "100m", "1e3") into exact rationals.

Follows apimachinery's ``resource.ParseQuantity`` grammar; never uses floating point.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Final

import attrs

# Kubernetes' own wording, so users can search for it and recognise it.
FORMAT_MESSAGE: Final = (
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)
TOO_LARGE_MESSAGE: Final = "quantity is too large"

# Both limits exist so that hostile YAML ("1e999999999") cannot make us build huge integers.
MAX_TEXT_LENGTH: Final = 100
MAX_EXPONENT: Final = 100

_BINARY_SI: Final = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL_SI: Final = {
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

# [0-9] rather than \d: \d would accept non-ASCII digits, which Kubernetes rejects.
_GRAMMAR: Final = re.compile(
    r"(?P<sign>[+-]?)(?P<whole>[0-9]*)(?:\.(?P<frac>[0-9]*))?"
    r"(?:(?P<si>[numkMGTPE]|[KMGTPE]i)|[eE](?P<exp>[+-]?[0-9]+))?"
)


class QuantityError(ValueError):
    """A text is not a valid Kubernetes quantity."""


@attrs.frozen
class Quantity:
    """A quantity as the user wrote it, with its exact value."""

    text: str
    exact: Fraction

    @classmethod
    def parse(cls, raw: object) -> Quantity:
        """Parse a YAML scalar (str, int or float) into a Quantity; raise QuantityError."""
        text = _as_text(raw)
        return cls(text=text, exact=_parse_text(text))

    def value(self) -> int:
        """The value rounded up to an integer, like Kubernetes' ``Value()``."""
        return math.ceil(self.exact)

    def milli_value(self) -> int:
        """Thousandths of the value rounded up, like Kubernetes' ``MilliValue()``."""
        return math.ceil(self.exact * 1000)

    def __str__(self) -> str:
        return self.text


def _as_text(raw: object) -> str:
    # bool is an int subclass, but `cpu: true` is a mistake, not the quantity 1.
    if isinstance(raw, bool):
        raise QuantityError(f"a quantity must be a string or a number, not {raw!r}")
    if isinstance(raw, str):
        return str(raw)
    if isinstance(raw, int):
        # Checked before str(): Python refuses to print ints beyond 4300 digits.
        if abs(raw).bit_length() > 4 * MAX_TEXT_LENGTH:
            raise QuantityError(TOO_LARGE_MESSAGE)
        return str(int(raw))
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise QuantityError(f"a quantity must be finite, not {raw!r}")
        # repr is the shortest text that round-trips, so YAML `0.5` means exactly 1/2.
        return repr(float(raw))
    raise QuantityError(f"a quantity must be a string or a number, not {type(raw).__name__}")


def _parse_text(text: str) -> Fraction:
    if len(text) > MAX_TEXT_LENGTH:
        raise QuantityError(f"{TOO_LARGE_MESSAGE}: {len(text)} characters")
    match = _GRAMMAR.fullmatch(text)
    if match is None or not (match["whole"] or match["frac"]):
        raise QuantityError(FORMAT_MESSAGE)
    frac = match["frac"] or ""
    magnitude = Fraction(int(match["whole"] + frac or "0"), 10 ** len(frac))
    number = -magnitude if match["sign"] == "-" else magnitude
    return number * _multiplier(match["si"], match["exp"])


def _multiplier(si: str | None, exp: str | None) -> Fraction:
    if exp is not None:
        power = int(exp)
        if abs(power) > MAX_EXPONENT:
            raise QuantityError(f"{TOO_LARGE_MESSAGE}: exponent {power}")
        return Fraction(10) ** power
    suffix = si or ""
    if suffix in _BINARY_SI:
        return Fraction(1024 ** _BINARY_SI[suffix])
    return Fraction(10) ** _DECIMAL_SI[suffix]


def rounded(size: int) -> str:
    """A size in bytes as a binary quantity, rounded: `1.2Gi`, `512Mi`, `4Ki`, `100`."""
    for unit, power in (("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)):
        if size >= 1 << power:
            value = size / (1 << power)
            return f"{value:.1f}".removesuffix(".0") + unit if value < 10 else f"{value:.0f}{unit}"
    return str(size)
