"""Closed candles announced to whoever registered for them, without marketdata importing them.

Market data must not know its consumers (rules evaluate on closes, later the dashboard
shows them): a consumer registers a listener at start-up (its AppConfig.ready), and the ingest
process calls `candles_closed` after the candles are committed, ingested and derived alike.
A listener that raises is logged and skipped; the others still run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from marketdata.core.timeframes import Timeframe

logger = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ClosedCandle:
    """A committed closed candle, with the values consumers need (floats: for indicators)."""

    symbol_id: int
    symbol: str
    timeframe: Timeframe
    open_time_ms: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    imputed: bool
    committed_at: float  # wall clock, seconds


CloseListener = Callable[[Sequence[ClosedCandle]], None]
_listeners: list[CloseListener] = []


def close_listener_register(listener: CloseListener) -> None:
    if listener not in _listeners:
        _listeners.append(listener)


def close_listener_unregister(listener: CloseListener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def candles_closed(candles: Sequence[ClosedCandle]) -> None:
    if not candles:
        return
    for listener in list(_listeners):
        try:
            listener(candles)
        except Exception:
            logger.exception(
                "close_listener_failed", listener=getattr(listener, "__qualname__", repr(listener))
            )
