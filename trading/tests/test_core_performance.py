"""Backtest performance (`trading.core.performance`): figures worked out by hand on small books,
the edge cases of each ratio, the downsampler, and the identity that ties the exact PnL to the
exact final equity."""

from __future__ import annotations

import json
import math
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trading.core.backtest import BacktestResult, Minute, SimOrder
from trading.core.performance import (
    DAY_MS,
    MINUTE_MS,
    CandleSeries,
    EquityCurve,
    TradeFill,
    compute,
    exact_text,
    fills_of,
)
from trading.core.types import ExecutedFill, OrderStatus, Side

D = Decimal
SYMBOL = "BTCUSDT"
T0 = 1_700_006_400_000  # a UTC midnight (2023-11-15)
OPENING = D(1000)


def at(minute: int) -> int:
    return T0 + minute * MINUTE_MS


def buy(minute: int, price: str, quantity: str, fee: str = "0", symbol: str = SYMBOL) -> TradeFill:
    return TradeFill(symbol, Side.BUY, at(minute), D(price), D(quantity), D(fee))


def sell(minute: int, price: str, quantity: str, fee: str = "0", symbol: str = SYMBOL) -> TradeFill:
    return TradeFill(symbol, Side.SELL, at(minute), D(price), D(quantity), D(fee))


def series(closes: list[str], first_minute: int = 0) -> CandleSeries:
    return CandleSeries(
        np.array([at(first_minute + i) for i in range(len(closes))], dtype=np.int64),
        np.array([float(D(c)) for c in closes]),
    )


def run(fills, closes, minutes=None, opening=OPENING):
    return compute(
        fills,
        candles={SYMBOL: series(closes)},
        opening_balance=opening,
        start_ms=T0,
        end_ms=at(len(closes) if minutes is None else minutes),
    )


# Hand-worked books -------------------------------------------------------------------------------

TEN_CLOSES = ["100", "101", "105", "110", "108", "105", "102", "100", "99", "98"]
# A winner: 1 @ 100 (fee 0.1) out @ 110 (fee 0.11): gross +10, net +9.79.
# A loser: 2 @ 105 (fee 0.21) out @ 100 (fee 0.2): gross -10, net -10.41.
TWO_TRIPS = [
    buy(1, "100", "1", "0.1"),
    sell(3, "110", "1", "0.11"),
    buy(5, "105", "2", "0.21"),
    sell(7, "100", "2", "0.2"),
]


def test_two_round_trips_one_winning_one_losing_with_fees() -> None:
    perf = run(TWO_TRIPS, TEN_CLOSES)

    win, loss = perf.trades
    assert (win.entry_ms, win.exit_ms, win.quantity) == (at(1), at(3), D(1))
    assert (win.entry_price, win.exit_price) == (D(100), D(110))
    assert (win.gross_pnl, win.fees, win.net_pnl) == (D(10), D("0.21"), D("9.79"))
    assert (loss.entry_ms, loss.exit_ms, loss.quantity) == (at(5), at(7), D(2))
    assert (loss.entry_price, loss.exit_price) == (D(105), D(100))
    assert (loss.gross_pnl, loss.fees, loss.net_pnl) == (D(-10), D("0.41"), D("-10.41"))
    assert not win.is_open
    assert not loss.is_open

    assert perf.gross_pnl == D(0)
    assert perf.fees == D("0.62")
    assert perf.net_pnl == D("-0.62")
    assert perf.final_equity == D("999.38")
    assert perf.trade_count == 2
    assert perf.win_rate == 0.5
    assert perf.profit_factor == pytest.approx(9.79 / 10.41)
    # Held through the minutes that end with a position: 1, 2 and 5, 6.
    assert perf.exposure_pct == pytest.approx(40.0)


