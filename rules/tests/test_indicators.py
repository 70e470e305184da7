"""Indicators: incremental equals batch bit for bit, warm-up indexes agree, parameters are checked.

The chunk length of the kernels (`recurrence.CHUNK`, 128) is longer than the random series, so
most properties also run with it shrunk to a few steps, where every chunk boundary and exact
resync of the running totals is crossed many times.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.engine import recurrence, wilder
from rules.engine.indicators import (
    Adx,
    Atr,
    BollingerBands,
    CandleSeries,
    Ema,
    Indicator,
    Macd,
    Rsi,
    Sma,
    Stochastic,
    Vwap,
)

MINUTE_MS = 60_000
DAY_MS = 86_400_000
PROPERTIES = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextmanager
def chunk_of(length: int) -> Iterator[None]:
    kept = recurrence.CHUNK
    recurrence.CHUNK = length
    try:
        yield
    finally:
        recurrence.CHUNK = kept


@st.composite
def candle_series(draw: st.DrawFn, max_size: int = 90) -> CandleSeries:
    """Random walks (sometimes flat), highs and lows around them, zero volumes, UTC midnights."""
    size = draw(st.integers(0, max_size))
    price = draw(st.sampled_from([0.000123, 1.0, 23_456.78]))
    flat = draw(st.booleans())
    step = st.just(0.0) if flat else st.floats(-0.02, 0.02, allow_subnormal=False)
    changes = draw(st.lists(step, min_size=size, max_size=size))
    close = price * np.exp(np.cumsum(changes))
    spread = st.just(0.0) if flat else st.floats(0.0, 0.01, allow_subnormal=False)
    up = np.array(draw(st.lists(spread, min_size=size, max_size=size)))
    down = np.array(draw(st.lists(spread, min_size=size, max_size=size)))
    previous = np.concatenate([[price], close[:-1]])
    high = np.maximum(previous, close) * (1.0 + up)
    low = np.minimum(previous, close) * (1.0 - down)
    volume = draw(st.lists(st.sampled_from([0.0, 0.0, 0.001, 1.5, 7.25]), min_size=size, max_size=size))
    first = DAY_MS * 19_417 - MINUTE_MS * draw(st.integers(0, 60))
    gaps = draw(st.lists(st.integers(1, 30), min_size=size, max_size=size))
    open_time = first + MINUTE_MS * np.cumsum(gaps)
    return CandleSeries.from_columns(open_time_ms=open_time, high=high, low=low, close=close, volume=volume)


def window(candles: CandleSeries, start: int, stop: int) -> CandleSeries:
    return CandleSeries(
        open_time_ms=candles.open_time_ms[start:stop],
        high=candles.high[start:stop],
        low=candles.low[start:stop],
        close=candles.close[start:stop],
        volume=candles.volume[start:stop],
    )


def as_columns(batch: Any) -> list[np.ndarray]:
    return list(batch) if isinstance(batch, tuple) else [batch]


def run_updates(state: Any, candles: CandleSeries) -> list[Any]:
    columns = (candles.high, candles.low, candles.close, candles.volume, candles.open_time_ms)
    return [state.update(*row) for row in zip(*(column.tolist() for column in columns), strict=True)]


def incremental_columns(outputs: list[Any], width: int) -> list[np.ndarray]:
    """The incremental outputs as batch-shaped columns: None becomes NaN."""
    columns = []
    for j in range(width):
        picked = [np.nan if out is None else (out[j] if isinstance(out, tuple) else out) for out in outputs]
        columns.append(np.array(picked, dtype=np.float64))
    return columns


def assert_bit_identical(incremental: np.ndarray, batch: np.ndarray) -> None:
    assert incremental.shape == batch.shape
    missing = np.isnan(batch)
    np.testing.assert_array_equal(np.isnan(incremental), missing)
    np.testing.assert_array_equal(incremental[~missing].view(np.uint64), batch[~missing].view(np.uint64))


def draw_macd(draw: Any) -> Macd:
    fast = draw(st.integers(2, 19))
    return Macd(fast, draw(st.integers(fast + 1, 20)), draw(st.integers(1, 9)))


# Each takes `data.draw` and builds one indicator with drawn parameters.
INDICATORS: dict[str, Callable[[Any], Indicator[Any, Any]]] = {
    "sma": lambda draw: Sma(draw(st.integers(2, 25))),
    "ema": lambda draw: Ema(draw(st.integers(2, 25))),
    "macd": lambda draw: draw_macd(draw),
    "bollinger": lambda draw: BollingerBands(
        draw(st.integers(2, 25)), draw(st.sampled_from([1.0, 2.0, 2.5])), draw(st.sampled_from([1.0, 2.0]))
    ),
    "rsi": lambda draw: Rsi(draw(st.integers(2, 20))),
    "atr": lambda draw: Atr(draw(st.integers(1, 20))),
    "adx": lambda draw: Adx(draw(st.integers(2, 15))),
    "stochastic": lambda draw: Stochastic(
        draw(st.integers(1, 10)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    ),
    "vwap": lambda draw: Vwap(),
}


@pytest.mark.parametrize("name", INDICATORS)
@pytest.mark.parametrize("chunk", [None, 5])
@PROPERTIES
@given(data=st.data())
def test_incremental_equals_batch_bit_for_bit(name: str, chunk: int | None, data: st.DataObject) -> None:
    indicator = INDICATORS[name](data.draw)
    candles = data.draw(candle_series())
    with chunk_of(chunk or recurrence.CHUNK):
        batch = as_columns(indicator.batch(candles))
        outputs = run_updates(indicator.start(), candles)
    for incremental, column in zip(incremental_columns(outputs, len(batch)), batch, strict=True):
        assert_bit_identical(incremental, column)


@pytest.mark.parametrize("name", INDICATORS)
@PROPERTIES
@given(data=st.data())
def test_warmup_is_the_index_of_the_first_value(name: str, data: st.DataObject) -> None:
    indicator = INDICATORS[name](data.draw)
    candles = data.draw(candle_series())
    outputs = run_updates(indicator.start(), candles)
    warmup = indicator.warmup
    assert all(out is None for out in outputs[:warmup])
    for column in as_columns(indicator.batch(candles)):
        assert column.shape == (len(candles),)
        assert np.isnan(column[:warmup]).all()
        if isinstance(indicator, Vwap):
            assert_nan_while_the_session_has_no_volume(column, candles)
        else:
            assert not np.isnan(column[warmup:]).any()
            assert all(out is not None for out in outputs[warmup:])


def assert_nan_while_the_session_has_no_volume(vwap: np.ndarray, candles: CandleSeries) -> None:
    day, traded = None, 0.0
    for i, (open_time, volume) in enumerate(zip(candles.open_time_ms, candles.volume, strict=True)):
        if open_time // DAY_MS != day:
            day, traded = open_time // DAY_MS, 0.0
        traded += volume
        assert np.isnan(vwap[i]) == (traded == 0.0)


@pytest.mark.parametrize("name", INDICATORS)
@PROPERTIES
@given(data=st.data())
def test_from_history_continues_the_series(name: str, data: st.DataObject) -> None:
    indicator = INDICATORS[name](data.draw)
    candles = data.draw(candle_series())
    split = data.draw(st.integers(0, len(candles)))
    with chunk_of(4):
        state = indicator.from_history(window(candles, 0, split))
        rest = run_updates(state, window(candles, split, len(candles)))
        batch = [column[split:] for column in as_columns(indicator.batch(candles))]
    for incremental, column in zip(incremental_columns(rest, len(batch)), batch, strict=True):
        assert_bit_identical(incremental, column)


def test_production_chunk_length_is_crossed_bit_for_bit() -> None:
    """2,000 candles cross the real CHUNK (128) boundaries of every running total and smoothing."""
    rng = np.random.default_rng(7)
    close = 20_000 * np.exp(np.cumsum(rng.normal(0, 1e-3, 2_000)))
    candles = CandleSeries.from_columns(
        open_time_ms=DAY_MS * 19_417 + MINUTE_MS * np.arange(2_000),
        high=close * (1 + rng.uniform(0, 1e-3, 2_000)),
        low=close * (1 - rng.uniform(0, 1e-3, 2_000)),
        close=close,
        volume=rng.choice([0.0, 0.3, 2.0], 2_000),
    )
    for indicator in (Sma(20), Ema(20), Macd(), BollingerBands(), Rsi(), Atr(), Adx(), Stochastic(), Vwap()):
        batch = as_columns(indicator.batch(candles))
        outputs = run_updates(indicator.start(), candles)
        for incremental, column in zip(incremental_columns(outputs, len(batch)), batch, strict=True):
            assert_bit_identical(incremental, column)


def test_adx_holds_while_dx_is_undefined_then_smooths() -> None:
    """A flat start (no range: DX is 0/0) then a moving series: the ADX is held at its seed while
    DX is undefined, and both forms count only the defined DX values as steps of its smoothing,
    across real CHUNK boundaries."""
    rng = np.random.default_rng(11)
    close = 100 * np.exp(np.cumsum(np.concatenate([np.zeros(150), rng.normal(0, 1e-3, 450)])))
    spread = np.where(np.arange(600) < 150, 0.0, 1e-3)
    candles = CandleSeries.from_columns(
        open_time_ms=DAY_MS * 19_417 + MINUTE_MS * np.arange(600),
        high=close * (1 + spread),
        low=close * (1 - spread),
        close=close,
        volume=np.ones(600),
    )
    batch = Adx(5).batch(candles)
    outputs = run_updates(Adx(5).start(), candles)
    assert_bit_identical(incremental_columns(outputs, 1)[0], batch)
    assert (batch[9:150] == 0.0).all()  # the seed 0/n, held
    assert (batch[160:] != 0.0).all()


@given(
    a=st.floats(0.0, 0.999),
    b=st.lists(st.floats(-1e4, 1e4, allow_subnormal=False), max_size=60),
    y0=st.floats(-1e4, 1e4, allow_subnormal=False),
)
@PROPERTIES
def test_chunked_recurrence_is_a_plain_loop_up_to_rounding(a: float, b: list[float], y0: float) -> None:
    with chunk_of(7):
        chunked = recurrence.linear_recurrence(a, np.array(b), y0)
    y, plain = y0, []
    for value in b:
        y = a * y + value
        plain.append(y)
    scale = max([abs(y0), *map(abs, b)], default=0.0)
    np.testing.assert_allclose(chunked, plain, rtol=1e-12, atol=1e-12 * scale)


@given(
    price=st.sampled_from([0.000123, 1.0, 23_456.78, 1e12]),
    moves=st.lists(
        st.tuples(st.floats(0.0, 0.05), st.floats(0.0, 0.05), st.floats(-0.1, 0.1)), min_size=1, max_size=50
    ),
)
@PROPERTIES
def test_true_range_is_ta_libs_max_of_three(price: float, moves: list[tuple[float, float, float]]) -> None:
    """max(high, previous close) - min(low, previous close) is, bit for bit, TA-Lib's
    max(high - low, |previous close - high|, |previous close - low|) when high ≥ low, with the
    close inside, above, below or on the edge of the range."""
    up, down, gap = (np.array(column) for column in zip(*moves, strict=True))
    high, low = price * (1.0 + up), price * (1.0 - down)
    previous = price * (1.0 + gap)
    previous[1::3], previous[2::3] = high[1::3], low[2::3]  # on the edges
    ta_lib = np.maximum(np.maximum(high - low, np.abs(previous - high)), np.abs(previous - low))
    ours = wilder._true_range_rows(high, low, previous)
    np.testing.assert_array_equal(ours.view(np.uint64), ta_lib.view(np.uint64))


def lanes_by_definition(values: np.ndarray) -> np.ndarray:
    """Column j holds chunk j of `values`, 0.0 past the end (one chunk at a time, no numpy tricks)."""
    rows, chunks = recurrence.lanes_shape(values.size)
    lanes = np.zeros((rows, chunks))
    for j in range(chunks):
        chunk = values[j * rows : (j + 1) * rows]
        lanes[: chunk.size, j] = chunk
    return lanes


@given(size=st.integers(1, 400), chunk=st.sampled_from([1, 3, 7]), data=st.data())
@PROPERTIES
def test_lanes_of_is_the_operation_then_the_lane_layout(size: int, chunk: int, data: st.DataObject) -> None:
    """The fused transposition (the full chunks in one call, then the padded last chunk) puts
    every op(x, y) or op(x, c) in chunk order."""
    values = st.floats(-1e4, 1e4, allow_subnormal=False)
    x = np.array(data.draw(st.lists(values, min_size=size + 1, max_size=size + 1)))
    constant = data.draw(values)
    with chunk_of(chunk):
        cases = [
            (recurrence.to_lanes(x[:size], 0), x[:size]),
            (recurrence.lanes_of(np.subtract, (x[1:], x[:-1]), size, 1), np.subtract(x[1:], x[:-1])),
            (recurrence.lanes_of(np.multiply, (x, constant), size, 2), np.multiply(x[:size], constant)),
        ]
        for fused, series in cases:
            expected = lanes_by_definition(series)
            np.testing.assert_array_equal(fused.view(np.uint64), expected.view(np.uint64))


@given(
    size=st.integers(1, 200),
    chunk=st.sampled_from([1, 3, 7]),
    series=st.lists(
        st.tuples(st.floats(0.0, 0.999), st.floats(-1e4, 1e4, allow_subnormal=False)), min_size=1, max_size=3
    ),
    data=st.data(),
)
@PROPERTIES
def test_lane_groups_step_each_series_as_recur_lanes_does(
    size: int, chunk: int, series: list[tuple[float, float]], data: st.DataObject
) -> None:
    """Several recurrences side by side, each with its own a and y0, give each one's
    `recur_lanes` floats bit for bit."""
    values = st.floats(-1e4, 1e4, allow_subnormal=False)
    inputs = [np.array(data.draw(st.lists(values, min_size=size, max_size=size))) for _ in series]
    with chunk_of(chunk):
        lanes = recurrence.lane_groups(size, len(series), 0)
        for group, b in zip(lanes, inputs, strict=True):
            recurrence.fill_lanes(np.positive, (b,), size, group)
        recurrence.recur_lane_groups(lanes, tuple(a for a, _ in series), tuple(y0 for _, y0 in series))
        for group, b, (a, y0) in zip(lanes, inputs, series, strict=True):
            alone = recurrence.to_lanes(b, 1)
            recurrence.recur_lanes(alone, a, y0)
            np.testing.assert_array_equal(group.view(np.uint64), alone.view(np.uint64))


def flat_candles(size: int, price: float = 100.0) -> CandleSeries:
    return CandleSeries.from_columns(
        open_time_ms=DAY_MS * 19_417 + MINUTE_MS * np.arange(size),
        high=np.full(size, price),
        low=np.full(size, price),
        close=np.full(size, price),
        volume=np.zeros(size),
    )


def test_flat_series_follow_ta_lib_conventions() -> None:
    candles = flat_candles(60)
    assert (Rsi(14).batch(candles)[14:] == 0.0).all()  # no gain and no loss: TA-Lib's 0
    assert (Atr(14).batch(candles)[14:] == 0.0).all()
    assert (Adx(5).batch(candles)[9:] == 0.0).all()  # DX never defined: the seed 0/n is held
    stochastic = Stochastic().batch(candles)
    assert (stochastic.k[8:] == 0.0).all()
    assert (stochastic.d[8:] == 0.0).all()
    bands = BollingerBands(20).batch(candles)
    np.testing.assert_array_equal(bands.upper[19:], bands.middle[19:])
    np.testing.assert_array_equal(bands.lower[19:], bands.middle[19:])
    assert np.isnan(Vwap().batch(candles)).all()  # no volume traded: undefined


def test_vwap_restarts_at_each_utc_midnight() -> None:
    candles = CandleSeries.from_columns(
        open_time_ms=[DAY_MS - 2 * MINUTE_MS, DAY_MS - MINUTE_MS, DAY_MS, DAY_MS + MINUTE_MS],
        high=[3.0, 6.0, 9.0, 12.0],
        low=[3.0, 6.0, 9.0, 12.0],
        close=[3.0, 6.0, 9.0, 12.0],
        volume=[1.0, 2.0, 0.0, 4.0],
    )
    np.testing.assert_array_equal(Vwap().batch(candles), [3.0, 5.0, np.nan, 12.0])
    state = Vwap().start()
    with pytest.raises(ValueError, match="open_time_ms"):
        state.update(1.0, 1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    ("build", "parameter"),
    [
        (lambda: Sma(1), "period"),
        (lambda: Sma(100_001), "period"),
        (lambda: Ema(0), "period"),
        (lambda: Ema(2.5), "period"),  # type: ignore[arg-type]
        (lambda: Rsi(True), "period"),
        (lambda: Atr(0), "period"),
        (lambda: Adx(1), "period"),
        (lambda: Macd(fast=1), "fast"),
        (lambda: Macd(slow=1), "slow"),
        (lambda: Macd(signal=0), "signal"),
        (lambda: Macd(fast=26, slow=12), "fast must be shorter than slow"),
        (lambda: Macd(fast=12, slow=12), "fast must be shorter than slow"),
        (lambda: BollingerBands(1), "period"),
        (lambda: BollingerBands(up=-1.0), "up"),
        (lambda: BollingerBands(down=float("inf")), "down"),
        (lambda: BollingerBands(up="2"), "up"),  # type: ignore[arg-type]
        (lambda: Stochastic(fast_k=0), "fast_k"),
        (lambda: Stochastic(slow_k=0), "slow_k"),
        (lambda: Stochastic(slow_d=0), "slow_d"),
    ],
)
def test_bad_parameters_are_named(build: Callable[[], object], parameter: str) -> None:
    with pytest.raises(ValueError, match=parameter):
        build()


@pytest.mark.parametrize(
    ("change", "parameter"),
    [
        ({"high": [1.0, float("nan")]}, "high"),
        ({"volume": [1.0, -1.0]}, "volume"),
        ({"open_time_ms": [MINUTE_MS, MINUTE_MS]}, "open_time_ms"),
        ({"close": [1.0]}, "close"),
    ],
)
def test_bad_candles_are_named(change: dict[str, list[float]], parameter: str) -> None:
    columns: dict[str, list[float]] = {
        "open_time_ms": [0, MINUTE_MS],
        "high": [1.0, 1.0],
        "low": [1.0, 1.0],
        "close": [1.0, 1.0],
        "volume": [1.0, 1.0],
    }
    with pytest.raises(ValueError, match=parameter):
        CandleSeries.from_columns(**(columns | change))
