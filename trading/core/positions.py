"""Position accounting for a long-only spot book, in exact decimals.

A buy adds to the position at its price (the average price is the quantity-weighted mean of the
buys still held); a sell realizes (sell price - average price) x quantity. Fees are kept apart
(`fees`, in the quote asset) and subtracted in `net_realized`, so gross PnL stays comparable with
the exchange's trade prices. Selling more than is held is refused: spot cannot go short."""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal

from trading.core.types import ExecutedFill, Side

_ZERO = Decimal(0)
# Average prices keep 18 decimals: enough for any quote, and bounded so a long life of small
# fills does not grow the numbers without end.
_AVERAGE_QUANTUM = Decimal("1e-18")


@dataclass(frozen=True)
class PositionState:
    quantity: Decimal = _ZERO
    average_price: Decimal = _ZERO
    realized_pnl: Decimal = _ZERO  # gross of fees
    fees: Decimal = _ZERO

    @property
    def is_flat(self) -> bool:
        return self.quantity == 0

    @property
    def net_realized(self) -> Decimal:
        return self.realized_pnl - self.fees

    @property
    def cost(self) -> Decimal:
        return self.quantity * self.average_price

    def unrealized(self, mark_price: Decimal) -> Decimal:
        return (mark_price - self.average_price) * self.quantity

    def value(self, mark_price: Decimal) -> Decimal:
        return self.quantity * mark_price


class PositionError(ValueError):
    pass


def apply_fill(state: PositionState, side: Side, fill: ExecutedFill, *, quote_asset: str) -> PositionState:
    """The position after `fill`. Fees charged in another asset than the quote (e.g. BNB) are
    not converted here; they are recorded on the fill and left out of `fees`."""
    fee = fill.fee if fill.fee_asset == quote_asset else _ZERO
    if side is Side.BUY:
        quantity = state.quantity + fill.quantity
        average = ((state.cost + fill.quantity * fill.price) / quantity).quantize(_AVERAGE_QUANTUM)
        return replace(state, quantity=quantity, average_price=average, fees=state.fees + fee)
    if fill.quantity > state.quantity:
        raise PositionError(f"sell of {fill.quantity} exceeds the position of {state.quantity}")
    quantity = state.quantity - fill.quantity
    realized = state.realized_pnl + (fill.price - state.average_price) * fill.quantity
    return PositionState(
        quantity=quantity,
        average_price=state.average_price if quantity else _ZERO,
        realized_pnl=realized,
        fees=state.fees + fee,
    )
