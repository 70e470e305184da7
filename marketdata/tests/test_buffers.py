"""Stream buffers: what each frame means, whatever the order it arrives in."""

from hypothesis import given
from hypothesis import strategies as st

from marketdata.core.buffers import Gap, Outcome, StreamBuffer
from marketdata.core.timeframes import Timeframe
from marketdata.tests.factories import kline

T0 = 1_677_628_800_000
M = 60_000


def buffer() -> StreamBuffer:
    return StreamBuffer("BTCUSDT", Timeframe.M1, keep=3)


def forming_open_time(buf: StreamBuffer) -> int | None:
    return None if buf.forming is None else buf.forming.open_time_ms


def test_forming_then_closed_then_duplicate():
    buf = buffer()
    assert buf.apply(kline(open_time_ms=T0, closed=False), wall_ms=1) == (Outcome.FORMING, None)
    assert forming_open_time(buf) == T0
    assert buf.apply(kline(open_time_ms=T0), wall_ms=2) == (Outcome.CLOSED, None)
    assert forming_open_time(buf) is None
    assert buf.last_closed_ms == T0
    assert buf.apply(kline(open_time_ms=T0), wall_ms=3) == (Outcome.DUPLICATE, None)
    assert buf.apply(kline(open_time_ms=T0, closed=False), wall_ms=4) == (Outcome.STALE, None)
    assert buf.last_frame_wall_ms == 4


def test_a_hole_in_the_stream_is_a_gap():
    buf = buffer()
    buf.apply(kline(open_time_ms=T0), wall_ms=1)
    outcome, gap = buf.apply(kline(open_time_ms=T0 + 4 * M), wall_ms=2)
    assert outcome is Outcome.CLOSED
    assert gap == Gap("BTCUSDT", Timeframe.M1, T0 + M, T0 + 3 * M)
    assert gap.count == 3


def test_older_forming_update_is_stale():
    buf = buffer()
    buf.apply(kline(open_time_ms=T0 + M, closed=False), wall_ms=1)
    assert buf.apply(kline(open_time_ms=T0, closed=False), wall_ms=2)[0] is Outcome.STALE


def test_backfilled_candles_keep_time_order_and_the_limit():
    buf = buffer()
    buf.apply(kline(open_time_ms=T0 + 3 * M), wall_ms=1)
    for minute in (1, 2, 0):
        buf.mark_closed(kline(open_time_ms=T0 + minute * M))
    assert [k.open_time_ms for k in buf.closed] == [T0 + M, T0 + 2 * M, T0 + 3 * M]
    assert buf.last_closed_ms == T0 + 3 * M


@given(st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=60))
def test_each_candle_closes_once_whatever_the_arrival_order(minutes):
    buf = StreamBuffer("BTCUSDT", Timeframe.M1, keep=100)
    closed = [m for m in minutes if buf.apply(kline(open_time_ms=T0 + m * M), wall_ms=0)[0] is Outcome.CLOSED]
    assert len(closed) == len(set(closed))
    assert closed == sorted(closed)
    assert buf.last_closed_ms == T0 + max(minutes) * M