def test_equity_is_cash_plus_the_position_at_each_minutes_close() -> None:
    perf = run(TWO_TRIPS, TEN_CLOSES)

    # cash: 1000 → 899.9 (buy) → 1009.79 (sell) → 799.58 (buy 2) → 999.38 (sell 2)
    expected = [
        1000,
        899.9 + 101,
        899.9 + 105,
        1009.79,
        1009.79,
        799.58 + 2 * 105,
        799.58 + 2 * 102,
        999.38,
        999.38,
        999.38,
    ]
    curve = perf.equity_curve
    assert curve.times_ms.tolist() == [at(i) for i in range(10)]
    assert curve.equity.tolist() == pytest.approx(expected)
    assert float(perf.final_equity) == pytest.approx(curve.equity[-1])


def test_an_open_position_is_marked_at_the_last_close() -> None:
    perf = run([buy(2, "200", "0.5", "0.1")], ["199", "200", "201", "205", "210.5"])

    (trade,) = perf.trades
    assert trade.is_open
    assert trade.exit_ms is None
    assert trade.exit_price == D("210.5")
    assert trade.gross_pnl == D("5.25")
    assert trade.net_pnl == D("5.15")
    assert perf.final_equity == D("1005.15")
    assert perf.net_pnl == D("5.15")
    # Closed-trade figures ignore the open one.
    assert perf.win_rate is None
    assert perf.profit_factor is None
    assert perf.trade_count == 1
    assert perf.closed_trades == ()
    assert perf.exposure_pct == pytest.approx(60.0)


def test_the_mark_is_the_last_close_in_the_period_carried_over_gaps() -> None:
    candles = CandleSeries(np.array([at(0), at(1), at(9)], dtype=np.int64), np.array([10.0, 12.5, 99.0]))
    perf = compute(
        [buy(0, "10", "2")],
        candles={SYMBOL: candles},
        opening_balance=OPENING,
        start_ms=T0,
        end_ms=at(5),  # the candle at minute 9 is after the period
    )
    assert perf.final_equity == D(1005)
    assert perf.equity_curve.equity.tolist() == pytest.approx([1000, 1005, 1005, 1005, 1005])


def test_several_buys_build_one_trade_and_a_sell_to_flat_closes_it() -> None:
    fills = [buy(0, "100", "1"), buy(1, "110", "1"), sell(2, "120", "0.5"), sell(3, "130", "1.5")]
    perf = run(fills, ["100", "110", "120", "130", "130"])

    (trade,) = perf.trades
    assert (trade.entry_ms, trade.exit_ms, trade.quantity) == (at(0), at(3), D(2))
    assert trade.entry_price == D(105)
    assert trade.exit_price == D("127.5")
    assert trade.net_pnl == D(45)


def test_trades_on_two_symbols_are_kept_apart_and_ordered_by_entry() -> None:
    other = "ETHUSDT"
    fills = [
        buy(0, "100", "1", symbol=SYMBOL),
        buy(1, "10", "5", symbol=other),
        sell(2, "90", "1", symbol=SYMBOL),
        sell(3, "12", "5", symbol=other),
    ]
    perf = compute(
        fills,
        candles={SYMBOL: series(["100", "95", "90", "90"]), other: series(["10", "12", "11", "12"])},
        opening_balance=OPENING,
        start_ms=T0,
        end_ms=at(4),
    )
    assert [(t.symbol, t.net_pnl) for t in perf.trades] == [(SYMBOL, D(-10)), (other, D(10))]
    # cash 900, 850, 940, 1000 after each fill
    assert perf.equity_curve.equity.tolist() == pytest.approx([1000, 850 + 95 + 60, 940 + 55, 1000])
    assert perf.exposure_pct == pytest.approx(75.0)


# Edge cases ---------------------------------------------------------------------------------------


