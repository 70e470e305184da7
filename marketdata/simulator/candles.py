"""Candles as Binance serves them: aggregation of 1m rows into longer intervals, the state of a
still-forming candle, and the REST/WebSocket shapes."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from marketdata.simulator.intervals import MINUTE_MS
from marketdata.simulator.series import (
    CLOSE,
    FIELD_COUNT,
    FIRST_ID,
    HIGH,
    LAST_ID,
    LOW,
    OPEN,
    QUOTE_VOLUME,
    TAKER_BASE,
    TAKER_QUOTE,
    TRADES,
    VOLUME,
    ChunkArray,
)
from marketdata.simulator.units import format_units

# A forming 1m candle advances through this many checkpoints per minute (one per simulated
# second); its state at a checkpoint is a deterministic function of the final candle.
CHECKPOINTS = 60
_NO_ID = np.iinfo(np.int64).max


class Candle(NamedTuple):
    """Amounts in 1e-8 units; times in ms since the epoch (UTC)."""

    open_time: int
    close_time: int  # open_time + interval - 1, as Binance
    open: int
    high: int
    low: int
    close: int
    volume: int
    quote_volume: int
    trades: int
    taker_base: int
    taker_quote: int
    first_trade_id: int
    last_trade_id: int
    closed: bool

    def rest_row(self) -> list[Any]:
        """A row of `GET /api/v3/klines`."""
        return [
            self.open_time,
            format_units(self.open),
            format_units(self.high),
            format_units(self.low),
            format_units(self.close),
            format_units(self.volume),
            self.close_time,
            format_units(self.quote_volume),
            self.trades,
            format_units(self.taker_base),
            format_units(self.taker_quote),
            "0",
        ]

    def stream_payload(self, symbol: str, interval: str) -> dict[str, Any]:
        """The `k` object of a kline stream event (key order as Binance sends it)."""
        return {
            "t": self.open_time,
            "T": self.close_time,
            "s": symbol,
            "i": interval,
            "f": self.first_trade_id,
            "L": self.last_trade_id,
            "o": format_units(self.open),
            "c": format_units(self.close),
            "h": format_units(self.high),
            "l": format_units(self.low),
            "v": format_units(self.volume),
            "n": self.trades,
            "x": self.closed,
            "q": format_units(self.quote_volume),
            "V": format_units(self.taker_base),
            "Q": format_units(self.taker_quote),
            "B": "0",
        }


def make_candle(open_time: int, interval_ms: int, values: Sequence[int], *, closed: bool) -> Candle:
    """A candle from its values in chunk-row order."""
    o, h, l, c, v, q, n, tb, tq, first, last = values  # noqa: E741 (Binance's letters)
    return Candle(open_time, open_time + interval_ms - 1, o, h, l, c, v, q, n, tb, tq, first, last, closed)


def aggregate(minutes: ChunkArray, per_bucket: int) -> ChunkArray:
    """Buckets of `per_bucket` consecutive 1m rows: open = first open, high = max, low = min,
    close = last close, volumes and trades summed, trade ids first/last of the bucket."""
    if per_bucket == 1:
        return minutes
    buckets = minutes.shape[1] // per_bucket
    grouped = minutes[:, : buckets * per_bucket].reshape(FIELD_COUNT, buckets, per_bucket)
    out = np.empty((FIELD_COUNT, buckets), dtype=np.int64)
    out[OPEN] = grouped[OPEN, :, 0]
    out[HIGH] = grouped[HIGH].max(axis=1)
    out[LOW] = grouped[LOW].min(axis=1)
    out[CLOSE] = grouped[CLOSE, :, -1]
    for field in (VOLUME, QUOTE_VOLUME, TRADES, TAKER_BASE, TAKER_QUOTE):
        out[field] = grouped[field].sum(axis=1)
    first = np.where(grouped[FIRST_ID] >= 0, grouped[FIRST_ID], _NO_ID).min(axis=1)
    out[FIRST_ID] = np.where(first == _NO_ID, -1, first)
    out[LAST_ID] = grouped[LAST_ID].max(axis=1)
    return out


def candles_from_rows(rows: ChunkArray, first_open: int, interval_ms: int, *, closed: bool) -> list[Candle]:
    candles = []
    for offset, values in enumerate(rows.T.tolist()):
        open_time = first_open + offset * interval_ms
        candles.append(make_candle(open_time, interval_ms, values, closed=closed))
    return candles


def checkpoint_at(now_ms: int) -> int:
    """Which checkpoint of its minute the simulated time `now_ms` is at (0 … CHECKPOINTS-1)."""
    return (now_ms % MINUTE_MS) * CHECKPOINTS // MINUTE_MS


def forming_minute(
    final: Sequence[int], *, minute_open: int, tick: int, step: int, checkpoint: int
) -> list[int]:
    """A 1m candle's values (chunk-row order) at `checkpoint`, consistent with its final values:
    the price path starts at the open, touches the high and the low at fixed checkpoints and
    ends at the close; volumes and trades grow to theirs."""
    o, h, l, c, v, q, n, tb, tq, first, _last = final  # noqa: E741 (Binance's letters)
    if n == 0:
        return list(final)
    minute = minute_open // MINUTE_MS
    at_high = 1 + minute % (CHECKPOINTS - 1)
    at_low = 1 + (minute // (CHECKPOINTS - 1) + at_high) % (CHECKPOINTS - 1)
    if at_low == at_high:
        at_low = at_high % (CHECKPOINTS - 1) + 1
    anchors = sorted([(0, o), (at_high, h), (at_low, l), (CHECKPOINTS, c)])
    price = _path_price(anchors, checkpoint, tick, l, h)
    # The path is monotone between anchors, so its extremes so far are among the anchors
    # passed and the current price.
    passed = [anchor_price for index, anchor_price in anchors if index <= checkpoint]
    share, whole = checkpoint + 1, CHECKPOINTS + 1
    volume = _share(v, step, share, whole)
    taker = min(volume, _share(tb, step, share, whole))
    trades = max(1, n * share // whole)
    return [
        o,
        max(*passed, price),
        min(*passed, price),
        price,
        volume,
        q * volume // v if v else 0,
        trades,
        taker,
        tq * taker // tb if tb else 0,
        first,
        first + trades - 1,
    ]


def _share(amount: int, step: int, share: int, whole: int) -> int:
    if amount == 0:
        return 0
    if amount % step == 0:
        return max(1, amount // step * share // whole) * step
    return max(1, amount * share // whole)


def _path_price(anchors: list[tuple[int, int]], index: int, tick: int, low: int, high: int) -> int:
    for (start_index, start_price), (end_index, end_price) in itertools.pairwise(anchors):
        if start_index <= index <= end_index:
            if index == start_index:
                return start_price
            if index == end_index:
                return end_price
            price = start_price + (end_price - start_price) * (index - start_index) // (
                end_index - start_index
            )
            price -= price % tick
            return min(max(price, low), high)
    raise AssertionError(f"checkpoint {index} outside the path")


def combine_forming(closed_minutes: ChunkArray, forming: Sequence[int]) -> list[int]:
    """A longer candle still forming: its closed minutes so far plus the forming minute."""
    if closed_minutes.shape[1] == 0:
        return list(forming)
    so_far = aggregate(closed_minutes, closed_minutes.shape[1])[:, 0].tolist()
    first = so_far[FIRST_ID] if so_far[FIRST_ID] >= 0 else forming[FIRST_ID]
    last = forming[LAST_ID] if forming[LAST_ID] >= 0 else so_far[LAST_ID]
    return [
        so_far[OPEN],
        max(so_far[HIGH], forming[HIGH]),
        min(so_far[LOW], forming[LOW]),
        forming[CLOSE],
        *(
            so_far[field] + forming[field]
            for field in (VOLUME, QUOTE_VOLUME, TRADES, TAKER_BASE, TAKER_QUOTE)
        ),
        first,
        last,
    ]
