"""Long-only cost-basis accounting (`trading.core.positions`) in exact decimals: the quantity
never goes negative, realized PnL is the sum of (sell price - average at the time) x quantity,
and a book that sells everything it bought has realized what it sold for less what it paid."""

from __future__ import annotations

from decimal import Context, Decimal, localcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trading.core.positions import PositionError, PositionState, apply_fill
from trading.core.types import ExecutedFill, Side

PROPERTY = settings(max_examples=300, deadline=None)
QUOTE = "USDT"


def scaled(mantissa: int, exponent: int) -> Decimal:
    return Decimal(mantissa).scaleb(exponent)


def fill(
    quantity: Decimal | str, price: Decimal | str, fee: str = "0", fee_asset: str = QUOTE
) -> ExecutedFill:
    return ExecutedFill("t", Decimal(price), Decimal(quantity), Decimal(fee), fee_asset, 0)


# Prices to the cent up to 100,000; quantities to 1e-8 up to 100; fees to 1e-8.
prices = st.builds(scaled, st.integers(1, 10**7), st.just(-2))
quantities = st.builds(scaled, st.integers(1, 10**10), st.just(-8))
fees = st.builds(scaled, st.integers(0, 10**6), st.just(-8))


def sell_quantity(data: st.DataObject, held: Decimal) -> Decimal:
    """Anything from one unit of the last decimal to everything held (often all of it)."""
    units = int(held.scaleb(8))
    return scaled(data.draw(st.integers(1, units) | st.just(units)), -8)


# Properties -------------------------------------------------------------------------------------


@PROPERTY
@given(data=st.data(), steps=st.integers(1, 30))
def test_realized_pnl_is_the_sum_over_sells_of_price_less_average_at_the_time(
    data: st.DataObject, steps: int
) -> None:
    state = PositionState()
    realized = Decimal(0)
    total_fees = Decimal(0)
    for _ in range(steps):
        price = data.draw(prices)
        fee = data.draw(fees)
        if state.quantity == 0 or data.draw(st.booleans()):
            quantity = data.draw(quantities)
            after = apply_fill(state, Side.BUY, fill(quantity, price, str(fee)), quote_asset=QUOTE)
            assert after.quantity == state.quantity + quantity
            # The average lies between the old average and the new price.
            low, high = sorted([price, state.average_price if state.quantity else price])
            assert low <= after.average_price <= high
            assert after.realized_pnl == state.realized_pnl
        else:
            quantity = sell_quantity(data, state.quantity)
            with localcontext(Context(prec=60)):
                # The sell takes its share of the cost (all of it when it closes the position).
                taken = (
                    state.cost
                    if quantity == state.quantity
                    else (state.cost * quantity / state.quantity).quantize(Decimal("1e-18"))
                )
                realized += price * quantity - taken
            after = apply_fill(state, Side.SELL, fill(quantity, price, str(fee)), quote_asset=QUOTE)
            assert after.quantity == state.quantity - quantity
            assert after.cost == state.cost - taken
            if after.quantity:
                # The average stays put, but for the 18-decimal rounding of the cost share.
                drift = abs(after.average_price - state.average_price)
                assert drift <= Decimal("1e-18") * (2 + 1 / after.quantity)
            else:
                assert after.average_price == 0
        total_fees += fee
        state = after
        assert state.quantity >= 0
        assert state.realized_pnl == realized
        assert state.fees == total_fees
        assert state.net_realized == realized - total_fees


@PROPERTY
@given(data=st.data(), price=prices, buys=st.lists(quantities, min_size=1, max_size=8))
def test_selling_everything_realizes_proceeds_less_cost_exactly(
    data: st.DataObject, price: Decimal, buys: list[Decimal]
) -> None:
    """Buys at any prices and any sequence of sells that ends flat: realized is proceeds - cost
    to the last digit (the closing sell takes all the remaining cost)."""
    state = PositionState()
    cost = Decimal(0)
    for index, quantity in enumerate(buys):
        buy_price = price if index == 0 else data.draw(prices)
        state = apply_fill(state, Side.BUY, fill(quantity, buy_price), quote_asset=QUOTE)
        cost += quantity * buy_price
    proceeds = Decimal(0)
    while not state.is_flat:
        quantity = sell_quantity(data, state.quantity)
        sell_price = data.draw(prices)
        state = apply_fill(state, Side.SELL, fill(quantity, sell_price), quote_asset=QUOTE)
        proceeds += quantity * sell_price
    assert state == PositionState(realized_pnl=proceeds - cost)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), rounds=st.integers(1, 4))
