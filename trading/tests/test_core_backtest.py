"""No lookahead in the backtest engine: orders fill on the candle after their signal's, so a rule
that could only profit by trading the candle it has just seen makes no money; and a run on data
cut at any point is the prefix of the run on all of it."""

from __future__ import annotations

import random
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from marketdata.core.timeframes import Timeframe
from rules.engine.base import CandleSeries
from rules.engine.evaluator import RuleProgram, offline_signals
from rules.engine.spec import parse_spec
from trading.core import backtest
from trading.core.fills import FillModel
from trading.core.risk import RiskLimits
from trading.core.types import OrderStatus, SymbolFilters

MINUTE = 60_000
T0 = 1_700_000_040_000 - 1_700_000_040_000 % MINUTE
FILTERS = SymbolFilters(
    tick_size=Decimal("0.01"), step_size=Decimal("0.00001"), min_qty=Decimal("0.00001"), max_qty=None,
    min_notional=Decimal(5),
)  # fmt: skip
LIMITS = RiskLimits(max_position_per_symbol=Decimal(10_000), max_position_total=Decimal(10_000))


def engine_settings(model: FillModel) -> backtest.BacktestSettings:
    return backtest.BacktestSettings(
        exchange="sim",
        limits=LIMITS,
        sizing_quote=Decimal(1000),
        sizing_equity_pct=None,
        fill_model=model,
        opening_balance=Decimal(100_000),
    )


def market(minutes: list[backtest.Minute]) -> dict[str, backtest.MarketSymbol]:
    return {"BTCUSDT": backtest.MarketSymbol("BTCUSDT", "BTC", "USDT", FILTERS, minutes)}


def event(index: int, action: str, minutes: list[backtest.Minute]) -> backtest.SignalEvent:
    return backtest.SignalEvent(
        close_ms=minutes[index].open_ms + MINUTE,
        symbol="BTCUSDT",
        timeframe="1m",
        timeframe_ms=MINUTE,
        action=action,
        reference=minutes[index].close,
        rule_version=1,
    )


def test_a_rule_that_only_profits_by_trading_the_candle_it_saw_makes_no_money() -> None:
    """Green candles (100 → 101) alternate with red ones (101 → 100). "Buy the green candle"
    would win on every trade if it filled at that candle's open; filled at the next open (101),
    it sells on the red candle's signal at the following open (100): it loses, every time."""
    minutes = []
    for i in range(40):
        green = i % 2 == 0
        o, c = (Decimal(100), Decimal(101)) if green else (Decimal(101), Decimal(100))
        minutes.append(backtest.Minute(T0 + i * MINUTE, o, max(o, c), min(o, c), c))
    events = [event(i, "enter" if i % 2 == 0 else "exit", minutes) for i in range(39)]
    no_costs = FillModel(taker_fee_bps=Decimal(0), maker_fee_bps=Decimal(0), slippage_bps=Decimal(0))
    result = backtest.run(events, symbols=market(minutes), settings=engine_settings(no_costs))

    fills = [o.fill for o in result.orders if o.fill is not None]
    assert len(fills) >= 30
    for order in result.orders:
        assert order.fill is not None or order.status is OrderStatus.SUBMITTED
        if order.fill is not None and order.signal is not None:
            assert order.fill.time_ms >= order.signal.close_ms  # never on the signal's candle
    assert result.positions["BTCUSDT"].realized_pnl < 0
    buys = {o.fill.price for o in result.orders if o.fill and o.side.value == "buy"}
    assert buys == {Decimal(101)}  # the open after the green candle, not the green candle's own


def random_walk(count: int, seed: int) -> list[backtest.Minute]:
    rng = random.Random(seed)
    price = Decimal(20_000)
    minutes = []
    for i in range(count):
        o = price
        c = (o + Decimal(rng.randint(-2_000, 2_000)) / 100).quantize(Decimal("0.01"))
        h = max(o, c) + Decimal(rng.randint(0, 500)) / 100
        low = min(o, c) - Decimal(rng.randint(0, 500)) / 100
        minutes.append(backtest.Minute(T0 + i * MINUTE, o, h, low, c))
        price = c
    return minutes


SPEC = parse_spec(
    {
        "timeframes": ["1m"],
        "indicators": {"fast": {"kind": "ema", "period": 3}, "slow": {"kind": "ema", "period": 8}},
        "entry": "fast crosses_above slow",
        "exit": "fast crosses_below slow",
        "sizing": {"quote_amount": "1000"},
        "limits": {"max_position_per_symbol": "10000", "max_position_total": "10000"},
    }
)


def signals_on(minutes: list[backtest.Minute]) -> list[backtest.SignalEvent]:
    series = CandleSeries.from_columns(
        open_time_ms=[m.open_ms for m in minutes],
        high=[float(m.high) for m in minutes],
        low=[float(m.low) for m in minutes],
        close=[float(m.close) for m in minutes],
        volume=[1.0] * len(minutes),
    )
    program = RuleProgram.from_spec(SPEC, Timeframe.M1)
    index = {m.open_ms: i for i, m in enumerate(minutes)}
    return [
        event(index[open_ms], action, minutes)
        for open_ms, action in offline_signals(program, series, [float(m.open) for m in minutes])
    ]


FULL = random_walk(400, seed=11)
FULL_RESULT = backtest.run(signals_on(FULL), symbols=market(FULL), settings=engine_settings(FillModel()))


@settings(max_examples=40, deadline=None)
@given(cut=st.integers(min_value=20, max_value=399))
def test_a_run_on_data_cut_anywhere_is_the_prefix_of_the_full_run(cut: int) -> None:
    part = FULL[:cut]
    signals = signals_on(part)
    # The rule itself sees no future: its signals on the cut data are the full run's before it.
    assert signals == [s for s in signals_on(FULL) if s.close_ms <= part[-1].open_ms + MINUTE]
    result = backtest.run(signals, symbols=market(part), settings=engine_settings(FillModel()))
    end = part[-1].open_ms + MINUTE  # when the cut data ends

    def seen(orders: list[backtest.SimOrder]) -> list[tuple[object, ...]]:
        """What had happened by `end`: orders placed, and fills of candles over by then."""
        return [
            (
                o.client_order_id,
                o.side,
                o.quantity,
                o.reject_reason,
                o.fill if o.fill is not None and o.fill.time_ms + MINUTE <= end else None,
            )
            for o in orders
            if o.placed_ms <= end + 1_000  # decided a second after the last close
        ]

    assert seen(result.orders) == seen(FULL_RESULT.orders)
    assert result.decisions == [d for d in FULL_RESULT.decisions if d.signal.close_ms <= end]
