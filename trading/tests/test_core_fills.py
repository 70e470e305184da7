"""The fill model (`trading.core.fills`): fees rounded up to 8 decimals, slippage against us and
on the tick, orders matched on the candles after their placement (market at the open; limit at
the open when it opens through the price, else at the price when the range reaches it), and fill
ids that are the same every time."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trading.core.fills import FillModel
from trading.core.types import ExecutedFill, OrderIntent, OrderType, Side

PROPERTY = settings(max_examples=300, deadline=None)
EIGHT_DP = Decimal("1e-8")
MODEL = FillModel(taker_fee_bps=Decimal(10), maker_fee_bps=Decimal(2), slippage_bps=Decimal(5))
TICK = Decimal("0.01")


def scaled(mantissa: int, exponent: int) -> Decimal:
    return Decimal(mantissa).scaleb(exponent)


ticks = st.builds(scaled, st.sampled_from([1, 1, 2, 5]), st.integers(-8, 0))
bps = st.builds(scaled, st.integers(0, 100_000), st.just(-2))  # 0 .. 1000 bps, two decimals


def market(side: Side, quantity: str = "0.5", reference: str = "100", cid: str = "oas-1") -> OrderIntent:
    return OrderIntent(cid, "BTCUSDT", side, OrderType.MARKET, Decimal(quantity), Decimal(reference))


def limit(side: Side, price: str, quantity: str = "0.5", reference: str = "100") -> OrderIntent:
    return OrderIntent(
        "oas-1", "BTCUSDT", side, OrderType.LIMIT, Decimal(quantity), Decimal(reference), Decimal(price)
    )


def submitted(intent: OrderIntent, model: FillModel = MODEL) -> ExecutedFill | None:
    """Matched on a flat candle opening at the intent's reference price."""
    price = intent.reference_price
    return model.on_candle(
        intent, open_price=price, high=price, low=price, open_ms=1_000, tick=TICK, quote_asset="USDT"
    )


# Fees -------------------------------------------------------------------------------------------


def test_fee_rounds_up_to_eight_decimals() -> None:
    assert MODEL.fee(Decimal("123.456789"), maker=False) == Decimal("0.12345679")  # 0.123456789
    assert MODEL.fee(Decimal("100"), maker=False) == Decimal("0.1")
    assert MODEL.fee(Decimal("0.00000001"), maker=False) == Decimal("0.00000001")  # 1e-11, up
    assert MODEL.fee(Decimal("100"), maker=True) == Decimal("0.02")
    assert FillModel(taker_fee_bps=Decimal(0)).fee(Decimal("123.45"), maker=False) == 0


@PROPERTY
@given(
    notional=st.builds(scaled, st.integers(0, 10**14), st.integers(-10, -2)),
    rate=bps,
    maker=st.booleans(),
)
def test_fee_is_the_smallest_eight_decimal_amount_not_below_the_exact_fee(
    notional: Decimal, rate: Decimal, maker: bool
) -> None:
    model = FillModel(taker_fee_bps=rate, maker_fee_bps=rate)
    exact = notional * rate / 10_000
    fee = model.fee(notional, maker=maker)
    assert fee.as_tuple().exponent == -8
    assert exact <= fee < exact + EIGHT_DP


# Slippage ---------------------------------------------------------------------------------------


def test_slippage_moves_the_price_against_us_and_rounds_to_the_tick_against_us() -> None:
    # 100 x 1.0005 = 100.05 exactly; 100 x 0.9995 = 99.95 exactly.
    assert MODEL.slipped_price(Side.BUY, Decimal(100), TICK) == Decimal("100.05")
    assert MODEL.slipped_price(Side.SELL, Decimal(100), TICK) == Decimal("99.95")
    # 123.45 x 1.0005 = 123.511725 -> up to 123.52; x 0.9995 = 123.388275 -> down to 123.38.
    assert MODEL.slipped_price(Side.BUY, Decimal("123.45"), TICK) == Decimal("123.52")
    assert MODEL.slipped_price(Side.SELL, Decimal("123.45"), TICK) == Decimal("123.38")


def test_a_sell_never_slips_below_one_tick() -> None:
    model = FillModel(slippage_bps=Decimal(1000))
    assert model.slipped_price(Side.SELL, Decimal("0.01"), TICK) == Decimal("0.01")


@PROPERTY
@given(tick=ticks, ticks_in_reference=st.integers(1, 10**9), slippage=bps, side=st.sampled_from(list(Side)))
def test_slipped_price_is_on_the_tick_and_never_in_our_favour(
    tick: Decimal, ticks_in_reference: int, slippage: Decimal, side: Side
) -> None:
    reference = tick * ticks_in_reference
    price = FillModel(slippage_bps=slippage).slipped_price(side, reference, tick)
    assert price % tick == 0
    moved = reference * (10_000 + (slippage if side is Side.BUY else -slippage)) / 10_000
    if side is Side.BUY:
        assert price >= reference
        assert moved <= price < moved + tick
    else:
        assert tick <= price <= reference
        assert price <= moved or price == tick
        assert price > moved - tick


