"""Fixed-point amounts. Every price, quantity and volume in the simulator is an `int` of 1e-8
units, the precision Binance prints ("27450.12000000"), so sums over buckets are exact and the
same candle always formats to the same string."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

SCALE = 100_000_000
_SCALE_DECIMAL = Decimal(SCALE)


def format_units(value: int) -> str:
    """`123450000` → `"1.23450000"`: always 8 decimals, as Binance writes them."""
    sign = "-" if value < 0 else ""
    whole, fraction = divmod(abs(value), SCALE)
    return f"{sign}{whole}.{fraction:08d}"


def parse_units(text: str) -> int:
    """`"1.2345"` → `123450000`. ValueError when `text` is not a finite decimal or has more than
    8 significant decimals."""
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not a decimal number: {text!r}") from None
    if not number.is_finite():
        raise ValueError(f"not a finite number: {text!r}")
    scaled = number * _SCALE_DECIMAL
    if scaled != scaled.to_integral_value():
        raise ValueError(f"more than 8 decimals: {text!r}")
    return int(scaled)


def units_to_decimal(value: int) -> Decimal:
    return Decimal(value) / _SCALE_DECIMAL


def decimal_to_units(value: Decimal) -> int:
    """Exact conversion; ValueError when `value` has more than 8 decimals."""
    scaled = value * _SCALE_DECIMAL
    if scaled != scaled.to_integral_value():
        raise ValueError(f"more than 8 decimals: {value}")
    return int(scaled)