def test_no_trades() -> None:
    perf = compute([], candles={}, opening_balance=OPENING, start_ms=T0, end_ms=T0 + 3 * DAY_MS)

    assert perf.trades == ()
    assert (perf.net_pnl, perf.gross_pnl, perf.fees) == (D(0), D(0), D(0))
    assert perf.final_equity == OPENING
    assert perf.win_rate is None
    assert perf.profit_factor is None
    assert perf.max_drawdown_pct == 0.0
    assert perf.exposure_pct == 0.0
    # Flat equity: no deviation, so no ratios.
    assert perf.sharpe is None
    assert perf.sortino is None
    assert len(perf.equity_curve) == 3 * 24 * 60
    assert set(perf.equity_curve.equity.tolist()) == {1000.0}


def test_only_winning_trades_have_no_profit_factor() -> None:
    perf = run(
        [buy(0, "100", "1"), sell(1, "101", "1"), buy(2, "100", "1"), sell(3, "102", "1")], ["100"] * 4
    )
    assert perf.win_rate == 1.0
    assert perf.profit_factor is None


def test_only_losing_trades_have_a_profit_factor_of_zero() -> None:
    perf = run([buy(0, "100", "1"), sell(1, "99", "1")], ["100"] * 2)
    assert perf.win_rate == 0.0
    assert perf.profit_factor == 0.0


def test_a_break_even_trade_counts_as_closed_but_not_as_a_win() -> None:
    fills = [buy(0, "100", "1"), sell(1, "100", "1"), buy(2, "100", "1"), sell(3, "104", "1")]
    perf = run(fills, ["100"] * 4)
    assert perf.win_rate == 0.5
    assert perf.profit_factor is None


def test_fees_alone_make_a_flat_trade_a_loss() -> None:
    perf = run([buy(0, "100", "1", "0.1"), sell(1, "100", "1", "0.1")], ["100"] * 2)
    assert perf.trades[0].gross_pnl == 0
    assert perf.trades[0].net_pnl == D("-0.2")
    assert perf.win_rate == 0.0
    assert perf.profit_factor == 0.0


# Exposure -----------------------------------------------------------------------------------------


def test_exposure_counts_the_minutes_that_end_holding_a_position() -> None:
    # Bought at the open of minute 10, sold at the open of minute 25: minutes 10..24 held.
    perf = run([buy(10, "100", "1"), sell(25, "100", "1")], ["100"] * 100)
    assert perf.exposure_pct == pytest.approx(15.0)


def test_the_period_is_the_whole_minutes_opening_inside_it() -> None:
    perf = compute(
        [buy(1, "100", "1")],
        candles={SYMBOL: series(["100"] * 5)},
        opening_balance=OPENING,
        start_ms=T0 + 1,  # the first whole minute opens at minute 1
        end_ms=at(4) + 1,  # the last opens at minute 4
    )
    assert perf.equity_curve.times_ms.tolist() == [at(1), at(2), at(3), at(4)]
    assert perf.exposure_pct == 100.0


# Drawdown -----------------------------------------------------------------------------------------


def test_drawdown_on_a_constructed_curve() -> None:
    # 1 unit held from the first minute with 900 in cash: equity 1000, 1020, 990, 1030, 1017.
    perf = run([buy(0, "100", "1")], ["100", "120", "90", "130", "117"])

    assert perf.equity_curve.equity.tolist() == pytest.approx([1000, 1020, 990, 1030, 1017])
    expected = [0.0, 0.0, -30 / 1020 * 100, 0.0, -13 / 1030 * 100]
    assert perf.equity_curve.drawdown_pct.tolist() == pytest.approx(expected)
    assert perf.max_drawdown_pct == pytest.approx(30 / 1020 * 100)


def test_the_opening_balance_is_the_first_peak() -> None:
    # Falls from the very first minute: the fee and a lower close already put it under 1000.
    perf = run([buy(0, "100", "1", "1")], ["90", "95"])
    assert perf.equity_curve.equity.tolist() == pytest.approx([989, 994])
    assert perf.max_drawdown_pct == pytest.approx(1.1)


# Sharpe and Sortino -------------------------------------------------------------------------------


