"""Market data for the REST API's tests: a symbol, a wave of 1m candles, a recorded gap."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import cast

from marketdata.core.timeframes import Timeframe
from marketdata.models import Gap, Symbol
from marketdata.services import CandleWrite, candles_upsert_closed
from marketdata.tests.factories import SymbolFactory, kline

START = datetime(2026, 3, 1, tzinfo=UTC)
START_MS = int(START.timestamp() * 1000)
MINUTE_MS = 60_000


def price_at(index: int) -> Decimal:
    """A wave, so that the averages cross: exact to the cent."""
    return Decimal(f"{20000 + 400 * math.sin(index / 15):.2f}")


def seed_candles(symbol: Symbol, count: int, *, start_ms: int = START_MS) -> None:
    writes = []
    for index in range(count):
        close = price_at(index + 1)
        open_ = price_at(index)
        writes.append(
            CandleWrite(
                symbol.pk,
                kline(
                    symbol.symbol,
                    open_time_ms=start_ms + index * MINUTE_MS,
                    timeframe=Timeframe.M1,
                    o=f"{open_}",
                    h=f"{max(open_, close) + Decimal('1.50')}",
                    low=f"{min(open_, close) - Decimal('1.25')}",
                    c=f"{close}",
                    v="1.50000000",
                    q="30000.00000000",
                    n=10 + index % 7,
                ),
                "rest",
            )
        )
    for first in range(0, len(writes), 2000):
        candles_upsert_closed(writes=writes[first : first + 2000])


def seed_market(*, candles: int = 400) -> tuple[Symbol, Gap]:
    """BTCUSDT on the simulator's exchange with `candles` 1m candles from START, and an open gap
    after them."""
    symbol = cast(Symbol, SymbolFactory(exchange="sim", symbol="BTCUSDT", base="BTC", quote="USDT"))
    seed_candles(symbol, candles)
    gap = Gap.objects.create(
        symbol=symbol,
        timeframe="1m",
        start=START + timedelta(minutes=candles + 5),
        end=START + timedelta(minutes=candles + 9),
        detected_at=START + timedelta(minutes=candles + 20),
    )
    return symbol, gap
