"""The fill model: how an order we do not send to an exchange would have filled. Dry-run trading
and the backtester both use this one model, so their fills cannot diverge.

An order is matched against the closed 1m candles that **open at or after the minute it was
placed in** — never against the candle whose close produced its signal, so nothing fills on data
the decision could not have had (no lookahead): a signal on candle t fills at t+1 or later.
- A **market** order fills whole at the open of the first such candle, moved against us by
  `slippage_bps` (a buy pays more, a sell gets less) and rounded to the tick against us. It pays
  the taker fee.
- A **limit** order whose candle opens through its price (a buy at or above the open, a sell at
  or below) fills at that open, slipped but never beyond its price, as a taker. Otherwise it
  fills at its price on the first candle whose low (buy) or high (sell) reaches it, as a maker.
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

    def on_candle(
        self,
        intent: OrderIntent,
        *,
        open_price: Decimal,
        high: Decimal,
        low: Decimal,
        open_ms: int,
        tick: Decimal,
        quote_asset: str,
    ) -> ExecutedFill | None:
        """The fill of `intent` on one closed 1m candle that opened at or after the order was
        placed (the first such candle for a market order), or None when it does not fill there."""
        slipped = self.slipped_price(intent.side, open_price, tick)
        if intent.type is OrderType.MARKET:
            return self._fill(intent, slipped, quote_asset=quote_asset, time_ms=open_ms, maker=False)
        if intent.price is None:
            raise ValueError("a limit order needs a price")
        buy = intent.side is Side.BUY
        if (open_price <= intent.price) if buy else (open_price >= intent.price):
            price = min(slipped, intent.price) if buy else max(slipped, intent.price)
            return self._fill(intent, price, quote_asset=quote_asset, time_ms=open_ms, maker=False)
        if (low <= intent.price) if buy else (high >= intent.price):
            close_ms = open_ms + 59_999
            return self._fill(intent, intent.price, quote_asset=quote_asset, time_ms=close_ms, maker=True)
        return None

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
