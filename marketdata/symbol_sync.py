"""Turning an exchange's exchangeInfo into `SymbolSpec`s (exact filter strings, no ccxt floats)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from marketdata.services import SymbolSpec


class SymbolInfoError(ValueError):
    pass


def _filter(filters: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    return next((item for item in filters if item.get("filterType") == kind), None)


def _decimal(value: Any, what: str) -> Decimal:
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise SymbolInfoError(f"{what} is not a decimal: {value!r}") from None
    if not number.is_finite() or number < 0:
        raise SymbolInfoError(f"{what} must be a non-negative number: {value!r}")
    return number


def spec_from_exchange_info(exchange: str, info: dict[str, Any]) -> SymbolSpec:
    """One entry of exchangeInfo's `symbols` as a `SymbolSpec`; SymbolInfoError names the gap."""
    name = info.get("symbol")
    if not isinstance(name, str) or not name:
        raise SymbolInfoError("an exchangeInfo symbol has no name")
    filters = info.get("filters")
    if not isinstance(filters, list):
        raise SymbolInfoError(f"{name}: no filter list")
    price = _filter(filters, "PRICE_FILTER")
    lot = _filter(filters, "LOT_SIZE")
    notional = _filter(filters, "NOTIONAL") or _filter(filters, "MIN_NOTIONAL")
    if price is None or lot is None:
        raise SymbolInfoError(f"{name}: PRICE_FILTER and LOT_SIZE are required")
    return SymbolSpec(
        exchange=exchange,
        symbol=name,
        base=str(info.get("baseAsset", "")),
        quote=str(info.get("quoteAsset", "")),
        status=str(info.get("status", "TRADING")),
        tick_size=_decimal(price.get("tickSize"), f"{name} tickSize"),
        step_size=_decimal(lot.get("stepSize"), f"{name} stepSize"),
        min_qty=_decimal(lot.get("minQty"), f"{name} minQty"),
        max_qty=_decimal(lot.get("maxQty"), f"{name} maxQty"),
        min_notional=_decimal(notional.get("minNotional", "0"), f"{name} minNotional")
        if notional
        else Decimal(0),
        filters=filters,
    )
