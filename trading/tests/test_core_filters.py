"""Symbol filters (`trading.core.filters`), held against the exchange's own statement of its
checks (`violations`): what passes `conform` is accepted by the exchange, what was already valid
passes unchanged, and every refusal is named. Random filters, prices and quantities are built
from integers and powers of ten, never from floats."""

from __future__ import annotations

from dataclasses import replace
from decimal import ROUND_CEILING, Decimal

import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from trading.core.filters import (
    ABOVE_MAX_NOTIONAL,
    ABOVE_MAX_QTY,
    BAD_INTENT,
    BELOW_MIN_NOTIONAL,
    BELOW_MIN_QTY,
    PRICE_OUT_OF_RANGE,
    QUANTITY_ZERO,
    conform,
    on_grid,
    round_to_step,
    violations,
)
from trading.core.types import OrderIntent, OrderType, Refusal, Side, SymbolFilters

REASONS = {
    QUANTITY_ZERO,
    BELOW_MIN_QTY,
    ABOVE_MAX_QTY,
    PRICE_OUT_OF_RANGE,
    BELOW_MIN_NOTIONAL,
    ABOVE_MAX_NOTIONAL,
    BAD_INTENT,
}
PROPERTY = settings(max_examples=400, deadline=None)


def scaled(mantissa: int, exponent: int) -> Decimal:
    """mantissa x 10^exponent, exactly."""
    return Decimal(mantissa).scaleb(exponent)


# A grid increment as exchanges set them: a power of ten from 1e-8 to 1, sometimes 2x or 5x one.
increments = st.builds(scaled, st.sampled_from([1, 1, 1, 2, 5]), st.integers(-8, 0))


@st.composite
def symbol_filters(draw: st.DrawFn) -> SymbolFilters:
    tick = draw(increments)
    step = draw(increments)
    min_qty = step * draw(st.sampled_from([0, 1, 1, 1, 2, 10, 100]))
    max_qty = draw(st.none() | st.integers(1, 10**9).map(lambda n: min_qty + step * n))
    min_price = tick * draw(st.sampled_from([0, 1, 1, 5]))
    max_price = draw(st.none() | st.integers(1, 10**10).map(lambda n: min_price + tick * n))
    min_notional = scaled(draw(st.integers(0, 10_000)), -2)  # 0 .. 100 quote
    max_notional = draw(st.none() | st.integers(1, 10**9).map(lambda n: min_notional + Decimal(n)))
    return SymbolFilters(
        tick_size=tick,
        step_size=step,
        min_qty=min_qty,
        max_qty=max_qty,
        min_notional=min_notional,
        min_price=min_price,
        max_price=max_price,
        max_notional=max_notional,
    )


# Prices from 1e-8 to ~1e6 and quantities from 1e-8 to ~1e7, with up to 8 and 10 decimals.
prices = st.builds(scaled, st.integers(1, 10**9), st.integers(-8, -3))
quantities = st.builds(scaled, st.integers(1, 10**10), st.integers(-10, -3))
sides = st.sampled_from(list(Side))


@st.composite
def intents(draw: st.DrawFn) -> OrderIntent:
    side = draw(sides)
    reference = draw(prices)
    if draw(st.booleans()):
        return OrderIntent("cid", "SYMUSDT", side, OrderType.MARKET, draw(quantities), reference)
    # Limit prices near the reference (a typical entry) or anywhere.
    price = draw(prices | st.integers(-500, 500).map(lambda bps: reference * (10_000 + bps) / 10_000))
    return OrderIntent("cid", "SYMUSDT", side, OrderType.LIMIT, draw(quantities), reference, price)


def refused(result: OrderIntent | Refusal) -> Refusal:
    assert isinstance(result, Refusal), f"expected a refusal, got {result}"
    return result


def accepted(result: OrderIntent | Refusal) -> OrderIntent:
    assert isinstance(result, OrderIntent), f"expected an intent, got {result}"
    return result


