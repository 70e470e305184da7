"""Streaming resampling: closed candles in, in any order, and out the derived candles they complete.

There is no second aggregation here. When buckets complete, their candles go through
`resample.resample`, the function the batch form uses, so streaming and batch agree exactly.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from marketdata.core.resample import CandleArrays, ClosedCandle, derivation_ratio, resample
from marketdata.core.timeframes import Timeframe


class ConflictingCandleError(ValueError):
    """Two different candles for the same open time, neither with fewer imputed inputs."""


class StaleCandleError(ValueError):
    """A candle older than what the resampler still holds (see `Resampler.discard_before`)."""


class Resampler:
    """Derives one symbol's `source` candles into `targets` as their buckets complete.

    `add` and `add_many` return the derived candles that became complete, shortest timeframe
    first and then in time order. Duplicates (candles with the same open time) are handled so
    that what is derived depends only on which candles arrived, never on their order:
    - the same candle again (same digits, see `ClosedCandle.same_as`) changes nothing and returns
      nothing;
    - otherwise the candle with fewer `imputed_inputs` wins, whichever arrived first. A real
      candle replaces an imputed stand-in. If its buckets were already derived, they are derived
      again and returned again, and the newer derived candle supersedes the earlier one (upsert
      by open time). An imputed candle never replaces a real one: it is ignored;
    - two different candles with the same count conflict. The later one is refused with
      `ConflictingCandleError` and the one held stays.

    Restart: a new Resampler given the stored source candles through `add_many` is in the same
    state as the one that received them one by one. `add_many` returns the derived candles of
    every complete bucket among them. They are identical to the ones derived before, so the
    caller may upsert them again (healing a crash between the two writes) or drop them.

    Every candle is kept until `discard_before` lets it go.
    """

    def __init__(self, source: Timeframe, targets: Iterable[Timeframe]) -> None:
        self.source = source
        self.targets = tuple(sorted(set(targets), key=lambda timeframe: timeframe.ms))
        if not self.targets:
            raise ValueError(f"a resampler of {source} candles needs at least one target timeframe")
        for target in self.targets:
            derivation_ratio(source, target)
        self._candles: dict[int, ClosedCandle] = {}
        self._kept_from_ms: int | None = None

    def __len__(self) -> int:
        return len(self._candles)

    def add(self, candle: ClosedCandle) -> list[ClosedCandle]:
        """Take one closed candle; return the derived candles it completed."""
        return self.add_many((candle,))

    def add_many(self, candles: Iterable[ClosedCandle]) -> list[ClosedCandle]:
        """Take closed candles in any order; return the derived candles they completed.

        All or nothing: if one candle is refused (wrong timeframe, misaligned, stale or
        conflicting), the error is raised and none of them is taken.
        """
        accepted: dict[int, ClosedCandle] = {}
        for candle in candles:
            self._check(candle)
            held = accepted.get(candle.open_time_ms) or self._candles.get(candle.open_time_ms)
            if held is None or _supersedes(candle, held):
                accepted[candle.open_time_ms] = candle
        self._candles.update(accepted)
        return self._derive(accepted)

    def discard_before(self, time_ms: int) -> None:
        """Forget the candles before the longest target's bucket that holds `time_ms`.

        Rounding down keeps every bucket of every target either wholly kept or wholly gone. A
        candle that arrives later for a time before that is refused with `StaleCandleError`.
        """
        kept_from = self.targets[-1].bucket_start(time_ms)
        if self._kept_from_ms is not None and kept_from <= self._kept_from_ms:
            return
        self._kept_from_ms = kept_from
        for open_time in [t for t in self._candles if t < kept_from]:
            del self._candles[open_time]

    def _check(self, candle: ClosedCandle) -> None:
        if candle.timeframe != self.source:
            raise ValueError(
                f"a {candle.timeframe} candle (open time {candle.open_time_ms}) given to a"
                f" resampler of {self.source} candles"
            )
        if not self.source.is_aligned(candle.open_time_ms):
            raise ValueError(
                f"{self.source} candle at open time {candle.open_time_ms} ms is not on a"
                f" {self.source} boundary"
            )
        if self._kept_from_ms is not None and candle.open_time_ms < self._kept_from_ms:
            raise StaleCandleError(
                f"{self.source} candle at {candle.open_time_ms} is older than {self._kept_from_ms},"
                " before which candles were discarded"
            )

    def _derive(self, changed: Iterable[int]) -> list[ClosedCandle]:
        step = self.source.ms
        complete: dict[Timeframe, set[int]] = {}
        needed: set[int] = set()
        for target in self.targets:
            complete[target] = set()
            for bucket in {target.bucket_start(open_time) for open_time in changed}:
                constituents = range(bucket, bucket + target.ms, step)
                if all(open_time in self._candles for open_time in constituents):
                    complete[target].add(bucket)
                    needed.update(constituents)
        if not needed:
            return []
        arrays = CandleArrays.from_candles(self.source, [self._candles[t] for t in sorted(needed)])
        derived: list[ClosedCandle] = []
        for target in self.targets:
            if complete[target]:
                # `needed` may also complete buckets nothing changed in: those are not returned.
                result = resample(arrays, target)
                wanted = np.isin(result.open_time_ms, np.array(sorted(complete[target]), dtype=np.int64))
                derived.extend(result.take(np.flatnonzero(wanted)).to_candles())
        return derived


def _supersedes(candle: ClosedCandle, held: ClosedCandle) -> bool:
    if candle.same_as(held):
        return False
    if candle.imputed_inputs != held.imputed_inputs:
        return candle.imputed_inputs < held.imputed_inputs
    raise ConflictingCandleError(
        f"two different {held.timeframe} candles at {held.open_time_ms}, both with"
        f" {held.imputed_inputs} imputed inputs: kept {held}, refused {candle}"
    )
