"""Closed candles pushed to the live dashboard: one channel-layer group per symbol and
timeframe (`candles.<SYMBOL>.<tf>`), so a browser only receives the series it shows.

Called where candles are committed and announced (ingestion's after-commit hook, the resampling
task), before the rules' close listeners: a dashboard never waits for rule evaluation. From
ingestion's event loop the send does not block (`oasis_site.broadcast`).
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