@st.composite
def valid_intents(draw: st.DrawFn, filters: SymbolFilters) -> OrderIntent:
    """An intent on both grids, inside every range: built to pass, then checked by `violations`."""
    ticks = 10**9
    if filters.max_price is not None:
        ticks = min(ticks, int((filters.max_price - filters.min_price) / filters.tick_size))
    price = filters.min_price + filters.tick_size * draw(st.integers(0, ticks))
    assume(price > 0)
    order_type = draw(st.sampled_from(list(OrderType)))
    # A market order is valued at its reference price, a limit order at its own.
    reference = draw(prices) if order_type is OrderType.LIMIT else price
    # From the fewest steps above min_qty that reach min_notional at this price to the most that
    # stay under max_qty and max_notional.
    shortfall = filters.min_notional / price - filters.min_qty
    least = max(0, int((shortfall / filters.step_size).to_integral_value(rounding=ROUND_CEILING)))
    most = least + 10**6
    for ceiling in (filters.max_qty, None if filters.max_notional is None else filters.max_notional / price):
        if ceiling is not None:
            most = min(most, int((ceiling - filters.min_qty) / filters.step_size))
    assume(least <= most)
    quantity = filters.min_qty + filters.step_size * draw(st.integers(least, most))
    assume(quantity > 0)
    intent = OrderIntent(
        "cid",
        "SYMUSDT",
        side=draw(sides),
        type=order_type,
        quantity=quantity,
        reference_price=reference,
        price=price if order_type is OrderType.LIMIT else None,
    )
    assume(violations(intent, filters) == [])
    return intent


@st.composite
def near_valid_intents(draw: st.DrawFn, filters: SymbolFilters) -> OrderIntent:
    """A valid intent pushed off its grids by less than a step and a tick (either way), so that
    conform has rounding to do and usually something to accept."""
    intent = draw(valid_intents(filters))
    fraction = st.builds(scaled, st.integers(0, 10**6 - 1), st.just(-6))
    quantity = intent.quantity + filters.step_size * draw(fraction)
    price = intent.price
    if price is not None:
        price = price + filters.tick_size * draw(fraction) * draw(st.sampled_from([1, -1]))
        assume(price > 0)
    return replace(intent, quantity=quantity, price=price)


def any_intents(filters: SymbolFilters) -> st.SearchStrategy[OrderIntent]:
    return intents() | near_valid_intents(filters)


# Property 1: what passes conform passes the exchange, and is never more than was asked for --------


@PROPERTY
@given(data=st.data(), filters=symbol_filters())
def test_conformed_intent_has_no_violations(data: st.DataObject, filters: SymbolFilters) -> None:
    intent = data.draw(any_intents(filters))
    result = conform(intent, filters)
    event("accepted" if isinstance(result, OrderIntent) else "refused")
    assume(isinstance(result, OrderIntent))
    assert isinstance(result, OrderIntent)
    assert violations(result, filters) == []
    assert 0 < result.quantity <= intent.quantity
    # Rounded down to the step, not further: the next step up would be more than was asked for.
    assert intent.quantity - result.quantity < filters.step_size
    assert (result.side, result.type, result.reference_price, result.client_order_id) == (
        intent.side,
        intent.type,
        intent.reference_price,
        intent.client_order_id,
    )
    if intent.price is None:
        assert result.price is None
    else:
        assert result.price is not None
        assert abs(result.price - intent.price) < filters.tick_size
        if intent.side is Side.BUY:
            assert result.price <= intent.price
        else:
            assert result.price >= intent.price


@PROPERTY
@given(data=st.data(), filters=symbol_filters())
def test_conform_never_gives_a_violating_order(data: st.DataObject, filters: SymbolFilters) -> None:
    """The same property without `assume`: whatever comes back is either a named refusal or an
    order the exchange accepts (guards against the property above being vacuous)."""
    intent = data.draw(any_intents(filters))
    result = conform(intent, filters)
    if isinstance(result, Refusal):
        assert result.reason in REASONS
    else:
        assert violations(result, filters) == []


# Property 2: no valid intent is refused, and a valid one comes back as it was --------------------


@PROPERTY
@given(data=st.data(), filters=symbol_filters())
def test_valid_intent_is_never_refused_and_comes_back_unchanged(
    data: st.DataObject, filters: SymbolFilters
) -> None:
    intent = data.draw(valid_intents(filters))
    assert conform(intent, filters) == intent


# Property 3: every refusal is named, and its detail names the value ---------------------------------


@PROPERTY
@given(data=st.data(), filters=symbol_filters())
def test_refusal_is_named_and_names_the_value(data: st.DataObject, filters: SymbolFilters) -> None:
    intent = data.draw(any_intents(filters))
    result = conform(intent, filters)
    assume(isinstance(result, Refusal))
    assert isinstance(result, Refusal)
    event(result.reason)
    assert result.reason in REASONS
    expected: dict[str, list[object]] = {
        QUANTITY_ZERO: [intent.quantity, filters.step_size],
        BELOW_MIN_QTY: [intent.quantity, filters.min_qty],
        ABOVE_MAX_QTY: [filters.max_qty],
        PRICE_OUT_OF_RANGE: [intent.price, filters.min_price],
        BELOW_MIN_NOTIONAL: [filters.min_notional],
        ABOVE_MAX_NOTIONAL: [filters.max_notional],
    }
    for value in expected[result.reason]:
        assert str(value) in result.detail, (result, value)


