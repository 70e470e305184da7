"""The vectorised offline path gives exactly the signals of the per-candle paths.

`offline_signals` evaluates the entry/exit conditions on whole columns at once. For random specs
(every indicator kind, random parameters, random conditions from the whole grammar) on random and
on real candles, its signals equal both the per-candle offline loop it replaced (kept here as
`reference_offline_signals`) and `PairState.step` fed one candle at a time. Underneath, on arbitrary
values (missing, NaN, ±inf, zeros, ties), `Condition.evaluate_columns` equals `Condition.evaluate`
row by row.
"""

from __future__ import annotations

import csv
import functools
import math
from datetime import datetime
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from marketdata.core.timeframes import Timeframe
from marketdata.tests.shared_data import REAL_CANDLES_CSV
from rules.engine.base import CandleSeries
from rules.engine.evaluator import ENTER, EXIT, RuleProgram, offline_signals
from rules.engine.expressions import compile_condition
from rules.engine.spec import CANDLE_FIELDS, indicator_outputs, parse_spec

BASE = {
    "timeframes": ["1m"],
    "sizing": {"quote_amount": "100"},
    "limits": {"max_position_per_symbol": "500", "max_position_total": "5000"},
}
NAN = math.nan
DAY_MS = 86_400_000


# --- The two per-candle paths ----------------------------------------------------------------------


def reference_offline_signals(program: RuleProgram, candles: CandleSeries, open_) -> list[tuple[int, str]]:
    """The offline loop as it was before vectorising: batch indicators, then one dict per candle
    and the compiled closures of the conditions (exit first), previous = the candle before."""
    columns = {
        "open": np.asarray(open_, dtype=np.float64),
        "high": candles.high,
        "low": candles.low,
        "close": candles.close,
        "volume": candles.volume,
    }
    for item in program.indicators:
        result = item.indicator.batch(candles)
        if item.fields:
            for output, field in zip(item.outputs, item.fields, strict=True):
                columns[output] = np.asarray(getattr(result, field), dtype=np.float64)
        else:
            columns[item.outputs[0]] = np.asarray(result, dtype=np.float64)
    indicator_names = [name for item in program.indicators for name in item.outputs]
    warm = np.ones(len(candles), dtype=bool)
    for name in indicator_names:
        warm &= ~np.isnan(columns[name])
    lists = {name: column.tolist() for name, column in columns.items()}
    signals = []
    previous: dict[str, float] | None = None
    times = candles.open_time_ms.tolist()
    for index in range(len(candles)):
        current = {name: values[index] for name, values in lists.items()}
        if warm[index]:
            if program.exit.evaluate(current, previous):
                signals.append((times[index], EXIT))
            elif program.entry.evaluate(current, previous):
                signals.append((times[index], ENTER))
        previous = current
    return signals


def live_signals(program: RuleProgram, candles: CandleSeries, open_) -> list[tuple[int, str]]:
    state = program.start()
    signals = []
    rows = zip(
        candles.open_time_ms.tolist(),
        np.asarray(open_, dtype=np.float64).tolist(),
        candles.high.tolist(),
        candles.low.tolist(),
        candles.close.tolist(),
        candles.volume.tolist(),
        strict=True,
    )
    for open_time, *prices in rows:
        action, _ = state.step(open_time, *prices)
        if action is not None:
            signals.append((open_time, action))
    return signals


def assert_all_paths_agree(spec: dict[str, Any], candles: CandleSeries, open_) -> list[tuple[int, str]]:
    program = RuleProgram.from_spec(parse_spec({**BASE, **spec}), Timeframe.M1)
    vectorised = offline_signals(program, candles, open_)
    assert vectorised == reference_offline_signals(program, candles, open_)
    assert vectorised == live_signals(program, candles, open_)
    return vectorised


def note_signals(signals: list[tuple[int, str]]) -> None:
    """How often the random rules signal at all (see --hypothesis-show-statistics)."""
    event("signals: " + ("/".join(sorted({action for _, action in signals})) or "none"))


# --- Random specs ----------------------------------------------------------------------------------

