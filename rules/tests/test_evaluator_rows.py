"""The live evaluator steps every symbol of a timeframe at once (`RuleStates.step`, one row per
symbol). Each row must be exactly the series alone: the same indicator values, bit for bit, as the
batch forms over that symbol's candles, and the same signals as `offline_signals` — whatever the
other rows do. Symbols here have their own histories (random walks, flat integer prices with
zero volumes, slices of the real candles), join late, close at different boundaries, warm up at
different times, stop being stepped (a pair disabled after an error) and are rebuilt mid-way
(a row reset and fed its history again, as after a gap).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketdata.core.timeframes import Timeframe
from rules.engine.base import CandleSeries
from rules.engine.evaluator import ENTER, EXIT, RuleProgram, RuleStates, offline_signals
from rules.engine.spec import parse_spec
from rules.tests.test_evaluator_vectorised import BASE, needs_real, random_candles, real_candles, specs


def batch_columns(program: RuleProgram, candles: CandleSeries, opens: np.ndarray) -> dict[str, np.ndarray]:
    """Every value a rule sees, over a whole history, from the batch forms."""
    columns = {"open": opens, "high": candles.high, "low": candles.low, "close": candles.close}
    columns["volume"] = candles.volume
    for item in program.indicators:
        result = item.indicator.batch(candles)
        outputs = [getattr(result, f) for f in item.fields] if item.fields else [result]
        columns.update(zip(item.outputs, outputs, strict=True))
    return columns


def prefix(candles: CandleSeries, size: int) -> CandleSeries:
    return CandleSeries(
        open_time_ms=candles.open_time_ms[:size],
        high=candles.high[:size],
        low=candles.low[:size],
        close=candles.close[:size],
        volume=candles.volume[:size],
    )


@dataclass
class Symbol:
    candles: CandleSeries
    opens: np.ndarray
    joins: int  # the boundary of its first close
    stops: int | None  # disabled from this many candles on
    rebuilt_at: int | None  # reset and fed its history again after this many candles
    row: int = -1
    fed: int = 0
    signals: list[tuple[int, str]] = field(default_factory=list)
    values: list[dict[str, float]] = field(default_factory=list)

    def candle(self, index: int) -> tuple[Any, ...]:
        c = self.candles
        return (int(c.open_time_ms[index]), *(float(x[index]) for x in (self.opens, c.high, c.low, c.close)),
                float(c.volume[index]))  # fmt: skip

    def wants(self, boundary: int) -> bool:
        done = self.fed >= len(self.candles) or (self.stops is not None and self.fed >= self.stops)
        return boundary >= self.joins and not done


def step_together(states: RuleStates, symbols: list[Symbol], candles: list[tuple[Any, ...]]) -> Any:
    rows = np.array([s.row for s in symbols], dtype=np.intp)
    columns = list(zip(*candles, strict=True))
    return states.step(
        rows, np.array(columns[0], dtype=np.int64), *(np.array(c, dtype=np.float64) for c in columns[1:])
    )


def run_together(program: RuleProgram, symbols: list[Symbol], closing: list[list[bool]]) -> None:
    """Feed every symbol its candles in order, all symbols that close at a boundary in one step."""
    states = RuleStates(program)
    boundary = 0
    while any(s.wants(b) for s in symbols for b in (boundary, 10**9)):
        now = [
            s
            for n, s in enumerate(symbols)
            if s.wants(boundary) and closing[n % len(closing)][boundary % len(closing[n % len(closing)])]
        ]
        for s in now:
            if s.row < 0:
                s.row = int(states.add_rows(1)[0])  # joins late: a new row beside warm ones
        if now:
            result = step_together(states, now, [s.candle(s.fed) for s in now])
            for at, s in enumerate(now):
                s.values.append({name: float(column[at]) for name, column in result.values.items()})
                if result.exit[at] or result.enter[at]:
                    s.signals.append((s.candle(s.fed)[0], EXIT if result.exit[at] else ENTER))
                s.fed += 1
        rebuilding = [s for s in now if s.rebuilt_at == s.fed]
        if rebuilding:
            # Rebuilt from history, all such rows together: signals of the replay are not kept.
            states.reset(np.array([s.row for s in rebuilding], dtype=np.intp))
            for index in range(max(s.fed for s in rebuilding)):
                replaying = [s for s in rebuilding if index < s.fed]
                step_together(states, replaying, [s.candle(index) for s in replaying])
        boundary += 1


def assert_each_row_is_its_series_alone(program: RuleProgram, symbols: list[Symbol]) -> None:
    for s in symbols:
        fed = prefix(s.candles, s.fed)
        expected = offline_signals(program, fed, s.opens[: s.fed])
        assert s.signals == expected
        columns = batch_columns(program, fed, s.opens[: s.fed])
        assert len(s.values) == s.fed
        for name, column in columns.items():
            seen = np.array([values[name] for values in s.values], dtype=np.float64)
            np.testing.assert_array_equal(np.isnan(seen), np.isnan(column), err_msg=name)
            known = ~np.isnan(column)
            np.testing.assert_array_equal(seen[known].view(np.uint64), column[known].view(np.uint64), name)


@st.composite
def symbols_of(draw: st.DrawFn, candles: st.SearchStrategy[tuple[CandleSeries, np.ndarray]]) -> list[Symbol]:
    symbols = []
    for _ in range(draw(st.integers(1, 7))):
        series, opens = draw(candles)
        size = len(series)
        stops = draw(st.one_of(st.none(), st.integers(0, max(size, 1))))
        rebuilt_at = draw(st.one_of(st.none(), st.integers(1, max(size, 1))))
        symbols.append(Symbol(series, opens, draw(st.integers(0, 60)), stops, rebuilt_at))
    return symbols


closing_patterns = st.lists(st.lists(st.booleans(), min_size=1, max_size=5).map(lambda p: [True, *p]),
                            min_size=7, max_size=7)  # fmt: skip


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs(), symbols=symbols_of(random_candles()), closing=closing_patterns)
def test_rows_step_each_symbol_as_if_alone_on_random_candles(spec, symbols, closing):
    program = RuleProgram.from_spec(parse_spec({**BASE, **spec}), Timeframe.M1)
    run_together(program, symbols, closing)
    assert_each_row_is_its_series_alone(program, symbols)


real_slices = st.tuples(st.integers(0, 29_000), st.integers(1, 400)).map(lambda p: real_candles(*p))


@needs_real
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs(), symbols=symbols_of(real_slices), closing=closing_patterns)
def test_rows_step_each_symbol_as_if_alone_on_real_candles(spec, symbols, closing):
    program = RuleProgram.from_spec(parse_spec({**BASE, **spec}), Timeframe.M1)
    run_together(program, symbols, closing)
    assert_each_row_is_its_series_alone(program, symbols)


@needs_real
def test_the_benchmark_rules_on_many_real_symbols():
    """Both rules of bench/signals.py, 60 symbols cut from the real file at different places,
    joining over the first 100 boundaries, some rebuilt, some disabled: they do signal."""
    spec = {
        "indicators": {
            "m": {"kind": "macd", "fast": 12, "slow": 26, "signal": 9},
            "bb": {"kind": "bbands", "period": 20, "stddev": 2},
            "st": {"kind": "stoch", "k_period": 14, "k_smooth": 3, "d_period": 3},
            "adx": {"kind": "adx", "period": 14},
        },
        "entry": "close < bb.lower and st.k < 20 and adx > 15",
        "exit": "close > bb.upper or m.line crosses_below m.signal",
    }
    program = RuleProgram.from_spec(parse_spec({**BASE, **spec}), Timeframe.M1)
    rng = np.random.default_rng(5)
    symbols = []
    for n in range(60):
        series, opens = real_candles(int(rng.integers(0, 29_000)), int(rng.integers(100, 600)))
        stops = int(rng.integers(50, 300)) if n % 7 == 0 else None
        rebuilt_at = int(rng.integers(1, 300)) if n % 5 == 0 else None
        symbols.append(Symbol(series, opens, int(rng.integers(0, 100)), stops, rebuilt_at))
    closing = [[True, bool(rng.random() < 0.8), True] for _ in range(7)]
    run_together(program, symbols, closing)
    assert_each_row_is_its_series_alone(program, symbols)
    assert {action for s in symbols for _, action in s.signals} == {ENTER, EXIT}


def test_a_row_that_is_not_after_its_last_candle_is_refused():
    program = RuleProgram.from_spec(
        parse_spec({**BASE, "entry": "close > 0", "exit": "close < 0"}), Timeframe.M1
    )
    states = RuleStates(program)
    rows = states.add_rows(2)
    one = np.ones(2)
    states.step(rows, np.array([60_000, 60_000]), one, one, one, one, one)
    with pytest.raises(ValueError, match="not after the last one"):
        states.step(rows, np.array([120_000, 60_000]), one, one, one, one, one)
