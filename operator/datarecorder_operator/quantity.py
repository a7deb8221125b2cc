"""Kubernetes resource quantities ("500m", "1Gi", "10k", 2) parsed to exact decimals.

Owns the quantity grammar and value equality; pure, no I/O. The API server stores quantities in
a canonical form ("0.5" becomes "500m"), so comparing them as text would see drift that is not.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, localcontext

# <sign><digits>[.<digits>]<suffix>, suffix a decimal SI or binary SI unit or an e-exponent,
# as in k8s.io/apimachinery/pkg/api/resource (quantity.go).
_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>[eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$"
)
_SCALE: dict[str, Decimal] = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
# The server keeps no precision below one nano-unit and rounds finer values up ("0.1n" is
# stored as "1n"), so two inputs that differ only below it are the same stored quantity.
_NANO = Decimal("1e-9")
# Digits kept in arithmetic: any quantity the server accepts (below 2^63 units, down to 1n)
# fits with room to spare, so parsing and rounding are exact.
_DIGITS = 64


def parse(value: str | int | float) -> Decimal:
    """The quantity's exact value in base units; ValueError if it is not a quantity."""
    if isinstance(value, bool):
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    text = str(value)
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    suffix = match.group("suffix") or ""
    number = Decimal(match.group("number"))
    # Exact arithmetic: the default 28 digits would round a long mantissa times 2^60.
    with localcontext(prec=_DIGITS):
        try:
            if suffix in _SCALE:  # before the exponent: "E" and "Ei" are units
                return number * _SCALE[suffix]
            return number.scaleb(int(suffix[1:]))
        except ArithmeticError as exc:  # decimal's InvalidOperation, Overflow
            raise ValueError(f"quantity out of range: {text!r}") from exc


def stored(value: str | int | float) -> Decimal:
    """The value the API server keeps for `value`: rounded up to a whole nano-unit."""
    exact = parse(value)
    with localcontext(prec=_DIGITS):
        try:
            return exact.quantize(_NANO, rounding=ROUND_CEILING)
        except ArithmeticError as exc:
            raise ValueError(f"quantity out of range: {value!r}") from exc


def same(a: object, b: object) -> bool:
    """Whether `a` and `b` are quantities the server stores as one value ("1Gi" == "1024Mi").

    Anything that does not parse as a quantity compares as itself, so a field that was edited
    to garbage still counts as changed.
    """
    if not isinstance(a, str | int | float) or not isinstance(b, str | int | float):
        return a == b
    try:
        return stored(a) == stored(b)
    except ValueError:
        return a == b
