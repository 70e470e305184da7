"""Symbols: names, assets, Binance filters and the parameters of their synthetic markets.

`--symbols N` gives the well-known pairs first (BTCUSDT, ETHUSDT, …) then SIM0001USDT, … with
prices spread over eight orders of magnitude; `--symbols BTCUSDT,FOOBTC` names them."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from marketdata.simulator.randomness import chance
from marketdata.simulator.units import SCALE, format_units, parse_units

MAX_SYMBOLS = 2000
QUOTE_ASSETS = ("FDUSD", "USDT", "USDC", "BTC", "ETH", "BNB", "EUR", "TRY")
_SYMBOL_NAME = re.compile(r"^[A-Z0-9]{2,20}$")
_MIN_NOTIONAL_BY_QUOTE = {"BTC": "0.0001", "ETH": "0.001", "BNB": "0.01"}


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """One market. Amounts are ints of 1e-8 units (see `units`)."""

    index: int
    name: str
    base: str
    quote: str
    tick: int
    step: int
    min_price: int
    max_price: int
    min_qty: int
    max_qty: int
    min_notional: int
    max_notional: int
    # Synthetic market parameters (floats: this is the numeric edge, nothing here is an order).
    base_price: float
    chunk_volatility: int  # std-dev of the 4-hour log-price step, in 1/1000
    minute_quote_volume: float
    minute_trades: float
    zero_trade_rate: float

    @property
    def stream_prefix(self) -> str:
        return self.name.lower()

    def exchange_info(self) -> dict[str, Any]:
        """This symbol as `GET /api/v3/exchangeInfo` lists it."""
        market_max_qty = self.max_qty
        return {
            "symbol": self.name,
            "status": "TRADING",
            "baseAsset": self.base,
            "baseAssetPrecision": 8,
            "quoteAsset": self.quote,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8,
            "orderTypes": ["LIMIT", "MARKET"],
            "icebergAllowed": False,
            "ocoAllowed": False,
            "otoAllowed": False,
            "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": False,
            "cancelReplaceAllowed": False,
            "amendAllowed": False,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": format_units(self.min_price),
                    "maxPrice": format_units(self.max_price),
                    "tickSize": format_units(self.tick),
                },
                {
                    "filterType": "LOT_SIZE",
                    "minQty": format_units(self.min_qty),
                    "maxQty": format_units(self.max_qty),
                    "stepSize": format_units(self.step),
                },
                {
                    "filterType": "MARKET_LOT_SIZE",
                    "minQty": format_units(0),
                    "maxQty": format_units(market_max_qty),
                    "stepSize": format_units(0),
                },
                {
                    "filterType": "NOTIONAL",
                    "minNotional": format_units(self.min_notional),
                    "applyMinToMarket": True,
                    "maxNotional": format_units(self.max_notional),
                    "applyMaxToMarket": False,
                    "avgPriceMins": 5,
                },
                {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
            ],
            "permissions": [],
            "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "NONE",
            "allowedSelfTradePreventionModes": ["NONE"],
        }


# base, price, tick, step, 4h volatility (1/1000), quote volume per minute, trades per minute,
# share of minutes without trades.
_KNOWN: dict[str, tuple[str, str, str, int, float, float, float]] = {
    "BTC": ("60000", "0.01", "0.00001", 10, 500_000.0, 1500.0, 0.0005),
    "ETH": ("3000", "0.01", "0.0001", 12, 200_000.0, 900.0, 0.001),
    "BNB": ("600", "0.01", "0.001", 12, 40_000.0, 200.0, 0.005),
    "SOL": ("150", "0.01", "0.001", 18, 60_000.0, 300.0, 0.005),
    "XRP": ("0.5", "0.0001", "0.1", 15, 30_000.0, 150.0, 0.01),
    "ADA": ("0.4", "0.0001", "0.1", 16, 10_000.0, 80.0, 0.02),
    "DOGE": ("0.1", "0.00001", "1", 20, 15_000.0, 120.0, 0.02),
    "TRX": ("0.12", "0.00001", "0.1", 10, 5_000.0, 40.0, 0.03),
    "LTC": ("80", "0.01", "0.001", 14, 8_000.0, 60.0, 0.03),
    "LINK": ("15", "0.01", "0.01", 17, 8_000.0, 60.0, 0.03),
    "DOT": ("7", "0.001", "0.01", 17, 5_000.0, 40.0, 0.04),
    "AVAX": ("30", "0.01", "0.01", 19, 6_000.0, 50.0, 0.04),
}
_WELL_KNOWN_ORDER = tuple(f"{base}USDT" for base in _KNOWN)


def generated_names(count: int) -> list[str]:
    """`count` names: the well-known USDT pairs first, then SIM0001USDT, SIM0002USDT, …"""
    names = list(_WELL_KNOWN_ORDER[:count])
    names.extend(f"SIM{number:04d}USDT" for number in range(1, count - len(names) + 1))
    return names


def split_symbol(name: str) -> tuple[str, str]:
    """`"ETHBTC"` → `("ETH", "BTC")`; ValueError when no known quote asset ends the name."""
    if not _SYMBOL_NAME.match(name):
        raise ValueError(f"invalid symbol name {name!r}: 2-20 characters A-Z, 0-9")
    for quote in QUOTE_ASSETS:
        if name.endswith(quote) and len(name) > len(quote):
            return name[: -len(quote)], quote
    raise ValueError(f"symbol {name!r} does not end with a known quote asset ({', '.join(QUOTE_ASSETS)})")


def build_symbols(names: list[str], seed: int) -> list[SymbolSpec]:
    if len(names) > MAX_SYMBOLS:
        raise ValueError(f"{len(names)} symbols requested; at most {MAX_SYMBOLS}")
    if len(set(names)) != len(names):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"duplicate symbols: {', '.join(duplicates)}")
    return [_spec(index, name, seed) for index, name in enumerate(names)]


def _spec(index: int, name: str, seed: int) -> SymbolSpec:
    base, quote = split_symbol(name)
    known = _KNOWN.get(base) if quote == "USDT" else None
    if known is not None:
        price_text, tick_text, step_text, volatility, quote_volume, trades, zero_rate = known
        price = float(price_text)
        tick, step = parse_units(tick_text), parse_units(step_text)
    else:
        # Prices from 0.001 to 10,000, four significant digits; the rest follows from the price.
        exponent = -3 + 7 * chance(seed, name, "price")
        price = float(f"{10**exponent:.4g}")
        tick = _power_of_ten_units(math.floor(math.log10(price)) - 5, low=-8, high=-2)
        step = _power_of_ten_units(math.floor(math.log10(0.05 / price)), low=-8, high=0)
        volatility = 8 + int(18 * chance(seed, name, "volatility"))
        quote_volume = 1_000.0 * 10 ** (1.7 * chance(seed, name, "volume"))
        trades = 5.0 + 200.0 * chance(seed, name, "trades")
        zero_rate = 0.01 + 0.04 * chance(seed, name, "zero")
    if quote != "USDT":
        quote_volume = quote_volume / 1_000.0
    min_qty = step
    max_qty = max(_power_of_ten_units(math.ceil(math.log10(1e7 / price)), low=-8, high=8), 1000 * step)
    max_qty -= max_qty % step
    max_price = _power_of_ten_units(math.ceil(math.log10(price * 1000)), low=-8, high=9)
    min_notional = parse_units(_MIN_NOTIONAL_BY_QUOTE.get(quote, "5"))
    return SymbolSpec(
        index=index,
        name=name,
        base=base,
        quote=quote,
        tick=tick,
        step=step,
        min_price=tick,
        max_price=max_price - max_price % tick,
        min_qty=min_qty,
        max_qty=max_qty,
        min_notional=min_notional,
        max_notional=9_000_000 * SCALE,
        base_price=price,
        chunk_volatility=volatility,
        minute_quote_volume=quote_volume,
        minute_trades=trades,
        zero_trade_rate=zero_rate,
    )


def _power_of_ten_units(exponent: int, *, low: int, high: int) -> int:
    """10**exponent (clamped to [10**low, 10**high]) in 1e-8 units."""
    exponent = min(max(exponent, low), high)
    return int(Decimal(10) ** exponent * SCALE)
