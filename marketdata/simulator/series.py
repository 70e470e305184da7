"""Where 1-minute candles come from: a seeded synthetic market, or a replayed CSV.

Both produce *chunks*: 240 consecutive 1m candles (4 hours, UTC epoch-aligned, so every served
interval divides a chunk) as one int64 array of shape (FIELD_COUNT, 240), amounts in 1e-8
units. A chunk depends only on (seed, symbol, chunk index), never on which chunks were asked
for before, so generation is lazy and any window of history can be produced in any order.

The synthetic price is a random walk on three levels, so that any point of it costs little to
reach: an integer walk with one step per block of 256 chunks (about 43 days) summed from a
fixed origin; inside each block an integer Brownian bridge with one point per chunk (both exact,
so the walk at a chunk is the same whichever way it is reached), folded into a band around the
symbol's base price so it neither drifts away nor reaches zero; and inside each chunk a
floating-point Brownian bridge of 1m closes between the chunk's two anchors, so neighbouring
chunks join exactly."""

from __future__ import annotations

import functools
import math
from decimal import Decimal
from typing import Protocol

import numpy as np
import numpy.typing as npt

from marketdata.simulator.intervals import MINUTE_MS
from marketdata.simulator.randomness import derive_key, normals, normals_from, uniforms
from marketdata.simulator.symbols import SymbolSpec
from marketdata.simulator.units import SCALE

CHUNK_MINUTES = 240
CHUNK_MS = CHUNK_MINUTES * MINUTE_MS

# Rows of a chunk array.
OPEN, HIGH, LOW, CLOSE, VOLUME, QUOTE_VOLUME, TRADES, TAKER_BASE, TAKER_QUOTE, FIRST_ID, LAST_ID = range(11)
FIELD_COUNT = 11

# Trade ids: contiguous inside a chunk, each chunk starting at index * TRADE_IDS_PER_CHUNK, so
# ids grow with time without summing every earlier chunk (Binance's are contiguous forever).
TRADE_IDS_PER_CHUNK = 10_000_000
MAX_MINUTE_TRADES = 40_000

# The coarse walk is summed from 2017-01-01 00:00 UTC (Binance's launch year), in blocks.
WALK_ORIGIN_CHUNK = 1_483_228_800_000 // CHUNK_MS
WALK_BLOCK_CHUNKS = 256
# The folded walk stays within ±FOLD_LIMIT thousandths of log-price around the base price.
FOLD_LIMIT = 700

ChunkArray = npt.NDArray[np.int64]
_MINUTE_LANES = 17


class MinuteSource(Protocol):
    def chunk(self, index: int) -> ChunkArray:
        """The 240 1m candles of chunk `index` (open times index * CHUNK_MS + i * 60_000)."""
        ...


def fill_trade_ids(index: int, chunk: ChunkArray) -> None:
    trades = chunk[TRADES]
    ends = np.cumsum(trades)
    first = index * TRADE_IDS_PER_CHUNK + ends - trades
    traded = trades > 0
    chunk[FIRST_ID] = np.where(traded, first, -1)
    chunk[LAST_ID] = np.where(traded, first + trades - 1, -1)


@functools.lru_cache(maxsize=2 * FOLD_LIMIT + 1)
def _exp_thousandths(value: int) -> float:
    # Decimal's exp is correctly rounded, hence the same on every platform.
    return float((Decimal(value) / 1000).exp())


def fold(value: int, limit: int = FOLD_LIMIT) -> int:
    """Reflect an unbounded walk into [-limit, limit] (a continuous, bounded walk)."""
    period = 4 * limit
    position = (value + limit) % period
    if position > 2 * limit:
        position = period - position
    return position - limit


