"""Missing candles found over the stored ones, the same on PostgreSQL as on SQLite."""

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketdata.core.timeframes import Timeframe
from marketdata.selectors import candle_gaps
from marketdata.services import CandleWrite, candles_upsert_closed
from marketdata.tests.factories import SymbolFactory, kline

pytestmark = pytest.mark.django_db
T0 = 1_677_628_800_000
M = 60_000


def store(symbol_id: int, minutes: list[int], timeframe: Timeframe = Timeframe.M1) -> None:
    candles_upsert_closed(
        writes=[
            CandleWrite(symbol_id, kline(open_time_ms=T0 + n * timeframe.ms, timeframe=timeframe), "rest")
            for n in minutes
        ]
    )


def test_holes_at_the_start_inside_and_at_the_end():
    symbol = SymbolFactory.create()
    store(symbol.pk, [2, 3, 4, 7, 9])
    assert candle_gaps(symbol_id=symbol.pk, timeframe=Timeframe.M1, since_ms=T0, until_ms=T0 + 11 * M) == [
        (T0, T0 + 1 * M),
        (T0 + 5 * M, T0 + 6 * M),
        (T0 + 8 * M, T0 + 8 * M),
        (T0 + 10 * M, T0 + 11 * M),
    ]


def test_nothing_missing_and_nothing_stored():
    symbol = SymbolFactory.create()
    store(symbol.pk, list(range(10)))
    assert candle_gaps(symbol_id=symbol.pk, timeframe=Timeframe.M1, since_ms=T0, until_ms=T0 + 9 * M) == []
    other = SymbolFactory.create()
    assert candle_gaps(symbol_id=other.pk, timeframe=Timeframe.M1, since_ms=T0, until_ms=T0 + 9 * M) == [
        (T0, T0 + 9 * M)
    ]


def test_other_streams_and_timeframes_do_not_count():
    symbol, other = SymbolFactory.create(), SymbolFactory.create()
    store(other.pk, list(range(5)))
    store(symbol.pk, [0, 1], Timeframe.M5)
    assert candle_gaps(symbol_id=symbol.pk, timeframe=Timeframe.M1, since_ms=T0, until_ms=T0 + 4 * M) == [
        (T0, T0 + 4 * M)
    ]
    assert candle_gaps(symbol_id=symbol.pk, timeframe=Timeframe.M5, since_ms=T0, until_ms=T0 + 10 * M) == [
        (T0 + 10 * M, T0 + 10 * M)
    ]


def test_misaligned_bounds_are_refused():
    with pytest.raises(ValueError, match="not on 5m boundaries"):
        candle_gaps(symbol_id=1, timeframe=Timeframe.M5, since_ms=T0 + M, until_ms=T0 + 10 * M)


@given(st.sets(st.integers(0, 59), max_size=60), st.integers(0, 59), st.integers(0, 59))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_gaps_are_exactly_the_missing_minutes(django_db_blocker, stored, low, high):
    since, until = min(low, high), max(low, high)
    symbol = SymbolFactory.create()
    store(symbol.pk, sorted(stored))
    gaps = candle_gaps(
        symbol_id=symbol.pk, timeframe=Timeframe.M1, since_ms=T0 + since * M, until_ms=T0 + until * M
    )
    missing = [n for n in range(since, until + 1) if n not in stored]
    assert [n for first, last in gaps for n in range((first - T0) // M, (last - T0) // M + 1)] == missing
    assert all(b[0] - a[1] > M for a, b in itertools.pairwise(gaps))  # maximal ranges
