"""What every broker offers the execution loop, and the errors it may raise."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from trading.core.types import BalanceLine, ExecutedFill, OrderIntent, OrderReport


class BrokerError(Exception):
    """A broker call that failed. `reason` is a stable code for metrics and order rows; the
    message never contains credentials."""

    reason = "broker_error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class OrderRefused(BrokerError):
    """The exchange answered and refused the order: final, never retried."""

    reason = "exchange_rejected"


class BrokerUnavailable(BrokerError):
    """The exchange could not be reached or kept failing (5xx, 429/418, timeouts) after the
    allowed retries; for a submit, the exchange is known *not* to hold the order."""

    reason = "exchange_unavailable"


class OutcomeUnknown(BrokerError):
    """A submit whose fate could not be learned (timeouts, and the query by client order id
    failed too). The order stays `submitted`; reconciliation settles it."""

    reason = "outcome_unknown"


class Halted(BrokerError):
    """The gate (kill switch) closed while a call waited to be retried: nothing more was sent."""

    reason = "kill_switch"


class Broker(Protocol):
    mode: str  # "dry_run" | "live"

    def prepare(self) -> None:
        """Anything to load before the first order (markets); called at the loop's start."""
        ...

    def submit(self, intent: OrderIntent) -> OrderReport: ...

    def fetch_order(self, symbol: str, client_order_id: str) -> OrderReport | None: ...

    def cancel(self, symbol: str, client_order_id: str) -> OrderReport: ...

    def open_orders(self, symbols: Iterable[str]) -> list[OrderReport]: ...

    def fills(self, symbol: str, *, since_ms: int) -> list[tuple[str, ExecutedFill]]:
        """(exchange order id, fill) for our trades of `symbol` since `since_ms`, oldest first."""
        ...

    def balances(self) -> list[BalanceLine]: ...

    def close(self) -> None: ...