class SyntheticSeries:
    def __init__(self, spec: SymbolSpec, seed: int) -> None:
        self._spec = spec
        key = derive_key("oasis-sim", seed, spec.name)
        self._block_key = derive_key(key, "block")
        self._path_key = derive_key(key, "path")
        self._minute_key = derive_key(key, "minute")
        self._tick_price = spec.tick / SCALE
        self._step_price = spec.step / SCALE
        self._minute_sigma = spec.chunk_volatility / 1000 / math.sqrt(CHUNK_MINUTES)
        self._typical_steps = spec.minute_quote_volume / (spec.base_price * self._step_price)
        self._block_paths: dict[int, npt.NDArray[np.int64]] = {}
        self._anchors: dict[int, float] = {}

    def _walk(self, index: int) -> int:
        """The coarse integer walk at chunk `index` (thousandths of log-price)."""
        block, offset = divmod(index - WALK_ORIGIN_CHUNK, WALK_BLOCK_CHUNKS)
        return int(self._block_path(block)[offset])

    def _block_path(self, block: int) -> npt.NDArray[np.int64]:
        """The walk at each chunk of `block`, from its start to its end (both exact sums of the
        block steps since the origin)."""
        path = self._block_paths.get(block)
        if path is None:
            scale = self._spec.chunk_volatility * math.sqrt(WALK_BLOCK_CHUNKS)
            low, high = min(block, 0), max(block + 1, 0)
            steps = np.rint(normals(self._block_key, np.arange(low, high, dtype=np.int64)) * scale)
            steps = steps.astype(np.int64)
            total = int(steps[block - low])
            start = int(steps[: block - low].sum()) if block >= 0 else -int(steps[block - low :].sum())
            counters = np.arange(block * WALK_BLOCK_CHUNKS, (block + 1) * WALK_BLOCK_CHUNKS, dtype=np.int64)
            cumulative = np.concatenate(([0.0], np.cumsum(normals(self._path_key, counters))))
            fraction = np.arange(WALK_BLOCK_CHUNKS + 1, dtype=np.float64) / WALK_BLOCK_CHUNKS
            bridge = cumulative - fraction * cumulative[-1]
            path = np.rint(total * fraction + self._spec.chunk_volatility * bridge).astype(np.int64)
            path[0], path[-1] = 0, total
            path += start
            if len(self._block_paths) > 4:
                self._block_paths.clear()
            self._block_paths[block] = path
        return path

    def _anchor_price(self, index: int) -> float:
        price = self._anchors.get(index)
        if price is None:
            if len(self._anchors) > 64:
                self._anchors.clear()
            price = self._spec.base_price * _exp_thousandths(fold(self._walk(index)))
            self._anchors[index] = price
        return price

    def _anchor_ticks(self, index: int) -> int:
        return max(1, round(self._anchor_price(index) / self._tick_price))

    def chunk(self, index: int) -> ChunkArray:
        n = CHUNK_MINUTES
        minutes = np.arange(index * n, (index + 1) * n, dtype=np.int64)
        start_price = self._anchor_price(index)
        end_price = self._anchor_price(index + 1)
        previous_close = self._anchor_ticks(index)

        # One hash call for all of the chunk's random numbers, one lane per purpose.
        lanes = uniforms(self._minute_key, minutes, _MINUTE_LANES)
        walk = np.cumsum(normals_from(lanes[0:4]))
        fraction = np.arange(1, n + 1, dtype=np.float64) / n
        bridge = walk - fraction * walk[-1]
        close_price = start_price + (end_price - start_price) * fraction
        close_price = close_price + (start_price * self._minute_sigma) * bridge
        close = np.maximum(np.rint(close_price / self._tick_price).astype(np.int64), 1)
        close[-1] = self._anchor_ticks(index + 1)

        # Minutes without trades keep the previous close (the last minute always trades, so
        # the next chunk opens where this one closed).
        traded = lanes[12] >= self._spec.zero_trade_rate
        traded[-1] = True
        if not traded.all():
            last_traded = np.maximum.accumulate(np.where(traded, np.arange(n), -1))
            close = np.where(last_traded >= 0, close[np.maximum(last_traded, 0)], previous_close)
        open_ = np.empty(n, dtype=np.int64)
        open_[0] = previous_close
        open_[1:] = close[:-1]

        wick_scale = start_price * self._minute_sigma * 0.6 / self._tick_price
        wick_high = np.floor(np.abs(normals_from(lanes[4:8])) * wick_scale).astype(np.int64)
        wick_low = np.floor(np.abs(normals_from(lanes[8:12])) * wick_scale).astype(np.int64)
        high = np.where(traded, np.maximum(open_, close) + wick_high, open_)
        low = np.where(traded, np.maximum(np.minimum(open_, close) - wick_low, 1), open_)

        size_1, size_2 = lanes[13], lanes[14]
        steps = np.floor(self._typical_steps * (0.05 + 1.5 * size_1 * size_1 + 0.5 * size_2)).astype(np.int64)
        steps = np.where(traded, steps + 1, 0)
        trades = np.floor(self._spec.minute_trades * (0.2 + 1.6 * lanes[15]))
        trades = np.minimum(np.minimum(trades.astype(np.int64) + 1, steps), MAX_MINUTE_TRADES)
        taker_steps = np.floor(steps * (0.25 + 0.5 * lanes[16])).astype(np.int64)

        chunk = np.empty((FIELD_COUNT, n), dtype=np.int64)
        tick, step = self._spec.tick, self._spec.step
        chunk[OPEN] = open_ * tick
        chunk[HIGH] = high * tick
        chunk[LOW] = low * tick
        chunk[CLOSE] = close * tick
        chunk[VOLUME] = steps * step
        chunk[TRADES] = trades
        chunk[TAKER_BASE] = taker_steps * step
        _fill_quote_volumes(chunk)
        fill_trade_ids(index, chunk)
        return chunk