# Periods the indicator classes accept (the spec's schema lets 1 through for all of them).
short = st.integers(2, 30)
PARAMS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "sma": st.fixed_dictionaries({"period": short}),
    "ema": st.fixed_dictionaries({"period": short}),
    "rsi": st.fixed_dictionaries({"period": short}),
    "atr": st.fixed_dictionaries({"period": st.integers(1, 30)}),
    "adx": st.fixed_dictionaries({"period": st.integers(2, 20)}),
    "vwap": st.just({}),
    "macd": st.tuples(st.integers(2, 15), st.integers(1, 15), st.integers(1, 10)).map(
        lambda p: {"fast": p[0], "slow": p[0] + p[1], "signal": p[2]}
    ),
    "bbands": st.fixed_dictionaries(
        {"period": st.integers(2, 30), "stddev": st.sampled_from([0.5, 1, 2, 2.5, 10])}
    ),
    "stoch": st.fixed_dictionaries(
        {"k_period": st.integers(1, 30), "k_smooth": st.integers(1, 5), "d_period": st.integers(1, 5)}
    ),
}

numbers = st.one_of(
    st.sampled_from(["0", "1", "2", "20", "50", "70", "100"]),
    st.tuples(st.integers(0, 200), st.integers(0, 99)).map(lambda p: f"{p[0]}.{p[1]:02d}"),
)


def expressions(names: list[str]) -> st.SearchStrategy[str]:
    """Number-valued text: numbers, names, '-', + - * / (division by zero included)."""
    leaves = st.one_of(numbers, st.sampled_from(names), st.sampled_from(names))
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            inner.map(lambda x: f"-({x})"),
            st.tuples(inner, st.sampled_from(["+", "-", "*", "/"]), inner).map(
                lambda t: f"({t[0]} {t[1]} {t[2]})"
            ),
        ),
        max_leaves=4,
    )


def conditions(names: list[str]) -> st.SearchStrategy[str]:
    """Condition text: comparisons and crosses joined by and/or/not."""
    number = expressions(names)
    compare = st.sampled_from(["<", "<=", ">", ">=", "==", "!=", "crosses_above", "crosses_below"])
    # Crosses on two names are the usual case, and the one where ties (equal previous values) occur.
    plain = st.tuples(number, compare, number).map(" ".join)
    cross = st.tuples(
        st.sampled_from(names), st.sampled_from(["crosses_above", "crosses_below"]), st.sampled_from(names)
    ).map(" ".join)
    return st.recursive(
        st.one_of(plain, cross),
        lambda inner: st.one_of(
            inner.map(lambda x: f"not ({x})"),
            st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(
                lambda t: f"({t[0]}) {t[1]} ({t[2]})"
            ),
        ),
        max_leaves=5,
    )


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    kinds = draw(st.lists(st.sampled_from(sorted(PARAMS)), max_size=3))
    indicators = {f"i{n}": {"kind": kind, **draw(PARAMS[kind])} for n, kind in enumerate(kinds)}
    names = sorted(CANDLE_FIELDS) + [
        output for name, body in indicators.items() for output in indicator_outputs(name, body["kind"])
    ]
    # Indicator outputs more often than candle fields: they carry the warm-up NaNs.
    names += names[len(CANDLE_FIELDS) :] * 2
    return {
        "indicators": indicators,
        "entry": draw(conditions(names)),
        "exit": draw(conditions(names)),
    }


# --- Candles ---------------------------------------------------------------------------------------


def series_of(times, open_, high, low, close, volume) -> tuple[CandleSeries, np.ndarray]:
    candles = CandleSeries.from_columns(open_time_ms=times, high=high, low=low, close=close, volume=volume)
    return candles, np.asarray(open_, dtype=np.float64)


@st.composite
def random_candles(draw: st.DrawFn) -> tuple[CandleSeries, np.ndarray]:
    """A random walk, or small integer prices (flat stretches: equal indicator values, ties in
    crosses); open times with gaps, across UTC midnight (VWAP sessions)."""
    rows = draw(st.integers(0, 300))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.01, rows)))
        open_ = np.concatenate([[100.0], close[:-1]])[:rows]
        spread = np.abs(rng.normal(0, 0.005, rows)) * close
        volume = rng.uniform(0, 10, rows) * (rng.random(rows) > 0.1)
    else:
        close = rng.integers(98, 103, rows).astype(np.float64)
        open_ = rng.integers(98, 103, rows).astype(np.float64)
        spread = rng.integers(0, 2, rows).astype(np.float64)
        volume = rng.integers(0, 3, rows).astype(np.float64)
    high = np.maximum(open_, close) + spread
    low = np.minimum(open_, close) - spread
    start = 19_500 * DAY_MS - int(rng.integers(0, 600)) * 60_000
    times = start + 60_000 * np.cumsum(rng.integers(1, 4, rows))
    return series_of(times, open_, high, low, close, volume)


