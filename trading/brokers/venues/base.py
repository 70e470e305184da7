"""What every venue shares: the `Venue` base class the broker drives, the exceptions a venue raises
to tell the broker what the exchange answered, and the conversions between the exchange's strings
and our exact types."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from trading.brokers.base import BrokerError
from trading.core.types import BalanceLine, ExecutedFill, OrderIntent, OrderReport, OrderStatus

DAY_MS = 86_400_000

Call = Callable[[str, Callable[[], Any]], Any]


class OrderAbsent(Exception):
    """A venue established that the exchange holds no order with this client order id."""


class PlaceRefused(Exception):
    """An exchange answered a placement with HTTP 200 and a refusal (Coinbase's success: false)."""


class Venue:
    """One exchange API's requests and the conversion of its answers. The broker retries a
    method without `call` as a whole; those given `call` (paged reads) make each of their
    requests through it."""

    not_found_codes: frozenset[int] = frozenset()
    not_found_statuses: frozenset[int] = frozenset()
    auth_codes: frozenset[int] = frozenset()
    rate_limit_codes: frozenset[int] = frozenset()
    unknown_outcome_codes: frozenset[int] = frozenset()

    def __init__(self, client: Any) -> None:
        self.client = client

    def place(self, intent: OrderIntent, market_id: str) -> Any:
        raise NotImplementedError

    def placed(self, raw: Any, intent: OrderIntent) -> OrderReport:
        raise NotImplementedError

    def query(self, market_id: str, client_order_id: str) -> Any:
        raise NotImplementedError

    def cancel(self, market_id: str, client_order_id: str) -> Any:
        raise NotImplementedError

    def open_orders(self, market_id: str | None) -> list[Any]:
        raise NotImplementedError

    def trades(self, market_id: str, since_ms: int, call: Call) -> list[tuple[str, ExecutedFill]]:
        raise NotImplementedError

    def balances(self, call: Call) -> list[BalanceLine]:
        raise NotImplementedError

    def report(self, raw: Any, symbol: str | None) -> OrderReport:
        raise NotImplementedError

    def is_duplicate(self, body: str) -> bool:
        return False

    def error_code(self, body: str) -> int | None:
        return None

    def error_text(self, body: str) -> str:
        return ""


# ccxt's unified statuses, for exchange statuses the venues' tables do not know.
_UNIFIED_STATUS = {
    "open": OrderStatus.SUBMITTED,
    "closed": OrderStatus.FILLED,
    "canceled": OrderStatus.CANCELED,
    "expired": OrderStatus.EXPIRED,
    "rejected": OrderStatus.REJECTED,
}


# Conversions -------------------------------------------------------------------------------


def decimal_text(value: Decimal) -> str:
    """A positive decimal as the exchange wants it: plain notation, no exponent, no float."""
    if not value.is_finite() or value <= 0:
        raise ValueError(f"{value} is not a positive amount")
    return format(value, "f")


def exact_decimal(value: Any) -> Decimal:
    """An exact decimal from the exchange's string; a number only when the exchange sent one (its
    repr, never its binary expansion)."""
    try:
        return Decimal(value if isinstance(value, str) else str(value))
    except InvalidOperation:
        raise BrokerError(
            f"the exchange sent {value!r} where a number was expected", reason="bad_answer"
        ) from None


def unified_status(client: Any, status: str) -> OrderStatus:
    unified = client.parse_order_status(status) if hasattr(client, "parse_order_status") else None
    return _UNIFIED_STATUS.get(str(unified), OrderStatus.SUBMITTED)


def parsed_json(body: str) -> Any:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


def shortened(body: str, limit: int = 300) -> str:
    text = " ".join(body.split())
    return text if len(text) <= limit else text[:limit] + "…"


def now_ms() -> int:
    return int(time.time() * 1000)
