"""Value types shared by the execution core, the brokers and the services.

Prices, quantities and money are `Decimal` everywhere here; nothing in this package converts to
float. Times are integer milliseconds since the epoch (UTC)."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"


class OrderStatus(StrEnum):
    """An order's life: new → submitted → partially_filled → filled | canceled | rejected | expired.
    `new` is a row written before anything left the process; `submitted` means the exchange
    acknowledged it (or, after a lost answer, that we could not yet learn its fate)."""

    NEW = "new"
    SUBMITTED = "submitted"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELED = "canceled"
    REJECTED = "rejected"
    EXPIRED = "expired"

    @property
    def is_final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset({OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.REJECTED, OrderStatus.EXPIRED})


class KillSwitchState(StrEnum):
    ACTIVE = "active"  # trading normally
    REDUCING = "reducing"  # only orders that reduce a position
    HALTED = "halted"  # nothing new; cancels allowed


@dataclass(frozen=True)
class SymbolFilters:
    """A symbol's exchange filters (Binance PRICE_FILTER, LOT_SIZE, NOTIONAL). A max of None
    means unbounded. Quantities are valid when (qty - min_qty) is a multiple of step_size, prices
    when (price - min_price) is a multiple of tick_size, as the exchange checks them."""

    tick_size: Decimal
    step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal | None
    min_notional: Decimal
    min_price: Decimal = Decimal(0)
    max_price: Decimal | None = None
    max_notional: Decimal | None = None


@dataclass(frozen=True)
class OrderIntent:
    """What we want the exchange to do, before or after the checks. `price` is the limit price
    (None for a market order); `reference_price` is the last close, used to value market orders."""

    client_order_id: str
    symbol: str  # exchange symbol, e.g. BTCUSDT
    side: Side
    type: OrderType
    quantity: Decimal
    reference_price: Decimal
    price: Decimal | None = None

    @property
    def notional(self) -> Decimal:
        return self.quantity * (self.price if self.price is not None else self.reference_price)


@dataclass(frozen=True)
class Refusal:
    """Why an intent may not go out. `reason` is a stable code (metrics label, order row),
    `detail` a sentence naming the values involved."""

    reason: str
    detail: str


@dataclass(frozen=True)
class ExecutedFill:
    """One execution of an order, from the exchange or the fill model. `trade_id` is unique per
    symbol on the exchange (dry-run ids are derived from the client order id)."""

    trade_id: str
    price: Decimal
    quantity: Decimal
    fee: Decimal
    fee_asset: str
    time_ms: int
    is_maker: bool = False


@dataclass(frozen=True)
class OrderReport:
    """An order as the exchange (or the dry-run broker) reports it."""

    client_order_id: str
    exchange_order_id: str | None
    symbol: str
    side: Side
    type: OrderType
    status: OrderStatus
    quantity: Decimal
    price: Decimal | None
    filled_quantity: Decimal
    average_price: Decimal | None
    updated_ms: int
    fills: tuple[ExecutedFill, ...] = field(default=())
    reject_reason: str = ""


@dataclass(frozen=True)
class BalanceLine:
    asset: str
    free: Decimal
    locked: Decimal

    @property
    def total(self) -> Decimal:
        return self.free + self.locked
