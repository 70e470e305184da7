"""Request weight per IP, as Binance counts it (weights of the endpoints the simulator serves,
from the Spot API documentation), and the limiter that answers 429 past the limit."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

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
