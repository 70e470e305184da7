"""Timeframes: names, lengths and UTC epoch-aligned buckets."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

MINUTE_MS = 60_000


class Timeframe(StrEnum):
    M1 = "1m"
    M3 = "3m"
    M5 = "5m"
    M10 = "10m"
    M15 = "15m"
    H1 = "1h"
    H4 = "4h"

    @property
    def ms(self) -> int:
        """Length in milliseconds."""
        return _LENGTH_MS[self]

    def bucket_start(self, time_ms: int) -> int:
        """Open time (ms since the epoch, UTC) of the bucket that contains `time_ms`."""
        return time_ms - time_ms % self.ms

    def is_aligned(self, open_time_ms: int) -> bool:
        return open_time_ms % self.ms == 0

    @classmethod
    def parse(cls, name: str) -> Timeframe:
        """The timeframe called `name`; ValueError listing the valid ones otherwise."""
        try:
            return cls(name)
        except ValueError:
            valid = ", ".join(tf.value for tf in cls)
            raise ValueError(f"unknown timeframe {name!r}; valid: {valid}") from None


_LENGTH_MS: dict[Timeframe, int] = {
    Timeframe.M1: MINUTE_MS,
    Timeframe.M3: 3 * MINUTE_MS,
    Timeframe.M5: 5 * MINUTE_MS,
    Timeframe.M10: 10 * MINUTE_MS,
    Timeframe.M15: 15 * MINUTE_MS,
    Timeframe.H1: 60 * MINUTE_MS,
    Timeframe.H4: 240 * MINUTE_MS,
}


def utc_from_ms(ms: int) -> datetime:
    """The UTC datetime of `ms` milliseconds since the epoch (how candle times are stored)."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def ms_from_datetime(moment: datetime) -> int:
    """Milliseconds since the epoch of an aware datetime (how candle times are computed on)."""
    return int(moment.timestamp() * 1000)