@PROPERTY
@given(
    side=st.sampled_from(list(Side)),
    quantity=st.builds(scaled, st.integers(1, 10**8), st.just(-5)),
    cents=st.integers(1, 10**8),
)
def test_market_order_fills_whole_at_the_slipped_price_as_taker(
    side: Side, quantity: Decimal, cents: int
) -> None:
    reference = scaled(cents, -2)
    intent = OrderIntent("oas-x", "BTCUSDT", side, OrderType.MARKET, quantity, reference)
    high, low = reference * 2, reference / 2  # the range does not matter: the open does
    fill = MODEL.on_candle(
        intent, open_price=reference, high=high, low=low, open_ms=42, tick=TICK, quote_asset="USDT"
    )
    assert fill is not None
    assert fill.quantity == quantity
    assert fill.price == MODEL.slipped_price(side, reference, TICK)
    assert fill.fee == MODEL.fee(fill.price * quantity, maker=False)
    assert (fill.fee_asset, fill.time_ms, fill.is_maker) == ("USDT", 42, False)


# Limit orders -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "price", "expected"),
    [
        # A buy at or above the reference crosses: it pays the slipped price, capped at its limit.
        (Side.BUY, "100", "100"),
        (Side.BUY, "100.02", "100.02"),
        (Side.BUY, "101", "100.05"),
        # A sell at or below the reference crosses: it gets the slipped price, but not below its limit.
        (Side.SELL, "100", "100"),
        (Side.SELL, "99.98", "99.98"),
        (Side.SELL, "99", "99.95"),
    ],
)
def test_crossing_limit_fills_at_once_never_beyond_its_price(side: Side, price: str, expected: str) -> None:
    fill = submitted(limit(side, price))
    assert fill is not None
    assert fill.price == Decimal(expected)
    assert fill.quantity == Decimal("0.5")
    assert not fill.is_maker
    assert fill.fee == MODEL.fee(fill.price * fill.quantity, maker=False)


@pytest.mark.parametrize(("side", "price"), [(Side.BUY, "99.99"), (Side.SELL, "100.01")])
def test_limit_that_does_not_cross_rests(side: Side, price: str) -> None:
    assert submitted(limit(side, price)) is None


@pytest.mark.parametrize(
    ("side", "low", "high", "hit"),
    [
        (Side.BUY, "98.9", "99.5", True),
        (Side.BUY, "99", "99.5", True),  # touching the price is enough
        (Side.BUY, "99.01", "101", False),
        (Side.SELL, "100", "101.1", True),
        (Side.SELL, "100", "101", True),
        (Side.SELL, "98", "100.99", False),
    ],
)
def test_resting_limit_fills_on_a_candle_that_reaches_it(side: Side, low: str, high: str, hit: bool) -> None:
    price = "99" if side is Side.BUY else "101"
    intent = limit(side, price)
    fill = MODEL.on_candle(
        intent,
        open_price=Decimal(100),
        high=Decimal(high),
        low=Decimal(low),
        open_ms=60_001,
        tick=TICK,
        quote_asset="USDT",
    )
    if not hit:
        assert fill is None
        return
    assert fill == ExecutedFill(
        trade_id="oas-1-1",
        price=Decimal(price),
        quantity=Decimal("0.5"),
        fee=MODEL.fee(Decimal(price) * Decimal("0.5"), maker=True),
        fee_asset="USDT",
        time_ms=120_000,
        is_maker=True,
    )


def test_a_limit_that_opens_through_its_price_fills_at_the_open() -> None:
    # A buy at 99 on a candle that gaps down to open at 98: it gets 98 slipped (98.05), a taker.
    fill = MODEL.on_candle(
        limit(Side.BUY, "99"),
        open_price=Decimal(98),
        high=Decimal(98),
        low=Decimal(97),
        open_ms=0,
        tick=TICK,
        quote_asset="USDT",
    )
    assert fill is not None
    assert (fill.price, fill.is_maker, fill.time_ms) == (Decimal("98.05"), False, 0)


def test_a_limit_without_a_price_is_refused() -> None:
    intent = OrderIntent("oas-1", "BTCUSDT", Side.BUY, OrderType.LIMIT, Decimal(1), Decimal(100))
    with pytest.raises(ValueError, match="needs a price"):
        MODEL.on_candle(
            intent,
            open_price=Decimal(1),
            high=Decimal(2),
            low=Decimal(1),
            open_ms=0,
            tick=TICK,
            quote_asset="USDT",
        )


# Identity ---------------------------------------------------------------------------------------


def test_trade_ids_are_derived_from_the_client_order_id() -> None:
    first = submitted(market(Side.BUY, cid="oas-abc"))
    again = submitted(market(Side.BUY, cid="oas-abc"))
    other = submitted(market(Side.BUY, cid="oas-abd"))
    assert first is not None
    assert again is not None
    assert other is not None
    assert first == again
    assert first.trade_id == "oas-abc-1"
    assert other.trade_id != first.trade_id


# Validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["taker_fee_bps", "maker_fee_bps", "slippage_bps"])
@pytest.mark.parametrize(
    "value", [Decimal(-1), Decimal("1000.01"), Decimal("NaN"), Decimal("Infinity"), 10.0, 10, "10"]
)
def test_fill_model_refuses_bad_rates(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        FillModel(**{field: value})


@pytest.mark.parametrize("value", [Decimal(0), Decimal("0.5"), Decimal(1000)])
def test_fill_model_takes_rates_from_zero_to_a_thousand_bps(value: Decimal) -> None:
    model = FillModel(taker_fee_bps=value, maker_fee_bps=value, slippage_bps=value)
    assert model.slippage_bps == value