def test_round_trips_realize_proceeds_less_cost(data: st.DataObject, rounds: int) -> None:
    """Buys at different prices, sells until flat, several times over. The average price is kept
    to 18 decimals (it is what the Position row stores), so where the true average does not end
    there (say 5/3) the identity holds to within what that rounding can move: at most
    1e-18 x the quantity held after each buy."""
    state = PositionState()
    cost = proceeds = Decimal(0)
    bound = Decimal(0)
    for _ in range(rounds):
        for quantity in data.draw(st.lists(quantities, min_size=1, max_size=5)):
            price = data.draw(prices)
            state = apply_fill(state, Side.BUY, fill(quantity, price), quote_asset=QUOTE)
            cost += quantity * price
            bound += state.quantity * Decimal("1e-18") + Decimal("1e-20")
        while not state.is_flat:
            quantity = sell_quantity(data, state.quantity)
            price = data.draw(prices)
            state = apply_fill(state, Side.SELL, fill(quantity, price), quote_asset=QUOTE)
            proceeds += quantity * price
        assert state.average_price == 0
    assert abs(state.realized_pnl - (proceeds - cost)) <= bound


# Examples ---------------------------------------------------------------------------------------


def _apply_in_a_context(state: PositionState, side: Side, done: ExecutedFill) -> PositionState:
    """`apply_fill` as first written, inside `localcontext`: the reference for its context
    methods (the fee is in the quote asset here)."""
    with localcontext(Context(prec=60)):
        if side is Side.BUY:
            return PositionState(
                state.quantity + done.quantity,
                state.cost + done.quantity * done.price,
                state.realized_pnl,
                state.fees + done.fee,
            )
        quantity = state.quantity - done.quantity
        taken = (
            state.cost
            if not quantity
            else (state.cost * done.quantity / state.quantity).quantize(Decimal("1e-18"))
        )
        return PositionState(
            quantity,
            state.cost - taken,
            state.realized_pnl + done.price * done.quantity - taken,
            state.fees + done.fee,
        )


@PROPERTY
@given(data=st.data(), steps=st.integers(1, 30))
def test_apply_fill_computes_what_a_wide_local_context_does(data: st.DataObject, steps: int) -> None:
    """Every field the same number with the same exponent (as its text shows)."""
    state = PositionState()
    for _ in range(steps):
        side = Side.SELL if state.quantity and data.draw(st.booleans()) else Side.BUY
        quantity = sell_quantity(data, state.quantity) if side is Side.SELL else data.draw(quantities)
        done = fill(quantity, data.draw(prices), str(data.draw(fees)))
        after = apply_fill(state, side, done, quote_asset=QUOTE)
        expected = _apply_in_a_context(state, side, done)
        assert [str(v) for v in vars(after).values()] == [str(v) for v in vars(expected).values()]
        state = after


def test_average_price_and_realized_pnl_by_example() -> None:
    state = apply_fill(PositionState(), Side.BUY, fill("1", "100", "0.1"), quote_asset=QUOTE)
    state = apply_fill(state, Side.BUY, fill("3", "200", "0.6"), quote_asset=QUOTE)
    assert (state.quantity, state.average_price, state.cost) == (Decimal(4), Decimal(175), Decimal(700))
    assert state.unrealized(Decimal(180)) == Decimal(20)
    assert state.value(Decimal(180)) == Decimal(720)
    state = apply_fill(state, Side.SELL, fill("1", "150", "0.15"), quote_asset=QUOTE)
    assert (state.quantity, state.average_price, state.realized_pnl) == (
        Decimal(3),
        Decimal(175),
        Decimal(-25),
    )
    state = apply_fill(state, Side.SELL, fill("3", "200"), quote_asset=QUOTE)
    assert state == PositionState(realized_pnl=Decimal(50), fees=Decimal("0.85"))
    assert state.is_flat
    assert state.net_realized == Decimal("49.15")


def test_average_of_a_repeating_fraction_is_kept_to_eighteen_decimals() -> None:
    state = apply_fill(PositionState(), Side.BUY, fill("1", "1"), quote_asset=QUOTE)
    state = apply_fill(state, Side.BUY, fill("2", "2"), quote_asset=QUOTE)
    assert state.average_price == Decimal("1.666666666666666667")


def test_selling_more_than_is_held_is_refused() -> None:
    state = apply_fill(PositionState(), Side.BUY, fill("1", "100"), quote_asset=QUOTE)
    with pytest.raises(PositionError, match="exceeds the position"):
        apply_fill(state, Side.SELL, fill("1.00000001", "100"), quote_asset=QUOTE)
    with pytest.raises(PositionError):
        apply_fill(PositionState(), Side.SELL, fill("0.1", "100"), quote_asset=QUOTE)


def test_fees_in_another_asset_are_left_out() -> None:
    state = apply_fill(PositionState(), Side.BUY, fill("1", "100", "0.001", "BNB"), quote_asset=QUOTE)
    state = apply_fill(state, Side.SELL, fill("1", "110", "0.001", "BNB"), quote_asset=QUOTE)
    assert state == PositionState(realized_pnl=Decimal(10))
    assert state.net_realized == Decimal(10)