def test_sharpe_and_sortino_from_daily_returns_at_utc_day_ends() -> None:
    day = 24 * 60
    candles = CandleSeries(
        np.array([at(0), at(day - 1), at(day), at(2 * day - 1), at(3 * day - 1)], dtype=np.int64),
        np.array([100.0, 110.0, 50.0, 99.0, 120.0]),
    )
    perf = compute(
        [buy(0, "100", "1")],
        candles={SYMBOL: candles},
        opening_balance=OPENING,
        start_ms=T0,
        end_ms=T0 + 3 * DAY_MS,
    )

    # Day ends: cash 900 + the close of each day's last minute (the dip to 50 mid-day is not one).
    returns = np.array([1010 / 1000, 999 / 1010, 1020 / 999]) - 1
    sharpe = returns.mean() / returns.std(ddof=1) * math.sqrt(365)
    downside = math.sqrt(np.mean(np.minimum(returns, 0) ** 2))
    sortino = returns.mean() / downside * math.sqrt(365)
    assert perf.sharpe == pytest.approx(sharpe)
    assert perf.sortino == pytest.approx(sortino)
    assert perf.sortino != pytest.approx(perf.sharpe)
    # The intraday dip is in the per-minute drawdown, though.
    assert perf.max_drawdown_pct == pytest.approx((1010 - 950) / 1010 * 100)


def test_ratios_need_two_daily_returns() -> None:
    perf = run([buy(0, "100", "1")], ["100", "120", "90"])
    assert perf.sharpe is None
    assert perf.sortino is None


def test_sortino_needs_a_losing_day() -> None:
    candles = CandleSeries(np.array([at(0), at(24 * 60)], dtype=np.int64), np.array([110.0, 130.0]))
    perf = compute(
        [buy(0, "100", "1")],
        candles={SYMBOL: candles},
        opening_balance=OPENING,
        start_ms=T0,
        end_ms=T0 + 2 * DAY_MS,
    )
    assert perf.sharpe is not None
    assert perf.sharpe > 0
    assert perf.sortino is None


# The downsampler ----------------------------------------------------------------------------------


def curve_of(equity: np.ndarray) -> EquityCurve:
    peak = np.maximum.accumulate(equity)
    return EquityCurve(
        T0 + np.arange(equity.size, dtype=np.int64) * MINUTE_MS, equity, (equity / peak - 1) * 100
    )


def test_the_downsampler_keeps_a_one_minute_dip_and_the_peak() -> None:
    equity = 1000 + np.sin(np.arange(10_000) / 500.0) * 10
    equity[4321] = 700.0  # a one-minute crash, nowhere near a bucket edge
    curve = curve_of(equity)

    small = curve.downsampled(50)

    assert len(small) <= 50
    assert small.equity.min() == 700.0
    assert at(4321) in small.times_ms.tolist()
    assert small.equity.max() == equity.max()
    assert small.drawdown_pct.min() == curve.drawdown_pct.min()
    assert (small.times_ms[0], small.times_ms[-1]) == (curve.times_ms[0], curve.times_ms[-1])
    assert np.all(np.diff(small.times_ms) > 0)


def test_the_downsampler_keeps_the_deepest_drawdown_when_it_is_not_the_lowest_equity() -> None:
    # One bucket: down to 900 (-10 %), up to 2000, down to 1500 (-25 %), back up.
    curve = curve_of(np.array([1000.0, 900, 2000, 1500, 1800, 1900]))
    small = curve.downsampled(5)
    assert small.equity.tolist() == [1000, 900, 2000, 1500, 1900]
    assert small.drawdown_pct.min() == pytest.approx(-25.0)


def test_the_downsampler_copes_with_a_last_bucket_of_padding_only() -> None:
    # 24 points in 7 buckets of 4: the seventh would hold nothing but padding.
    curve = curve_of(np.arange(1.0, 25.0)[::-1].copy())
    small = curve.downsampled(23)
    assert len(small) <= 23
    assert small.equity.min() == 1.0
    assert small.equity.max() == 24.0


