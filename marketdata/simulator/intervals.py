"""The kline intervals the simulator serves: Binance's names, lengths in ms, epoch-aligned.

Binance has no 10m interval (Oasis derives it), and the simulator stops at 4h: longer
Binance intervals (6h … 1M) are answered like unknown ones, with -1120."""

from __future__ import annotations

MINUTE_MS = 60_000

KLINE_INTERVALS: dict[str, int] = {
    "1m": MINUTE_MS,
    "3m": 3 * MINUTE_MS,
    "5m": 5 * MINUTE_MS,
    "15m": 15 * MINUTE_MS,
    "30m": 30 * MINUTE_MS,
    "1h": 60 * MINUTE_MS,
    "2h": 120 * MINUTE_MS,
    "4h": 240 * MINUTE_MS,
}

LONGEST_INTERVAL_MS = max(KLINE_INTERVALS.values())


def interval_ms(name: str) -> int:
    """Length of the interval called `name`; ValueError naming the valid ones otherwise."""
    try:
        return KLINE_INTERVALS[name]
    except KeyError:
        valid = ", ".join(KLINE_INTERVALS)
        raise ValueError(f"unknown interval {name!r}; valid: {valid}") from None


def floor_to(time_ms: int, length_ms: int) -> int:
    return time_ms - time_ms % length_ms


def ceil_to(time_ms: int, length_ms: int) -> int:
    return -((-time_ms) // length_ms) * length_ms
