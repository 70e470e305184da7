"""Evaluating a rule on closed candles: the one implementation for live, dry-run and backtest.

A `RuleProgram` is a spec compiled for one timeframe: its indicators (from `rules.engine`'s
indicator classes) and its entry/exit conditions. Two ways to run it, which give the same
signals on the same candles:
- `PairState.step`: live, one closed candle at a time, each indicator in its incremental form;
- `offline_signals`: a whole history at once, each indicator in its batch form and the conditions
  on whole columns (`Condition.evaluate_columns`: numpy, no loop over candles).

A signal is "exit" when the exit condition holds, else "enter" when the entry condition holds,
else nothing (exit first: when both hold, the risk-reducing side wins). No signal is given before
every indicator of the program has a value (warm-up), whatever the conditions say.
Values are float64 (prices become floats at the edge of this code, in `rules.evaluation`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from marketdata.core.timeframes import Timeframe
from rules.engine.base import CandleSeries, FloatArray, Indicator, IndicatorState
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
        return PairState(self, [item.indicator.start() for item in self.indicators])


def _decide(
    program: RuleProgram, current: Mapping[str, float], previous: Mapping[str, float] | None
) -> str | None:
    if program.exit.evaluate(current, previous):
        return EXIT
    if program.entry.evaluate(current, previous):
        return ENTER
    return None


class PairState:
    """One rule program on one (symbol, timeframe), fed closed candles in order."""

    def __init__(self, program: RuleProgram, states: list[IndicatorState[Any]]) -> None:
        self.program = program
        self._states = states
        self.previous: dict[str, float] | None = None
        self.last_open_ms: int | None = None

    def step(
        self, open_time_ms: int, open_: float, high: float, low: float, close: float, volume: float
    ) -> tuple[str | None, dict[str, float]]:
        """Fold in one closed candle; return the signal at it (or None) and the values seen."""
        if self.last_open_ms is not None and open_time_ms <= self.last_open_ms:
            raise ValueError(f"candle at {open_time_ms} is not after the last one ({self.last_open_ms})")
        values = {"open": open_, "high": high, "low": low, "close": close, "volume": volume}
        warm = True
        for item, state in zip(self.program.indicators, self._states, strict=True):
            result = state.update(high, low, close, volume, open_time_ms)
            if item.fields:
                for output, field in zip(item.outputs, item.fields, strict=True):
                    value = math.nan if result is None else float(getattr(result, field))
                    values[output] = value
                    warm = warm and not math.isnan(value)
            else:
                value = math.nan if result is None else float(result)
                values[item.outputs[0]] = value
                warm = warm and not math.isnan(value)
        action = _decide(self.program, values, self.previous) if warm else None
        self.previous = values
        self.last_open_ms = open_time_ms
        return action, values


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
    exits = program.exit.evaluate_columns(columns, rows) & warm
    entries = program.entry.evaluate_columns(columns, rows) & warm & ~exits  # exit wins
    at = np.flatnonzero(exits | entries)
    times = candles.open_time_ms[at].tolist()
    return [
        (open_ms, EXIT if is_exit else ENTER)
        for open_ms, is_exit in zip(times, exits[at].tolist(), strict=True)
    ]