def test_a_short_curve_is_not_downsampled() -> None:
    curve = curve_of(np.array([1.0, 2.0, 3.0]))
    assert curve.downsampled(5) is curve
    with pytest.raises(ValueError, match="at least 5"):
        curve.downsampled(4)


# Inputs --------------------------------------------------------------------------------------------


def test_fills_of_takes_the_filled_orders_in_fill_time_order() -> None:
    def order(cid: str, side: Side, fill_minute: int | None, fee_asset: str = "USDT") -> SimOrder:
        fill = (
            ExecutedFill(cid, D("100.5"), D("0.1"), D("0.01"), fee_asset, at(fill_minute))
            if fill_minute is not None
            else None
        )
        status = OrderStatus.FILLED if fill else OrderStatus.REJECTED
        return SimOrder(cid, SYMBOL, side, D("0.1"), D("0.1"), D(100), 0, status, fill=fill)

    result = BacktestResult(
        orders=[order("b", Side.SELL, 5), order("a", Side.BUY, 2), order("r", Side.BUY, None)],
        decisions=[],
        positions={},
        balances={},
    )
    assert fills_of(result) == [
        TradeFill(SYMBOL, Side.BUY, at(2), D("100.5"), D("0.1"), D("0.01")),
        TradeFill(SYMBOL, Side.SELL, at(5), D("100.5"), D("0.1"), D("0.01")),
    ]
    result.orders.append(order("bnb", Side.BUY, 6, fee_asset="BNB"))
    with pytest.raises(ValueError, match="BNB"):
        fills_of(result)


def test_candles_from_backtest_minutes() -> None:
    minutes = [Minute(at(i), D(1), D(2), D("0.5"), D(c)) for i, c in enumerate(["1.5", "1.25"])]
    candles = CandleSeries.of_minutes(minutes)
    assert candles.open_ms.tolist() == [at(0), at(1)]
    assert candles.close.tolist() == [1.5, 1.25]
    assert candles.mark_at(at(7)) == D("1.25")


@pytest.mark.parametrize(
    ("fills", "message"),
    [
        ([sell(0, "100", "1")], "0 held"),
        ([buy(0, "100", "1"), sell(1, "100", "2")], "selling 2"),
        ([buy(5, "100", "1")], "outside"),
        ([buy(0, "100", "1", symbol="ETHUSDT")], "no candles"),
        ([buy(0, "100", "0")], "quantity > 0"),
    ],
)
def test_impossible_books_are_refused(fills, message) -> None:
    with pytest.raises(ValueError, match=message):
        run(fills, ["100"] * 5)


def test_bad_periods_and_balances_are_refused() -> None:
    with pytest.raises(ValueError, match="no whole minute"):
        run([], ["100"], minutes=0)
    with pytest.raises(ValueError, match="positive"):
        run([], ["100"], opening=D(0))
    with pytest.raises(ValueError, match="ascending"):
        CandleSeries(np.array([2, 1]), np.array([1.0, 1.0]))


def test_to_json_is_json_with_exact_decimals() -> None:
    perf = run(TWO_TRIPS, TEN_CLOSES)
    out = json.loads(json.dumps(perf.to_json(curve_points=5)))

    assert out["net_pnl"] == "-0.62"
    assert out["final_equity"] == "999.38"
    assert out["fees"] == "0.62"
    assert out["trade_count"] == 2
    assert out["closed_trade_count"] == 2
    assert out["win_rate"] == 0.5
    assert out["profit_factor"] == round(9.79 / 10.41, 4)
    assert out["trades"][1]["net_pnl"] == "-10.41"
    assert out["trades"][0]["exit_price"] == "110"
    assert len(out["equity_curve"]["times_ms"]) <= 5
    assert "equity_curve" not in perf.to_json(curve_points=None)


# Properties ----------------------------------------------------------------------------------------

