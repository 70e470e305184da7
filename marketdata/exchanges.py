"""Exchange profiles: the one module that knows exchanges' endpoints and limits.

Every URL here is a default that the environment can override (OASIS_<EXCHANGE>_REST_URL and
OASIS_<EXCHANGE>_WS_URL, read in oasis_site/environment.py), so the same code runs against the
simulator, an exchange's public test network (e.g. Binance Spot testnet:
https://testnet.binance.vision and wss://stream.testnet.binance.vision) or a proxy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from marketdata.core.timeframes import Timeframe

# Binance-family intervals that we store; 10m does not exist there and is resampled.
_BINANCE_TIMEFRAMES = frozenset(
    {Timeframe.M1, Timeframe.M3, Timeframe.M5, Timeframe.M15, Timeframe.H1, Timeframe.H4}
)


@dataclass(frozen=True)
class ExchangeProfile:
    name: str
    ccxt_id: str
    rest_url: str  # base of the REST API, without /api/v3
    ws_url: str  # base of the market streams, without /ws or /stream
    streamed_timeframes: frozenset[Timeframe]
    max_streams_per_connection: int = 1024
    max_control_messages_per_second: int = 5
    # Binance closes every connection after 24 h; we reconnect a little before.
    max_connection_age_seconds: int = 23 * 3600 + 50 * 60
    # Most klines rows one REST request returns.
    klines_limit: int = 1000
    # ccxt's request spacing in ms (its throttle also weighs each endpoint); None keeps ccxt's.
    rest_rate_limit_ms: int | None = None


PROFILES: dict[str, ExchangeProfile] = {
    "sim": ExchangeProfile(
        name="sim",
        ccxt_id="binance",
        rest_url="http://127.0.0.1:9100",
        ws_url="ws://127.0.0.1:9100",
        streamed_timeframes=_BINANCE_TIMEFRAMES,
        # The simulator enforces Binance's weight limit itself (429 + Retry-After).
        rest_rate_limit_ms=1,
    ),
    "binance": ExchangeProfile(
        name="binance",
        ccxt_id="binance",
        rest_url="https://api.binance.com",
        ws_url="wss://stream.binance.com:9443",
        streamed_timeframes=_BINANCE_TIMEFRAMES,
    ),
    "binanceus": ExchangeProfile(
        name="binanceus",
        ccxt_id="binanceus",
        rest_url="https://api.binance.us",
        ws_url="wss://stream.binance.us:9443",
        streamed_timeframes=_BINANCE_TIMEFRAMES,
    ),
}


def exchange_profile(
    name: str, *, overrides: Mapping[str, Mapping[str, str]] | None = None
) -> ExchangeProfile:
    """The profile called `name` with any URL overrides applied; ValueError listing valid names."""
    try:
        profile = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown exchange {name!r}; valid: {', '.join(PROFILES)}") from None
    urls = (overrides or {}).get(name, {})
    return replace(
        profile, rest_url=urls.get("rest", profile.rest_url), ws_url=urls.get("ws", profile.ws_url)
    )
