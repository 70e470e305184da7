"""Request weight per IP, as Binance counts it (weights of the endpoints the simulator serves,
from the Spot API documentation), and the limiter that answers 429 past the limit; the
account's unfilled-order count (`OrderCountLimiter`, 429 / -1015 past its limits)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# (method, path) → weight; a few depend on the parameters (see `request_weight`).
ENDPOINT_WEIGHTS: dict[tuple[str, str], int] = {
    ("GET", "/api/v3/ping"): 1,
    ("GET", "/api/v3/time"): 1,
    ("GET", "/api/v3/exchangeInfo"): 20,
    ("GET", "/api/v3/klines"): 2,
    ("POST", "/api/v3/order"): 1,
    ("GET", "/api/v3/order"): 4,
    ("DELETE", "/api/v3/order"): 1,
    ("GET", "/api/v3/account"): 20,
}


def request_weight(method: str, path: str, query: Mapping[str, str]) -> int:
    if path == "/api/v3/openOrders":
        return 6 if query.get("symbol") else 80
    if path == "/api/v3/myTrades":
        return 5 if query.get("orderId") else 20
    return ENDPOINT_WEIGHTS.get((method, path), 1)


class WeightLimiter:
    """A window of `window_s` per IP that opens with the IP's first request (not aligned to
    the wall-clock minute, so a test that makes a few quick requests never straddles a reset)."""

    def __init__(self, limit: int, window_s: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self._monotonic = monotonic
        self._windows: dict[str, tuple[float, int]] = {}

    def _window(self, ip: str) -> tuple[float, int]:
        now = self._monotonic()
        opened, used = self._windows.get(ip, (now, 0))
        if now - opened >= self.window_s:
            opened, used = now, 0
        return opened, used

    def used(self, ip: str) -> int:
        return self._window(ip)[1]

    def charge(self, ip: str, weight: int) -> tuple[int, int | None]:
        """Add `weight`; (weight used in the window, Retry-After seconds when over the limit)."""
        opened, used = self._window(ip)
        used += weight
        self._windows[ip] = (opened, used)
        if used <= self.limit:
            return used, None
        return used, max(1, math.ceil(opened + self.window_s - self._monotonic()))


@dataclass(frozen=True)
class OrderCountWindow:
    """One of Binance's ORDERS rate limits."""

    name: str  # as in the header: X-MBX-ORDER-COUNT-<name>
    interval: str  # as in exchangeInfo rateLimits
    interval_num: int
    seconds: float
    limit: int

    @property
    def header(self) -> str:
        return f"X-MBX-ORDER-COUNT-{self.name}"

    def rate_limit(self) -> dict[str, str | int]:
        return {
            "rateLimitType": "ORDERS",
            "interval": self.interval,
            "intervalNum": self.interval_num,
            "limit": self.limit,
        }

    def too_many_message(self) -> str:
        per = f"{self.interval_num} {self.interval}"
        return f"Too many new orders; current limit is {self.limit} orders per {per}."


class OrderCountLimiter:
    """Binance's unfilled-order count of the (one) simulated account, over 10 seconds and a day.

    As Binance documents it ("every successful request to place an order adds to the unfilled
    order count"): every *accepted* placement adds one to every window; refused ones (filter
    failures, insufficient balance, -1015 itself) add nothing. An order's first fill takes one
    off every window again (unless `fill_decrement` is off), not at once but when the next
    placement is checked: Binance decrements asynchronously, so an order that fills at once still
    counts in its own answer's `X-MBX-ORDER-COUNT-*`. A placement that finds a window at its
    limit is refused with 429 / -1015.

    Not exact, for the reason of `WeightLimiter`: a window opens with the first order counted in
    it (monotonic wall time) instead of on Binance's fixed boundaries (12:34:00, 12:34:10, …; UTC
    midnight), so a test's quick burst of orders never straddles a reset."""

    def __init__(
        self,
        per_10s: int,
        per_day: int,
        *,
        fill_decrement: bool = True,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.windows = (
            OrderCountWindow("10S", "SECOND", 10, 10.0, per_10s),
            OrderCountWindow("1D", "DAY", 1, 86_400.0, per_day),
        )
        self.fill_decrement = fill_decrement
        self._monotonic = monotonic
        self._opened: list[float | None] = [None] * len(self.windows)
        self._counts = [0] * len(self.windows)
        self._pending_decrements = 0

    def _expire(self) -> float:
        now = self._monotonic()
        for index, window in enumerate(self.windows):
            opened = self._opened[index]
            if opened is not None and now - opened >= window.seconds:
                self._opened[index], self._counts[index] = None, 0
        return now

    def headers(self) -> dict[str, str]:
        """`X-MBX-ORDER-COUNT-10S` and `-1D` as they stand."""
        self._expire()
        return {window.header: str(count) for window, count in zip(self.windows, self._counts, strict=True)}

    def refusal(self) -> tuple[OrderCountWindow, int] | None:
        """The window a new placement would exceed and its Retry-After seconds, or None.
        Called as a placement arrives: the fills since the previous one are taken off first."""
        now = self._expire()
        if self._pending_decrements:
            self._counts = [max(0, count - self._pending_decrements) for count in self._counts]
            self._pending_decrements = 0
        for window, opened, count in zip(self.windows, self._opened, self._counts, strict=True):
            if count >= window.limit and opened is not None:
                return window, max(1, math.ceil(opened + window.seconds - now))
        return None

    def add(self) -> None:
        """Count one accepted placement."""
        now = self._expire()
        for index in range(len(self.windows)):
            if self._opened[index] is None:
                self._opened[index] = now
            self._counts[index] += 1

    def filled(self) -> None:
        """An order had its first fill."""
        if self.fill_decrement:
            self._pending_decrements += 1