@functools.cache
def real_rows() -> tuple[list[int], dict[str, list[float]]]:
    with REAL_CANDLES_CSV.open() as handle:
        rows = list(csv.DictReader(handle))
    times = [int(datetime.fromisoformat(row["open_time"]).timestamp() * 1000) for row in rows]
    fields = ("open", "high", "low", "close", "volume")
    return times, {field: [float(row[field]) for row in rows] for field in fields}


def real_candles(start: int, rows: int) -> tuple[CandleSeries, np.ndarray]:
    times, columns = real_rows()
    window = slice(start, start + rows)
    return series_of(times[window], *(columns[f][window] for f in ("open", "high", "low", "close", "volume")))


needs_real = pytest.mark.skipif(
    not REAL_CANDLES_CSV.exists(), reason=f"no real candles at {REAL_CANDLES_CSV}"
)


# --- Properties ------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs(), candles=random_candles())
def test_vectorised_equals_per_candle_and_live_on_random_candles(spec, candles):
    note_signals(assert_all_paths_agree(spec, *candles))


@needs_real
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs(), start=st.integers(0, 29_000), rows=st.integers(1, 1_200))
def test_vectorised_equals_per_candle_and_live_on_real_candles(spec, start, rows):
    note_signals(assert_all_paths_agree(spec, *real_candles(start, rows)))


@needs_real
@pytest.mark.parametrize(
    ("entry", "exit"),
    [
        ("fast crosses_above slow and rsi < 70", "fast crosses_below slow or rsi > 75"),
        ("not (rsi > 35) and close crosses_above fast", "rsi / (fast - slow) > 20 or close < slow * 0.997"),
    ],
)
def test_whole_real_file(entry, exit):
    spec = {
        "indicators": {
            "fast": {"kind": "ema", "period": 9},
            "slow": {"kind": "ema", "period": 21},
            "rsi": {"kind": "rsi", "period": 14},
        },
        "entry": entry,
        "exit": exit,
    }
    times, _ = real_rows()
    signals = assert_all_paths_agree(spec, *real_candles(0, len(times)))
    assert {action for _, action in signals} == {ENTER, EXIT}  # something to compare


VAR_NAMES = ["a", "b", "c", "bb.upper"]
small = st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, None, NAN])
value = st.one_of(small, small, small, st.floats(allow_nan=True, allow_infinity=True))


@settings(max_examples=500, deadline=None)
@given(
    text=conditions(VAR_NAMES),
    columns=st.integers(0, 8).flatmap(
        lambda rows: st.fixed_dictionaries(
            {name: st.lists(value, min_size=rows, max_size=rows) for name in VAR_NAMES}
        )
    ),
)
def test_evaluate_columns_equals_evaluate_row_by_row(text, columns):
    condition = compile_condition(text, names=VAR_NAMES)
    rows = len(columns["a"])
    table = [{name: columns[name][index] for name in VAR_NAMES} for index in range(rows)]
    expected = [condition.evaluate(table[i], table[i - 1] if i else None) for i in range(rows)]
    result = condition.evaluate_columns(columns, rows)
    assert result.dtype == np.bool_
    assert result.tolist() == expected, text


def test_evaluate_columns_checks_lengths_and_offline_checks_opens():
    condition = compile_condition("a crosses_above 1", names=["a"])
    with pytest.raises(ValueError, match="expected"):
        condition.evaluate_columns({"a": [1.0, 2.0]}, 3)
    with pytest.raises(KeyError):
        condition.evaluate_columns({}, 0)
    assert compile_condition("1 < 2", names=[]).evaluate_columns({}, 2).tolist() == [True, True]
    program = RuleProgram.from_spec(
        parse_spec({**BASE, "entry": "close > 0", "exit": "close < 0"}), Timeframe.M1
    )
    candles, _ = series_of([0, 60_000], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="one value per candle"):
        offline_signals(program, candles, [1.0])