# Refusals by example ----------------------------------------------------------------------------

FILTERS = SymbolFilters(
    tick_size=Decimal("0.01"),
    step_size=Decimal("0.001"),
    min_qty=Decimal("0.001"),
    max_qty=Decimal("100"),
    min_notional=Decimal("5"),
    min_price=Decimal("0.01"),
    max_price=Decimal("1000000"),
    max_notional=Decimal("1000000"),
)


FINE_LOTS = replace(FILTERS, step_size=Decimal("0.0001"), min_qty=Decimal("0.0001"))


def market(quantity: str, side: Side = Side.BUY, reference: str = "50000") -> OrderIntent:
    return OrderIntent("cid", "BTCUSDT", side, OrderType.MARKET, Decimal(quantity), Decimal(reference))


def limit(quantity: str, price: str | None, side: Side = Side.BUY, reference: str = "50000") -> OrderIntent:
    return OrderIntent(
        "cid",
        "BTCUSDT",
        side,
        OrderType.LIMIT,
        Decimal(quantity),
        Decimal(reference),
        Decimal(price) if price is not None else None,
    )


def test_rounds_quantity_down_and_prices_in_our_favour() -> None:
    buy = accepted(conform(limit("0.12345", "50000.129"), FILTERS))
    assert (buy.quantity, buy.price) == (Decimal("0.123"), Decimal("50000.12"))
    sell = accepted(conform(limit("0.12345", "50000.121", Side.SELL), FILTERS))
    assert (sell.quantity, sell.price) == (Decimal("0.123"), Decimal("50000.13"))
    assert accepted(conform(market("0.0019999"), FILTERS)).quantity == Decimal("0.001")


def test_quantity_grid_counts_from_min_qty() -> None:
    """The exchange checks (qty - min_qty) % step == 0, so an odd minimum shifts the grid."""
    odd = SymbolFilters(
        tick_size=Decimal("0.01"),
        step_size=Decimal("0.01"),
        min_qty=Decimal("0.015"),
        max_qty=None,
        min_notional=Decimal(0),
    )
    result = accepted(conform(market("0.0399", reference="1"), odd))
    assert result.quantity == Decimal("0.035")
    assert violations(result, odd) == []


def test_quantity_rounding_to_zero() -> None:
    no_min = SymbolFilters(
        tick_size=Decimal("0.01"),
        step_size=Decimal("0.001"),
        min_qty=Decimal(0),
        max_qty=None,
        min_notional=Decimal(0),
    )
    refusal = refused(conform(market("0.0009"), no_min))
    assert refusal.reason == QUANTITY_ZERO
    assert "0.0009" in refusal.detail
    assert "0.001" in refusal.detail


def test_below_min_qty() -> None:
    filters = SymbolFilters(
        tick_size=Decimal("0.01"),
        step_size=Decimal("0.001"),
        min_qty=Decimal("0.01"),
        max_qty=None,
        min_notional=Decimal(0),
    )
    refusal = refused(conform(market("0.0095"), filters))
    assert refusal.reason == BELOW_MIN_QTY
    assert "0.0095" in refusal.detail
    assert "0.01" in refusal.detail


def test_above_max_qty() -> None:
    refusal = refused(conform(market("100.001", reference="1"), FILTERS))
    assert refusal.reason == ABOVE_MAX_QTY
    assert "100.001" in refusal.detail
    assert accepted(conform(market("100", reference="1"), FILTERS)).quantity == Decimal(100)


@pytest.mark.parametrize(
    ("price", "side"),
    [
        ("0.001", Side.BUY),  # rounds down to 0, below min_price
        ("0.009", Side.BUY),  # rounds down to 0.00, below min_price
        ("1000000.01", Side.BUY),  # above max_price
        ("1000000.001", Side.SELL),  # a sell rounds up, past max_price
    ],
)
def test_price_out_of_range(price: str, side: Side) -> None:
    refusal = refused(conform(limit("1", price, side, reference="1"), FILTERS))
    assert refusal.reason == PRICE_OUT_OF_RANGE
    assert price in refusal.detail


