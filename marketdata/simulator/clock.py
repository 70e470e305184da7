"""Simulated time: starts at `start_ms` and runs `speed` times faster than the wall clock."""

from __future__ import annotations

import time
from collections.abc import Callable


class SimClock:
    def __init__(self, start_ms: int, speed: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.start_ms = start_ms
        self.speed = speed
        self._monotonic = monotonic
        self._origin: float | None = None

    def start(self, *, wall_ms: int | None = None) -> None:
        """Simulated time stands at start_ms until this is called. With `wall_ms` (the wall
        clock now, at or after start_ms), simulated time starts there instead, so that at speed 1
        it is the wall clock — as a real exchange's time is."""
        self._origin = self._monotonic()
        if wall_ms is not None:
            self._origin -= max(0, wall_ms - self.start_ms) / (self.speed * 1000)

    def now_ms(self) -> int:
        if self._origin is None:
            return self.start_ms
        return self.start_ms + int((self._monotonic() - self._origin) * self.speed * 1000)

    def seconds_until(self, sim_ms: int) -> float:
        """Wall seconds until simulated time reaches `sim_ms` (0 when it has)."""
        if self._origin is None:
            return float("inf")
        reached_at = self._origin + (sim_ms - self.start_ms) / (self.speed * 1000)
        return max(0.0, reached_at - self._monotonic())
