"""Closed candles pushed to the live dashboard: one channel-layer group per symbol and
timeframe (`candles.<SYMBOL>.<tf>`), so a browser only receives the series it shows.

Registered as a close listener (`marketdata.events`) at start-up: it runs after the candles
committed, in whichever process announced them (ingestion, a resampling worker).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from marketdata.events import ClosedCandle
from oasis_site.broadcast import GroupEvent, broadcast_many_now

EVENT_TYPE = "candle.update"


def candle_group(symbol: str, timeframe: str) -> str:
    return f"candles.{symbol}.{timeframe}"


def candle_event(candle: ClosedCandle) -> dict[str, Any]:
    # Floats: the chart plots floats (the exact decimals stay in the database and the API).
    return {
        "type": EVENT_TYPE,
        "symbol": candle.symbol,
        "timeframe": candle.timeframe.value,
        "t": candle.open_time_ms,
        "o": candle.open,
        "h": candle.high,
        "l": candle.low,
        "c": candle.close,
        "v": candle.volume,
        "imputed": candle.imputed,
        "committed_at_ms": int(candle.committed_at * 1000),
    }


def candles_broadcast(candles: Sequence[ClosedCandle]) -> None:
    events: list[GroupEvent] = [
        (candle_group(candle.symbol, candle.timeframe.value), candle_event(candle)) for candle in candles
    ]
    broadcast_many_now(events)
