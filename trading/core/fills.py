"""The fill model: how an order we do not send to an exchange would have filled. Dry-run trading
and the backtester both use this one model, so their fills cannot diverge.

- A **market** order placed after a candle closed fills at that candle's close (the intent's
  `reference_price`), moved against us by `slippage_bps` (a buy pays more, a sell gets less) and
  rounded to the tick against us. It pays the taker fee.
- A **limit** order that crosses when placed (a buy at or above the reference price, a sell at or
  below) fills at once like a market order, but never beyond its limit price. Otherwise it rests
  and fills whole, at its limit price, with the first later closed 1m candle whose low (buy) or
  high (sell) reaches the price — the simulator's rule too. It pays the maker fee.
- Fees are in the quote asset: notional x fee_bps / 10,000, rounded up to 8 decimals.
Orders always fill whole: we trade far below the candles' volume, and a partial-fill model would
add behaviour nobody could check against the exchange.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from trading.core.filters import round_to_step
from trading.core.types import ExecutedFill, OrderIntent, OrderType, Side

_BPS = Decimal(10_000)
_FEE_QUANTUM = Decimal("0.00000001")


@dataclass(frozen=True)
class FillModel:
    taker_fee_bps: Decimal = Decimal(10)  # Binance spot's base rate, 0.1 %
    maker_fee_bps: Decimal = Decimal(10)
    slippage_bps: Decimal = Decimal(5)

    def __post_init__(self) -> None:
        for name in ("taker_fee_bps", "maker_fee_bps", "slippage_bps"):
            value = getattr(self, name)
            if not isinstance(value, Decimal) or not value.is_finite() or not 0 <= value <= 1000:
                raise ValueError(f"{name} must be a Decimal between 0 and 1000 bps, got {value!r}")

    def fee(self, notional: Decimal, *, maker: bool) -> Decimal:
        rate = self.maker_fee_bps if maker else self.taker_fee_bps
        return (notional * rate / _BPS).quantize(_FEE_QUANTUM, rounding=ROUND_CEILING)

    def slipped_price(self, side: Side, reference: Decimal, tick: Decimal) -> Decimal:
        if side is Side.BUY:
            moved = reference * (_BPS + self.slippage_bps) / _BPS
            return round_to_step(moved, origin=Decimal(0), step=tick, up=True)
        moved = reference * (_BPS - self.slippage_bps) / _BPS
        return max(round_to_step(moved, origin=Decimal(0), step=tick), tick if tick > 0 else moved)

    def on_submit(
        self, intent: OrderIntent, *, tick: Decimal, quote_asset: str, time_ms: int
    ) -> ExecutedFill | None:
        """The fill an order gets as it is placed, or None when it rests (a limit that does not
        cross)."""
        price = self.slipped_price(intent.side, intent.reference_price, tick)
        if intent.type is OrderType.LIMIT:
            assert intent.price is not None
            crosses = (
                intent.reference_price <= intent.price
                if intent.side is Side.BUY
                else intent.reference_price >= intent.price
            )
            if not crosses:
                return None
            price = min(price, intent.price) if intent.side is Side.BUY else max(price, intent.price)
        return self._fill(intent, price, quote_asset=quote_asset, time_ms=time_ms, maker=False)

    def on_candle(
        self,
        intent: OrderIntent,
        *,
        low: Decimal,
        high: Decimal,
        close_ms: int,
        quote_asset: str,
    ) -> ExecutedFill | None:
        """The fill of a resting limit order on a closed 1m candle after the one it was placed
        in, or None when the candle did not reach its price."""
        if intent.type is not OrderType.LIMIT or intent.price is None:
            raise ValueError("only limit orders rest")
        reached = low <= intent.price if intent.side is Side.BUY else high >= intent.price
        if not reached:
            return None
        return self._fill(intent, intent.price, quote_asset=quote_asset, time_ms=close_ms, maker=True)

    def _fill(
        self, intent: OrderIntent, price: Decimal, *, quote_asset: str, time_ms: int, maker: bool
    ) -> ExecutedFill:
        return ExecutedFill(
            trade_id=f"{intent.client_order_id}-1",
            price=price,
            quantity=intent.quantity,
            fee=self.fee(price * intent.quantity, maker=maker),
            fee_asset=quote_asset,
            time_ms=time_ms,
            is_maker=maker,
        )
