"""The rule evaluator: one closed candle at a time (live) gives the same signals as the whole
history at once (offline), on real candles, for every indicator kind; warm-up holds signals back."""

import csv

import pytest

from marketdata.core.timeframes import Timeframe
from marketdata.tests.shared_data import REAL_CANDLES_CSV
from rules.engine.base import CandleSeries
from rules.engine.evaluator import ENTER, EXIT, RuleProgram, offline_signals
from rules.engine.spec import parse_spec

DATA = REAL_CANDLES_CSV

BASE = {
    "timeframes": ["1m"],
    "sizing": {"quote_amount": "100"},
    "limits": {"max_position_per_symbol": "500", "max_position_total": "5000"},
}
SPECS = {
    "ema cross with rsi": {
        "indicators": {"fast": {"kind": "ema", "period": 9}, "slow": {"kind": "ema", "period": 21},
                       "rsi": {"kind": "rsi", "period": 14}},
        "entry": "fast crosses_above slow and rsi < 70",
        "exit": "fast crosses_below slow or rsi > 80",
    },
    "bands, macd, adx, atr": {
        "indicators": {
            "bb": {"kind": "bbands", "period": 20, "stddev": 2},
            "m": {"kind": "macd", "fast": 12, "slow": 26, "signal": 9},
            "adx": {"kind": "adx", "period": 14},
            "atr": {"kind": "atr", "period": 14},
        },
        "entry": "close < bb.lower and m.hist > 0 and adx > 20",
        "exit": "close > bb.upper or (m.line crosses_below m.signal and atr > 5)",
    },
    "stochastic, vwap, sma": {
        "indicators": {
            "st": {"kind": "stoch", "k_period": 14, "k_smooth": 3, "d_period": 3},
            "vw": {"kind": "vwap"},
            "avg": {"kind": "sma", "period": 50},
        },
        "entry": "st.k crosses_above st.d and st.k < 20 and close > vw",
        "exit": "st.k > 80 or close < avg * 0.995",
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def candles():
    if not DATA.exists():
        pytest.skip(f"the real candles are not here: {DATA}")
    with DATA.open() as handle:
        rows = list(csv.DictReader(handle))[:6000]
    from datetime import datetime

    times = [
        int(datetime.fromisoformat(row["open_time"].replace("Z", "+00:00")).timestamp() * 1000)
        for row in rows
    ]
    columns = {
        field: [float(row[field]) for row in rows] for field in ("open", "high", "low", "close", "volume")
    }
    return times, columns


@pytest.mark.parametrize("name", sorted(SPECS))
def test_live_equals_offline_on_real_candles(candles, name):
    times, columns = candles
    program = RuleProgram.from_spec(parse_spec({**BASE, **SPECS[name]}), Timeframe.M1)
    state = program.start()
    live = []
    for index, open_time in enumerate(times):
        action, _ = state.step(
            open_time, columns["open"][index], columns["high"][index], columns["low"][index],
            columns["close"][index], columns["volume"][index],
        )  # fmt: skip
        if action is not None:
            live.append((open_time, action))
    series = CandleSeries.from_columns(
        open_time_ms=times,
        high=columns["high"],
        low=columns["low"],
        close=columns["close"],
        volume=columns["volume"],
    )
    offline = offline_signals(program, series, columns["open"])
    assert live == offline
    assert {action for _, action in live} == {ENTER, EXIT}  # the rule did something to compare
    assert live[0][0] >= times[program.warmup]  # nothing before every indicator is warm


def test_no_signal_while_warming_up_even_if_the_condition_holds():
    spec = parse_spec(
        {
            **BASE,
            "indicators": {"slow": {"kind": "sma", "period": 5}},
            "entry": "close > 0",
            "exit": "close < 0",
        }
    )
    state = RuleProgram.from_spec(spec, Timeframe.M1).start()
    actions = [state.step(n * 60_000, 1.0, 1.0, 1.0, 1.0, 1.0)[0] for n in range(6)]
    assert actions == [None, None, None, None, ENTER, ENTER]


def test_exit_wins_when_both_hold_and_candles_must_advance():
    spec = parse_spec({**BASE, "entry": "close > 0", "exit": "volume >= 0"})
    state = RuleProgram.from_spec(spec, Timeframe.M1).start()
    assert state.step(0, 1.0, 1.0, 1.0, 1.0, 1.0)[0] == EXIT
    with pytest.raises(ValueError, match="not after the last one"):
        state.step(0, 1.0, 1.0, 1.0, 1.0, 1.0)
