"""Per-(symbol, timeframe) buffers: the forming candle, the last closed ones, and what a new
frame means for them (no Django, shared by live ingestion and tests)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from marketdata.core.klines import Kline
from marketdata.core.timeframes import Timeframe


class Outcome(Enum):
    FORMING = "forming"  # an update of the candle still open
    CLOSED = "closed"  # a candle closed: persist it
    DUPLICATE = "duplicate"  # a closed candle we already have
    STALE = "stale"  # older than what we already have (out of order)


@dataclass(frozen=True)
class Gap:
    """Closed candles missing between two we have: open times [first_ms, last_ms], inclusive."""

    symbol: str
    timeframe: Timeframe
    first_ms: int
    last_ms: int

    @property
    def count(self) -> int:
        return (self.last_ms - self.first_ms) // self.timeframe.ms + 1


@dataclass
class StreamBuffer:
    symbol: str
    timeframe: Timeframe
    keep: int = 500
    forming: Kline | None = None
    closed: deque[Kline] = field(default_factory=deque)
    # Open time of the newest closed candle known to be persisted or queued for it.
    last_closed_ms: int | None = None
    # Wall-clock ms of the last frame received for this stream (staleness).
    last_frame_wall_ms: int | None = None

    def apply(self, kline: Kline, *, wall_ms: int) -> tuple[Outcome, Gap | None]:
        """Fold one frame in. Returns what it was and, for a close after a hole, the gap."""
        self.last_frame_wall_ms = wall_ms
        if self.last_closed_ms is not None and kline.open_time_ms <= self.last_closed_ms:
            return (Outcome.DUPLICATE if kline.closed else Outcome.STALE), None
        if not kline.closed:
            if self.forming is not None and kline.open_time_ms < self.forming.open_time_ms:
                return Outcome.STALE, None
            self.forming = kline
            return Outcome.FORMING, None
        gap = None
        step = self.timeframe.ms
        if self.last_closed_ms is not None and kline.open_time_ms > self.last_closed_ms + step:
            gap = Gap(self.symbol, self.timeframe, self.last_closed_ms + step, kline.open_time_ms - step)
        self.mark_closed(kline)
        return Outcome.CLOSED, gap

    def mark_closed(self, kline: Kline) -> None:
        """Record a closed candle (from the stream or a backfill) as the newest known."""
        if self.last_closed_ms is None or kline.open_time_ms > self.last_closed_ms:
            self.last_closed_ms = kline.open_time_ms
        if self.forming is not None and self.forming.open_time_ms <= kline.open_time_ms:
            self.forming = None
        if not self.closed or kline.open_time_ms > self.closed[-1].open_time_ms:
            self.closed.append(kline)
        elif all(held.open_time_ms != kline.open_time_ms for held in self.closed):
            # A backfilled candle older than the newest: keep the deque in time order.
            ordered = sorted([*self.closed, kline], key=lambda held: held.open_time_ms)
            self.closed = deque(ordered)
        while len(self.closed) > self.keep:
            self.closed.popleft()