prices = st.builds(lambda cents: D(cents).scaleb(-2), st.integers(1, 10**7))  # to 100,000.00
quantities = st.builds(lambda units: D(units).scaleb(-8), st.integers(1, 10**8))  # to 1
fees = st.builds(lambda units: D(units).scaleb(-8), st.integers(0, 10**6))


@settings(max_examples=200, deadline=None)
@given(data=st.data(), minutes=st.integers(1, 3 * 24 * 60), steps=st.integers(0, 25))
def test_net_pnl_is_exactly_final_equity_less_the_opening_balance(
    data: st.DataObject, minutes: int, steps: int
) -> None:
    closes = [data.draw(prices) for _ in range(min(minutes, 50))]
    candle_minutes = sorted(data.draw(st.sets(st.integers(0, minutes - 1), min_size=1, max_size=len(closes))))
    candles = CandleSeries(
        np.array([at(m) for m in candle_minutes], dtype=np.int64),
        np.array([float(c) for c in closes[: len(candle_minutes)]]),
    )
    opening = data.draw(st.builds(lambda cents: D(cents).scaleb(-2), st.integers(1, 10**9)))
    fills: list[TradeFill] = []
    held, cash = D(0), opening
    for minute in sorted(data.draw(st.integers(0, minutes - 1)) for _ in range(steps)):
        price, fee = data.draw(prices), data.draw(fees)
        if held and data.draw(st.booleans()):
            quantity = held if data.draw(st.booleans()) else min(held, data.draw(quantities))
            fills.append(TradeFill(SYMBOL, Side.SELL, at(minute), price, quantity, fee))
            held, cash = held - quantity, cash + price * quantity - fee
            continue
        quantity = data.draw(quantities)
        if price * quantity + fee > cash:  # spot: a buy needs the cash
            continue
        fills.append(TradeFill(SYMBOL, Side.BUY, at(minute), price, quantity, fee))
        held, cash = held + quantity, cash - price * quantity - fee

    perf = compute(fills, candles={SYMBOL: candles}, opening_balance=opening, start_ms=T0, end_ms=at(minutes))

    assert perf.net_pnl == perf.final_equity - opening
    assert perf.net_pnl == perf.gross_pnl - perf.fees
    assert perf.fees == sum((f.fee for f in fills), D(0))
    assert perf.net_pnl == sum((t.net_pnl for t in perf.trades), D(0))
    assert sum(t.is_open for t in perf.trades) == (1 if held else 0)
    assert float(perf.final_equity) == pytest.approx(perf.equity_curve.equity[-1], rel=1e-9, abs=1e-6)
    assert perf.max_drawdown_pct >= 0
    assert 0 <= perf.exposure_pct <= 100
    assert len(perf.equity_curve) == minutes


@settings(max_examples=200, deadline=None)
@given(
    equity=st.lists(st.floats(1, 1e6), min_size=1, max_size=400).map(np.array),
    max_points=st.integers(5, 60),
)
def test_the_downsampler_keeps_the_extremes_within_its_budget(equity: np.ndarray, max_points: int) -> None:
    curve = curve_of(equity)
    small = curve.downsampled(max_points)

    assert len(small) <= max_points
    assert np.all(np.diff(small.times_ms) > 0)
    assert set(small.times_ms.tolist()) <= set(curve.times_ms.tolist())
    assert small.equity.min() == equity.min()
    assert small.equity.max() == equity.max()
    assert small.drawdown_pct.min() == curve.drawdown_pct.min()
    assert (small.times_ms[0], small.times_ms[-1]) == (curve.times_ms[0], curve.times_ms[-1])


@given(
    st.one_of(
        st.decimals(allow_nan=False, allow_infinity=False),
        st.decimals(places=20, min_value=-1, max_value=1),
    )
)
def test_exact_text_is_format_f(value: Decimal) -> None:
    assert exact_text(value) == format(value, "f")
