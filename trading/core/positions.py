"""Position accounting for a long-only spot book, in exact decimals.

The book keeps the cost of what it holds (the sum of the buys' notionals still held), not an
average price: the average is derived (cost / quantity, shown to 18 decimals). A sell realizes
its proceeds minus the share of the cost it takes away; the sell that closes a position takes
all the remaining cost, so over a position's life realized PnL is exactly proceeds - cost, with
no rounding left over. Fees are kept apart (`fees`, in the quote asset) and subtracted in
`net_realized`, so gross PnL stays comparable with the exchange's trade prices. Selling more
than is held is refused: spot cannot go short. Arithmetic runs at 60 significant digits, so
large prices times small steps never overflow Decimal's default 28.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Context, Decimal, localcontext

from trading.core.types import ExecutedFill, Side

_ZERO = Decimal(0)
# Derived averages and the cost share of a partial sell keep 18 decimals: enough for any quote,
# and bounded so a long life of small fills does not grow the numbers without end.
_QUANTUM = Decimal("1e-18")
_WIDE = Context(prec=60)


@dataclass(frozen=True)
class PositionState:
    quantity: Decimal = _ZERO
    cost: Decimal = _ZERO  # what the quantity held cost (buy notionals, fees apart)
    realized_pnl: Decimal = _ZERO  # gross of fees
    fees: Decimal = _ZERO

    @property
    def average_price(self) -> Decimal:
        if not self.quantity:
            return _ZERO
        with localcontext(_WIDE):
            return (self.cost / self.quantity).quantize(_QUANTUM).normalize()

    @property
    def is_flat(self) -> bool:
        return self.quantity == 0

    @property
    def net_realized(self) -> Decimal:
        return self.realized_pnl - self.fees

    def unrealized(self, mark_price: Decimal) -> Decimal:
        with localcontext(_WIDE):
            return mark_price * self.quantity - self.cost

    def value(self, mark_price: Decimal) -> Decimal:
        return self.quantity * mark_price


class PositionError(ValueError):
    pass


def apply_fill(state: PositionState, side: Side, fill: ExecutedFill, *, quote_asset: str) -> PositionState:
    """The position after `fill`. Fees charged in another asset than the quote (e.g. BNB) are
    not converted here; they are recorded on the fill and left out of `fees`."""
    fee = fill.fee if fill.fee_asset == quote_asset else _ZERO
    # The wide context's own methods: what `with localcontext(_WIDE)` computes, without entering
    # a context for each fill (a year's backtest applies 25,000).
    wide = _WIDE
    if side is Side.BUY:
        return PositionState(
            quantity=wide.add(state.quantity, fill.quantity),
            cost=wide.add(state.cost, wide.multiply(fill.quantity, fill.price)),
            realized_pnl=state.realized_pnl,
            fees=wide.add(state.fees, fee),
        )
    if fill.quantity > state.quantity:
        raise PositionError(f"sell of {fill.quantity} exceeds the position of {state.quantity}")
    quantity = wide.subtract(state.quantity, fill.quantity)
    taken = (
        state.cost
        if not quantity
        else wide.quantize(wide.divide(wide.multiply(state.cost, fill.quantity), state.quantity), _QUANTUM)
    )
    proceeds = wide.multiply(fill.price, fill.quantity)
    return PositionState(
        quantity=quantity,
        cost=wide.subtract(state.cost, taken),
        realized_pnl=wide.subtract(wide.add(state.realized_pnl, proceeds), taken),
        fees=wide.add(state.fees, fee),
    )