def test_price_that_rounds_to_zero_is_out_of_range_even_without_a_min_price() -> None:
    filters = SymbolFilters(
        tick_size=Decimal("0.01"),
        step_size=Decimal("1"),
        min_qty=Decimal(1),
        max_qty=None,
        min_notional=Decimal(0),
    )
    assert refused(conform(limit("1", "0.004"), filters)).reason == PRICE_OUT_OF_RANGE


def test_below_min_notional_uses_the_rounded_values() -> None:
    # 0.0001999 rounds to 0.0001 (not 0.0002); 0.0001 x 49999.99 = 4.999999 < 5.
    refusal = refused(conform(limit("0.0001999", "49999.999"), FINE_LOTS))
    assert refusal.reason == BELOW_MIN_NOTIONAL
    assert "4.999999" in refusal.detail
    assert "5" in refusal.detail
    # A market order is valued at its reference price.
    refusal = refused(conform(market("0.001", reference="4999.99"), FILTERS))
    assert refusal.reason == BELOW_MIN_NOTIONAL
    assert "4.99999" in refusal.detail
    assert accepted(conform(market("0.001", reference="5000"), FILTERS)).quantity == Decimal("0.001")


def test_above_max_notional() -> None:
    refusal = refused(conform(limit("100", "10000.01"), FILTERS))
    assert refusal.reason == ABOVE_MAX_NOTIONAL
    assert "1000001" in refusal.detail
    assert "1000000" in refusal.detail


@pytest.mark.parametrize(
    ("intent", "named"),
    [
        (market("0"), "0"),
        (market("-1"), "-1"),
        (market("NaN"), "NaN"),
        (market("Infinity"), "Infinity"),
        (market("1", reference="0"), "0"),
        (market("1", reference="-5"), "-5"),
        (limit("1", None), "price"),
        (limit("1", "NaN"), "price"),
        (OrderIntent("c", "S", Side.BUY, OrderType.MARKET, Decimal(1), Decimal(1), Decimal(1)), "no price"),
    ],
)
def test_invalid_intent(intent: OrderIntent, named: str) -> None:
    refusal = refused(conform(intent, FILTERS))
    assert refusal.reason == BAD_INTENT
    assert named in refusal.detail


def test_the_refusal_codes_are_stable() -> None:
    """They label metrics and are stored on order rows: renaming one is a migration."""
    assert sorted(REASONS) == [
        "above_max_notional",
        "above_max_qty",
        "below_min_notional",
        "below_min_qty",
        "invalid_intent",
        "price_out_of_range",
        "quantity_rounds_to_zero",
    ]


# violations, the exchange's side, by example ------------------------------------------------------


def test_violations_names_each_broken_filter() -> None:
    assert violations(limit("0.001", "5000"), FILTERS) == []
    assert violations(limit("0.0015", "5000.005"), FILTERS) == ["LOT_SIZE step", "PRICE_FILTER tick"]
    assert violations(limit("200", "0"), FILTERS) == ["LOT_SIZE range", "PRICE_FILTER range", "NOTIONAL min"]
    assert violations(limit("0.001", "10"), FILTERS) == ["NOTIONAL min"]
    assert violations(limit("100", "100000"), FILTERS) == ["NOTIONAL max"]


def test_round_to_step_and_on_grid() -> None:
    one = Decimal("0.1")
    assert round_to_step(Decimal("1.25"), origin=Decimal(0), step=one) == Decimal("1.2")
    assert round_to_step(Decimal("1.25"), origin=Decimal(0), step=one, up=True) == Decimal("1.3")
    assert round_to_step(Decimal("1.2"), origin=Decimal(0), step=one, up=True) == Decimal("1.2")
    assert round_to_step(Decimal("1.25"), origin=Decimal("0.05"), step=one) == Decimal("1.25")
    # A zero step sets no grid.
    assert round_to_step(Decimal("1.2345"), origin=Decimal(0), step=Decimal(0)) == Decimal("1.2345")
    assert on_grid(Decimal("1.2345"), origin=Decimal(0), step=Decimal(0))
    assert on_grid(Decimal("1.25"), origin=Decimal("0.05"), step=one)
    assert not on_grid(Decimal("1.25"), origin=Decimal(0), step=one)


def test_conform_keeps_every_field_of_the_intent_but_the_rounded_ones() -> None:
    from dataclasses import fields

    names = {field.name for field in fields(OrderIntent)}
    assert names == {"client_order_id", "symbol", "side", "type", "quantity", "reference_price", "price"}, (
        "conform builds OrderIntent field by field: add the new field there"
    )
