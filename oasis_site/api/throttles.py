"""Throttling per client IP and per route, counted in Django's cache (Redis when REDIS_URL is
set, so every web process shares the counts; the embedded default otherwise).

Each route has its own budget per client address: a script polling candles does not use up the
budget of the kill switch. Reads and writes have separate rates (REST_FRAMEWORK's
DEFAULT_THROTTLE_RATES "read" and "write", from OASIS_API_READ_RATE / OASIS_API_WRITE_RATE).
Over budget: 429 with Retry-After (seconds).

The client address is REMOTE_ADDR (NUM_PROXIES = 0): behind a proxy, daphne's --proxy-headers
(OASIS_PROXY_HEADERS) already puts the client's address there; X-Forwarded-For sent by a client
is never trusted.
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle


class RouteIPThrottle(SimpleRateThrottle):
    cache_format = "api-throttle:%(scope)s:%(route)s:%(ident)s"

    def __init__(self) -> None:
        # The rate is chosen per request (read or write), in allow_request.
        pass

    def get_rate(self) -> str | None:
        # Read at call time (not at import, as SimpleRateThrottle does) so settings overrides apply.
        rate = api_settings.DEFAULT_THROTTLE_RATES.get(self.scope or "read")
        return None if rate is None else str(rate)

    def allow_request(self, request: Request, view: Any) -> bool:
        self.scope = "read" if request.method in SAFE_METHODS else "write"
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        match = request.resolver_match
        route = match.route if match is not None else request.path
        return self.cache_format % {"scope": self.scope, "route": route, "ident": self.get_ident(request)}
