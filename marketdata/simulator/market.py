"""The simulated market: symbols, their lazily generated 1m series (an LRU of chunks), and the
candles of any interval as `GET /api/v3/klines` selects them at a given simulated time."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from marketdata.simulator.candles import (
    Candle,
    aggregate,
    candles_from_rows,
    checkpoint_at,
    combine_forming,
    forming_minute,
    make_candle,
)
from marketdata.simulator.intervals import LONGEST_INTERVAL_MS, MINUTE_MS, ceil_to, floor_to
from marketdata.simulator.series import (
    CHUNK_MINUTES,
    CHUNK_MS,
    FIELD_COUNT,
    ChunkArray,
    MinuteSource,
    ReplaySeries,
    SyntheticSeries,
)
from marketdata.simulator.symbols import SymbolSpec

DEFAULT_CACHE_CHUNKS = 8192  # x 21 KB per chunk


class Market:
    def __init__(
        self,
        symbols: list[SymbolSpec],
        *,
        seed: int,
        history_start_ms: int,
        replay: dict[str, ChunkArray] | None = None,
        cache_chunks: int = DEFAULT_CACHE_CHUNKS,
    ) -> None:
        if history_start_ms % LONGEST_INTERVAL_MS:
            raise ValueError("history start must be aligned to the longest interval (4h)")
        self.symbols = symbols
        self.seed = seed
        self.history_start_ms = history_start_ms
        self._by_name = {spec.name: spec for spec in symbols}
        self._replay = replay or {}
        self._sources: dict[int, MinuteSource] = {}
        self._cache: OrderedDict[tuple[int, int], ChunkArray] = OrderedDict()
        self._cache_chunks = cache_chunks

    def symbol(self, name: str) -> SymbolSpec | None:
        return self._by_name.get(name)

    def _source(self, spec: SymbolSpec) -> MinuteSource:
        source = self._sources.get(spec.index)
        if source is None:
            rows = self._replay.get(spec.name)
            if rows is None:
                source = SyntheticSeries(spec, self.seed)
            else:
                source = ReplaySeries(rows, self.history_start_ms // MINUTE_MS)
            self._sources[spec.index] = source
        return source

    def _chunk(self, spec: SymbolSpec, index: int) -> ChunkArray:
        key = (spec.index, index)
        chunk = self._cache.get(key)
        if chunk is None:
            chunk = self._source(spec).chunk(index)
            chunk.flags.writeable = False
            self._cache[key] = chunk
            if len(self._cache) > self._cache_chunks:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return chunk

    def minutes(self, spec: SymbolSpec, first_open: int, end: int) -> ChunkArray:
        """The 1m rows with open times in [first_open, end), both minute-aligned and within
        the history. Read-only."""
        if first_open >= end:
            return np.empty((FIELD_COUNT, 0), dtype=np.int64)
        first_chunk, last_chunk = first_open // CHUNK_MS, (end - 1) // CHUNK_MS
        parts = []
        for index in range(first_chunk, last_chunk + 1):
            chunk = self._chunk(spec, index)
            low = (max(first_open, index * CHUNK_MS) - index * CHUNK_MS) // MINUTE_MS
            high = (min(end, (index + 1) * CHUNK_MS) - index * CHUNK_MS) // MINUTE_MS
            parts.append(chunk[:, low:high] if (low, high) != (0, CHUNK_MINUTES) else chunk)
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def closed(self, spec: SymbolSpec, interval_ms: int, first_open: int, last_open: int) -> list[Candle]:
        """Closed candles with open times first_open … last_open (aligned, within the history)."""
        if last_open < first_open:
            return []
        rows = self.minutes(spec, first_open, last_open + interval_ms)
        return candles_from_rows(
            aggregate(rows, interval_ms // MINUTE_MS), first_open, interval_ms, closed=True
        )

    def forming(self, spec: SymbolSpec, interval_ms: int, now_ms: int) -> Candle:
        """The candle that contains `now_ms`, as it stands at `now_ms`."""
        bucket_open = floor_to(now_ms, interval_ms)
        minute_open = floor_to(now_ms, MINUTE_MS)
        final_minute = self.minutes(spec, minute_open, minute_open + MINUTE_MS)[:, 0].tolist()
        minute = forming_minute(
            final_minute,
            minute_open=minute_open,
            tick=spec.tick,
            step=spec.step,
            checkpoint=checkpoint_at(now_ms),
        )
        values = combine_forming(self.minutes(spec, bucket_open, minute_open), minute)
        return make_candle(bucket_open, interval_ms, values, closed=False)

    def candle(self, spec: SymbolSpec, interval_ms: int, open_ms: int, now_ms: int) -> Candle:
        """The candle opening at `open_ms`: final if closed by `now_ms`, forming otherwise."""
        if open_ms + interval_ms <= now_ms:
            return self.closed(spec, interval_ms, open_ms, open_ms)[0]
        return self.forming(spec, interval_ms, now_ms)

    def last_price(self, spec: SymbolSpec, now_ms: int) -> int:
        """The current price: the close of the forming 1m candle."""
        return self.forming(spec, MINUTE_MS, now_ms).close

    def klines(
        self,
        spec: SymbolSpec,
        interval_ms: int,
        now_ms: int,
        *,
        start_ms: int | None,
        end_ms: int | None,
        limit: int,
    ) -> list[Candle]:
        """As Binance selects them: open times >= startTime and <= endTime; `limit` from the
        start when startTime is given, else the latest `limit`; the last may be forming."""
        low, high = self.history_start_ms, floor_to(now_ms, interval_ms)
        if start_ms is not None:
            low = max(low, ceil_to(start_ms, interval_ms))
        if end_ms is not None:
            high = min(high, floor_to(end_ms, interval_ms))
        if low > high:
            return []
        if start_ms is not None:
            high = min(high, low + (limit - 1) * interval_ms)
        else:
            low = max(low, high - (limit - 1) * interval_ms)
        forming_open = floor_to(now_ms, interval_ms)
        candles = self.closed(spec, interval_ms, low, min(high, forming_open - interval_ms))
        if high == forming_open:
            candles.append(self.forming(spec, interval_ms, now_ms))
        return candles

    def closed_between(
        self, spec: SymbolSpec, interval_ms: int, now_ms: int, *, start_ms: int | None, end_ms: int | None
    ) -> list[Candle]:
        """Every closed candle with open time in [startTime, endTime] (the truth endpoint)."""
        low, high = self._closed_bounds(interval_ms, now_ms, start_ms, end_ms)
        return self.closed(spec, interval_ms, low, high)

    def count_closed_between(
        self, interval_ms: int, now_ms: int, *, start_ms: int | None, end_ms: int | None
    ) -> int:
        low, high = self._closed_bounds(interval_ms, now_ms, start_ms, end_ms)
        return max(0, (high - low) // interval_ms + 1)

    def _closed_bounds(
        self, interval_ms: int, now_ms: int, start_ms: int | None, end_ms: int | None
    ) -> tuple[int, int]:
        """Open times of the first and last closed candle in [start_ms, end_ms] by `now_ms`."""
        low = (
            self.history_start_ms
            if start_ms is None
            else max(self.history_start_ms, ceil_to(start_ms, interval_ms))
        )
        high = floor_to(now_ms, interval_ms) - interval_ms
        if end_ms is not None:
            high = min(high, floor_to(end_ms, interval_ms))
        return low, high
