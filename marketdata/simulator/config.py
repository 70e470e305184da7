"""Everything a SimExchange is started with. Every default is documented here; the management
command `simexchange` maps its flags onto these fields."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from marketdata.simulator.intervals import MINUTE_MS
from marketdata.simulator.symbols import MAX_SYMBOLS, generated_names, split_symbol

_DURATION = re.compile(r"^(\d+)([mhd])$")
_DURATION_MINUTES = {"m": 1, "h": 60, "d": 1440}
MAX_COMMISSION_BPS = 1000  # 10 %: anything above is a typo, not a fee schedule


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the value and what is valid."""


@dataclass(frozen=True)
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 9100  # 0: any free port (SimExchange.start returns it)
    symbols: tuple[str, ...] = tuple(generated_names(20))
    seed: int = 1
    speed: float = 1.0  # simulated seconds per wall second
    start_ms: int | None = None  # simulated start; None: the current wall-clock minute
    # With start_ms None: start at the wall clock's exact time rather than at its minute, so
    # that at speed 1 simulated time is wall time (as an exchange's is; `make run` does this).
    follow_wall_clock: bool = False
    history_minutes: int = 2 * 1440  # candles exist from start - history (aligned down to 4h)
    replay_path: Path | None = None
    replay_symbol: str = "BTCUSDT"
    update_interval_s: float = 0.25  # forming-candle updates on the streams (wall time)
    ping_interval_s: float = 20.0  # server pings on every stream connection
    pong_timeout_s: float = 60.0  # no pong for this long after a ping: connection dropped
    max_streams: int = 1024  # per connection, as Binance
    max_incoming_per_s: int = 5  # incoming messages per second per connection, as Binance
    weight_limit: int = 6000  # request weight per IP per window
    weight_window_s: float = 60.0
    api_key: str = "sim-key"
    api_secret: str = "sim-secret"  # noqa: S105 (a simulator's well-known test secret)
    quote_balance: Decimal = Decimal(100000)  # starting balance of every quote asset
    # Binance's unfilled-order count (X-MBX-ORDER-COUNT-10S / -1D, -1015 past the limit), per
    # account; Binance's own limits for a standard account.
    orders_per_10s: int = 50
    orders_per_day: int = 160_000
    # As Binance: an order's first fill takes it back out of the count. False: every accepted
    # order counts, so tests can reach -1015 with MARKET orders.
    orders_fill_decrement: bool = True
    commission_bps: int = 0  # maker and taker, charged in the quote asset on every fill (10 = 0.1%)
    cache_chunks: int = 8192  # 4-hour chunks of 1m candles kept in memory (21 KB each: 170 MB at most)
    faults: Mapping[str, Any] = field(default_factory=dict)  # as POST /_sim/faults takes them

    def __post_init__(self) -> None:
        if not self.symbols:
            raise ConfigError("no symbols")
        if len(self.symbols) > MAX_SYMBOLS:
            raise ConfigError(f"{len(self.symbols)} symbols; at most {MAX_SYMBOLS}")
        for name in self.symbols:
            try:
                split_symbol(name)
            except ValueError as error:
                raise ConfigError(str(error)) from None
        if self.speed <= 0:
            raise ConfigError(f"speed {self.speed} must be > 0")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} must be 0-65535")
        if self.start_ms is not None and self.start_ms % MINUTE_MS:
            raise ConfigError(f"start {self.start_ms} is not a whole minute")
        if self.history_minutes < 0:
            raise ConfigError(f"history {self.history_minutes} minutes must be >= 0")
        for name in ("update_interval_s", "ping_interval_s", "pong_timeout_s", "weight_window_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} {getattr(self, name)} must be > 0")
        for name in (
            "max_streams", "max_incoming_per_s", "weight_limit", "cache_chunks", "orders_per_10s",
            "orders_per_day",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} {getattr(self, name)} must be >= 1")
        if self.quote_balance < 0:
            raise ConfigError(f"quote balance {self.quote_balance} must be >= 0")
        if not 0 <= self.commission_bps <= MAX_COMMISSION_BPS:
            raise ConfigError(f"commission {self.commission_bps} bps must be 0-{MAX_COMMISSION_BPS}")


def parse_symbols(text: str) -> tuple[str, ...]:
    """`"20"` → 20 generated names; `"BTCUSDT,ETHBTC"` → those (upper-cased)."""
    text = text.strip()
    if text.isdigit():
        count = int(text)
        if not 1 <= count <= MAX_SYMBOLS:
            raise ConfigError(f"--symbols {count}: must be 1-{MAX_SYMBOLS}")
        return tuple(generated_names(count))
    names = tuple(name.strip().upper() for name in text.split(",") if name.strip())
    if not names:
        raise ConfigError(f"--symbols {text!r}: give a count (1-{MAX_SYMBOLS}) or a comma-separated list")
    for name in names:
        try:
            split_symbol(name)
        except ValueError as error:
            raise ConfigError(f"--symbols: {error}") from None
    if len(set(names)) != len(names):
        raise ConfigError(f"--symbols {text!r}: lists a symbol twice")
    if len(names) > MAX_SYMBOLS:
        raise ConfigError(f"--symbols: {len(names)} symbols; at most {MAX_SYMBOLS}")
    return names


def parse_duration_minutes(text: str) -> int:
    """`"2d"`, `"36h"`, `"90m"` or `"0"` → minutes."""
    if text.strip() == "0":
        return 0
    match = _DURATION.match(text.strip())
    if not match:
        raise ConfigError(f"duration {text!r}: use a number with m, h or d (90m, 36h, 2d), or 0")
    return int(match.group(1)) * _DURATION_MINUTES[match.group(2)]


def parse_start(text: str) -> int:
    """ISO 8601 UTC (`2024-03-01T00:00:00Z`) or ms since the epoch → ms; a whole minute."""
    text = text.strip()
    if text.isdigit():
        start_ms = int(text)
    else:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(
                f"start {text!r}: use ISO 8601 UTC (2024-03-01T00:00:00Z) or epoch ms"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        start_ms = int(moment.timestamp() * 1000)
    if start_ms % MINUTE_MS:
        raise ConfigError(f"start {text!r} is not a whole minute")
    return start_ms
