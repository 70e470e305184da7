"""`candle_recent_holes`: the holes between stored candles that a restarted ingest backfills
(on PostgreSQL and on the embedded SQLite default alike)."""

import pytest

from marketdata.core.timeframes import Timeframe
from marketdata.selectors import candle_recent_holes
from marketdata.services import CandleWrite, candles_upsert_closed
from marketdata.tests.factories import SymbolFactory, kline

pytestmark = pytest.mark.django_db
T0 = 1_677_628_800_000  # 2023-03-01 00:00 UTC
M = 60_000


def store(symbol, timeframe: Timeframe, minutes: list[int]) -> None:
    step = timeframe.ms // M
    candles_upsert_closed(
        writes=[
            CandleWrite(
                symbol.pk, kline(symbol.symbol, open_time_ms=T0 + n * step * M, timeframe=timeframe), "ws"
            )
            for n in minutes
        ]
    )


def test_holes_between_stored_candles_within_the_window():
    btc, eth, sol = SymbolFactory.create_batch(3)
    store(btc, Timeframe.M1, [0, 1, 2, 5, 6, 9, 10])  # holes 3-4 and 7-8
    store(btc, Timeframe.M3, [0, 1, 3])  # hole 2
    store(eth, Timeframe.M1, list(range(11)))  # none
    store(sol, Timeframe.M1, [0, 10])  # 1-9, but only what lies in the window counts
    ids = {s.symbol: s.pk for s in (btc, eth, sol)}
    holes = candle_recent_holes(
        symbol_ids=ids, timeframes=[Timeframe.M1, Timeframe.M3], window_ms=60 * M, now_ms=T0 + 12 * M
    )
    assert holes == {
        (btc.symbol, Timeframe.M1): [(T0 + 3 * M, T0 + 4 * M), (T0 + 7 * M, T0 + 8 * M)],
        (btc.symbol, Timeframe.M3): [(T0 + 6 * M, T0 + 6 * M)],
        (sol.symbol, Timeframe.M1): [(T0 + 1 * M, T0 + 9 * M)],
    }
    # A window that starts after a hole's left edge does not see that hole.
    narrow = candle_recent_holes(
        symbol_ids=ids, timeframes=[Timeframe.M1], window_ms=4 * M, now_ms=T0 + 12 * M
    )
    assert narrow == {}