def _fill_quote_volumes(chunk: ChunkArray) -> None:
    """Quote volume = base volume x the candle's mean price (OHLC/4), rounded to 1e-8."""
    mean_price = (chunk[OPEN] + chunk[HIGH] + chunk[LOW] + chunk[CLOSE]).astype(np.float64) / (4 * SCALE)
    chunk[QUOTE_VOLUME] = np.rint(chunk[VOLUME].astype(np.float64) * mean_price).astype(np.int64)
    chunk[TAKER_QUOTE] = np.rint(chunk[TAKER_BASE].astype(np.float64) * mean_price).astype(np.int64)


class ReplaySeries:
    """Real 1m candles, minute `origin_minute` being the file's first row; after the last row
    the file starts over (a price jump at the seam)."""

    def __init__(self, rows: ChunkArray, origin_minute: int) -> None:
        self._rows = rows
        self._origin_minute = origin_minute

    def chunk(self, index: int) -> ChunkArray:
        minutes = np.arange(index * CHUNK_MINUTES, (index + 1) * CHUNK_MINUTES, dtype=np.int64)
        positions = (minutes - self._origin_minute) % self._rows.shape[1]
        chunk = self._rows[:, positions]
        fill_trade_ids(index, chunk)
        return chunk


def replay_rows(
    open_: list[int], high: list[int], low: list[int], close: list[int], volume: list[int]
) -> ChunkArray:
    """Chunk-layout rows for replayed candles (which carry no trade counts, quote or taker
    volumes): trades from the volume, taker buys half of it."""
    rows = np.zeros((FIELD_COUNT, len(open_)), dtype=np.int64)
    rows[OPEN], rows[HIGH], rows[LOW], rows[CLOSE], rows[VOLUME] = open_, high, low, close, volume
    rows[TRADES] = np.where(rows[VOLUME] > 0, np.minimum(1 + rows[VOLUME] // 1_000_000, MAX_MINUTE_TRADES), 0)
    rows[TAKER_BASE] = rows[VOLUME] // 2
    _fill_quote_volumes(rows)
    return rows
