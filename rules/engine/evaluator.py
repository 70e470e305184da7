"""Evaluating a rule on closed candles: the one implementation for live, dry-run and backtest.

A `RuleProgram` is a spec compiled for one timeframe: its indicators (from `rules.engine`'s
indicator classes) and its entry/exit conditions. Two ways to run it, which give the same
signals on the same candles:
- `RuleStates.step`: live, one closed candle per series at a time for many series at once (one
  row per symbol of the timeframe), each indicator in its incremental row form and the
  conditions on the rows (`Condition.evaluate_rows`): numpy across symbols, no loop over them.
  `PairState` is one series: a one-row `RuleStates`;
- `offline_signals`: a whole history at once, each indicator in its batch form and the conditions
  on whole columns (`Condition.evaluate_columns`: numpy, no loop over candles).

A signal is "exit" when the exit condition holds, else "enter" when the entry condition holds,
else nothing (exit first: when both hold, the risk-reducing side wins). No signal is given before
every indicator of the program has a value (warm-up), whatever the conditions say.
Values are float64 (prices become floats at the edge of this code, in `rules.evaluation`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from marketdata.core.timeframes import Timeframe
from rules.engine.base import BoolArray, CandleSeries, FloatArray, Indicator, IntArray, RowIndex
from rules.engine.expressions import Condition
from rules.engine.indicators import Adx, Atr, BollingerBands, Ema, Macd, Rsi, Sma, Stochastic, Vwap
from rules.engine.spec import IndicatorDecl, RuleSpec

ENTER = "enter"
EXIT = "exit"

# kind → (indicator from the spec's parameters, output fields of its value in the order of
# `indicator_outputs`; () for a single float).
_KINDS: dict[str, tuple[Callable[[Mapping[str, Any]], Indicator[Any, Any]], tuple[str, ...]]] = {
    "sma": (lambda p: Sma(period=int(p["period"])), ()),
    "ema": (lambda p: Ema(period=int(p["period"])), ()),
    "rsi": (lambda p: Rsi(period=int(p["period"])), ()),
    "atr": (lambda p: Atr(period=int(p["period"])), ()),
    "adx": (lambda p: Adx(period=int(p["period"])), ()),
    "vwap": (lambda p: Vwap(), ()),
    "macd": (
        lambda p: Macd(fast=int(p["fast"]), slow=int(p["slow"]), signal=int(p["signal"])),
        ("macd", "signal", "histogram"),
    ),
    "bbands": (
        lambda p: BollingerBands(period=int(p["period"]), up=float(p["stddev"]), down=float(p["stddev"])),
        ("middle", "upper", "lower"),
    ),
    "stoch": (
        lambda p: Stochastic(fast_k=int(p["k_period"]), slow_k=int(p["k_smooth"]), slow_d=int(p["d_period"])),
        ("k", "d"),
    ),
}


@dataclass(frozen=True)
class _Compiled:
    outputs: tuple[str, ...]  # condition identifiers, e.g. ("macd.line", "macd.signal", "macd.hist")
    fields: tuple[str, ...]  # the matching fields of the indicator's value, () for a float
    indicator: Indicator[Any, Any]


def indicator_for(decl: IndicatorDecl) -> Indicator[Any, Any]:
    build, _ = _KINDS[decl.kind]
    return build(decl.params)


@dataclass(frozen=True)
class RuleProgram:
    timeframe: Timeframe
    entry: Condition
    exit: Condition
    indicators: tuple[_Compiled, ...]

    @classmethod
    def from_spec(cls, spec: RuleSpec, timeframe: Timeframe) -> RuleProgram:
        compiled = []
        for name, decl in sorted(spec.indicators_for(timeframe).items()):
            _, fields = _KINDS[decl.kind]
            compiled.append(_Compiled(decl.outputs(name), fields, indicator_for(decl)))
        return cls(timeframe=timeframe, entry=spec.entry, exit=spec.exit, indicators=tuple(compiled))

    @property
    def warmup(self) -> int:
        """Candles before every indicator has a value."""
        return max((item.indicator.warmup for item in self.indicators), default=0)

    def start(self) -> PairState:
        return PairState(self)


def _signals(
    program: RuleProgram, warm: BoolArray, holds: Callable[[Condition], BoolArray]
) -> tuple[BoolArray, BoolArray]:
    """(exit, enter) per row, from where each condition holds: exit wins, nothing before warm."""
    exits = holds(program.exit) & warm
    entries = holds(program.entry) & warm & ~exits
    return exits, entries


@dataclass(frozen=True)
class RowsStep:
    """What one `RuleStates.step` gave, one element per row stepped: where the rule says exit,
    where it says enter, and every value it saw (candle fields and indicator outputs)."""

    exit: BoolArray
    enter: BoolArray
    values: dict[str, FloatArray]


CANDLE_COLUMNS = ("open", "high", "low", "close", "volume")


class RuleStates:
    """One rule program on many series of its timeframe (one per symbol), a row each.

    Rows are added with `add_rows` (fresh: no candle seen) and made fresh again with `reset`.
    `step` folds in one closed candle for each row given; every row is at its own point of its
    own history (rows join late, warm up, rebuild), and one numpy operation serves them all.
    """

    def __init__(self, program: RuleProgram) -> None:
        self.program = program
        self._indicators = [item.indicator.rows() for item in program.indicators]
        names = [*CANDLE_COLUMNS, *(output for item in program.indicators for output in item.outputs)]
        self._previous = {name: np.empty(0) for name in names}
        self.last_open_ms: IntArray = np.empty(0, dtype=np.int64)
        self.seen: BoolArray = np.empty(0, dtype=bool)  # a row has had a candle (else no previous)
        self.size = 0
        self._capacity = 0

    def add_rows(self, count: int) -> RowIndex:
        """`count` fresh rows; their indexes."""
        needed = self.size + count
        if needed > self._capacity:
            capacity = max(needed, 2 * self._capacity, 8)
            for state in self._indicators:
                state.resize(capacity)
            self._previous = {
                name: _grown(column, capacity, np.nan) for name, column in self._previous.items()
            }
            self.last_open_ms = _grown(self.last_open_ms, capacity, 0)
            self.seen = _grown(self.seen, capacity, False)
            self._capacity = capacity
        added = np.arange(self.size, needed, dtype=np.intp)
        self.size = needed
        self.reset(added)
        return added

    def reset(self, rows: RowIndex) -> None:
        for state in self._indicators:
            state.reset(rows)
        for column in self._previous.values():
            column[rows] = np.nan
        self.last_open_ms[rows] = 0
        self.seen[rows] = False

    def step(
        self,
        rows: RowIndex,
        open_time_ms: IntArray,
        open_: FloatArray,
        high: FloatArray,
        low: FloatArray,
        close: FloatArray,
        volume: FloatArray,
    ) -> RowsStep:
        """Fold in one closed candle per row (distinct rows; one array element per row)."""
        seen = self.seen[rows]
        late = seen & (open_time_ms <= self.last_open_ms[rows])
        if late.any():
            at = int(np.flatnonzero(late)[0])
            last = int(self.last_open_ms[rows[at]])
            raise ValueError(f"candle at {int(open_time_ms[at])} is not after the last one ({last})")
        values = {"open": open_, "high": high, "low": low, "close": close, "volume": volume}
        warm = np.ones(rows.size, dtype=bool)
        for item, state in zip(self.program.indicators, self._indicators, strict=True):
            columns = state.update(rows, high, low, close, volume, open_time_ms)
            for output, column in zip(item.outputs, columns, strict=True):
                values[output] = column
                warm &= ~np.isnan(column)
        previous = {name: column[rows] for name, column in self._previous.items()}
        exits, entries = _signals(
            self.program, warm, lambda condition: condition.evaluate_rows(values, previous, seen, rows.size)
        )
        for name, column in self._previous.items():
            column[rows] = values[name]
        self.last_open_ms[rows] = open_time_ms
        self.seen[rows] = True
        return RowsStep(exits, entries, values)


def _grown(column: npt.NDArray[Any], size: int, fill: Any) -> npt.NDArray[Any]:
    grown = np.full(size, fill, dtype=column.dtype)
    grown[: column.size] = column
    return grown


_ONE_ROW = np.zeros(1, dtype=np.intp)


class PairState:
    """One rule program on one (symbol, timeframe), fed closed candles in order: a one-row
    `RuleStates`."""

    def __init__(self, program: RuleProgram) -> None:
        self.program = program
        self._rows = RuleStates(program)
        self._rows.add_rows(1)

    @property
    def last_open_ms(self) -> int | None:
        return int(self._rows.last_open_ms[0]) if self._rows.seen[0] else None

    def step(
        self, open_time_ms: int, open_: float, high: float, low: float, close: float, volume: float
    ) -> tuple[str | None, dict[str, float]]:
        """Fold in one closed candle; return the signal at it (or None) and the values seen."""
        result = self._rows.step(
            _ONE_ROW,
            np.array([open_time_ms], dtype=np.int64),
            *(np.array([value], dtype=np.float64) for value in (open_, high, low, close, volume)),
        )
        action = EXIT if result.exit[0] else ENTER if result.enter[0] else None
        return action, {name: float(column[0]) for name, column in result.values.items()}


def offline_signals(
    program: RuleProgram, candles: CandleSeries, open_: npt.ArrayLike
) -> list[tuple[int, str]]:
    """(open time, signal) for every candle of a whole history, computed with the batch forms.

    The conditions run on whole columns (`Condition.evaluate_columns`), which gives, row by row,
    what `PairState.step` gives candle by candle: previous = the row before, none for row 0.
    """
    rows = len(candles)
    opens = np.asarray(open_, dtype=np.float64)
    if opens.shape != (rows,):
        raise ValueError(f"open_ has shape {opens.shape}, expected one value per candle ({rows},)")
    columns: dict[str, FloatArray] = {
        "open": opens,
        "high": candles.high,
        "low": candles.low,
        "close": candles.close,
        "volume": candles.volume,
    }
    warm = np.ones(rows, dtype=bool)
    for item in program.indicators:
        result = item.indicator.batch(candles)
        if item.fields:
            for output, field in zip(item.outputs, item.fields, strict=True):
                columns[output] = np.asarray(getattr(result, field), dtype=np.float64)
        else:
            columns[item.outputs[0]] = np.asarray(result, dtype=np.float64)
        for output in item.outputs:
            warm &= ~np.isnan(columns[output])
    exits, entries = _signals(program, warm, lambda condition: condition.evaluate_columns(columns, rows))
    at = np.flatnonzero(exits | entries)
    times = candles.open_time_ms[at].tolist()
    return [
        (open_ms, EXIT if is_exit else ENTER)
        for open_ms, is_exit in zip(times, exits[at].tolist(), strict=True)
    ]
