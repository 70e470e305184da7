"""The engine's handling of single frames: bad ones are counted by kind, logged once, skipped."""

import asyncio
import logging
import time
from collections.abc import Callable
from decimal import Decimal

import orjson

from marketdata.core.timeframes import Timeframe
from marketdata.exchanges import exchange_profile
from marketdata.ingest.engine import IngestEngine
from marketdata.services import CandleWrite

T0 = 1_677_628_800_000


class ListWriter:
    busy = False  # writes at once: an update is never held back

    def __init__(self) -> None:
        self.writes: list[CandleWrite] = []

    def submit(self, write: CandleWrite) -> None:
        self.writes.append(write)


class BusyWriter(ListWriter):
    """A writer with a burst to commit until `idle()` is called."""

    busy = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Callable[[], None]] = []

    def when_idle(self, callback: Callable[[], None]) -> None:
        self.waiting.append(callback)

    def idle(self) -> None:
        self.busy = False
        for callback in self.waiting:
            callback()
        self.waiting.clear()


def update(symbol: str, open_time: int, close: str) -> bytes:
    return final(symbol, open_time, close).replace(b'"x":true', b'"x":false')


def final(symbol: str, open_time: int, close: str = "101.00000000") -> bytes:
    body = {
        "t": open_time,
        "T": open_time + 59_999,
        "s": symbol,
        "i": "1m",
        "o": "100.00000000",
        "c": close,
        "h": "102.00000000",
        "l": "99.00000000",
        "v": "1.0",
        "n": 3,
        "x": True,
        "q": "100.0",
    }
    return orjson.dumps({"e": "kline", "E": open_time + 60_001, "s": symbol, "k": body})


def engine(writer: ListWriter, **options) -> IngestEngine:
    return IngestEngine(
        profile=exchange_profile("sim"),
        symbol_ids={"BTCUSDT": 1, "ETHUSDT": 2},
        timeframes=[Timeframe.M1],
        writer=writer,  # type: ignore[arg-type]
        **options,
    )


def test_bad_frames_are_counted_logged_once_and_skipped(caplog):
    caplog.set_level(logging.WARNING)
    writer = ListWriter()
    ingest = engine(writer)
    for raw in (
        b"{oops",
        b"{oops",
        final("BTCUSDT", T0, close="-5"),
        final("DOGEUSDT", T0),
        final("BTCUSDT", T0),
    ):
        ingest.on_frame(raw)
    stats = ingest.stats
    assert (stats.frames, stats.rejected, stats.closed) == (5, 4, 1)
    assert [w.kline.open_time_ms for w in writer.writes] == [T0]
    warnings = [
        r.msg["kind"]
        for r in caplog.records
        if isinstance(r.msg, dict) and r.msg.get("event") == "frame_rejected"
    ]
    assert sorted(warnings) == ["malformed_json", "non_positive_price", "unknown_stream"]


def test_a_duplicate_final_is_ignored_not_written_twice():
    writer = ListWriter()
    ingest = engine(writer)
    ingest.on_frame(final("BTCUSDT", T0))
    ingest.on_frame(final("BTCUSDT", T0))
    assert ingest.stats.ignored == 1
    assert len(writer.writes) == 1


def forming_close(ingest: IngestEngine, symbol: str) -> Decimal | None:
    forming = ingest._buffers[(symbol, Timeframe.M1)].forming
    return None if forming is None else forming.close


def test_updates_wait_while_the_writer_commits_and_keep_their_order():
    async def scenario() -> None:
        writer = BusyWriter()
        ingest = engine(writer, defer_max_s=60)
        buffer = ingest._buffers[("BTCUSDT", Timeframe.M1)]
        ingest.on_frame(update("BTCUSDT", T0, "100.50000000"))
        ingest.on_frame(update("ETHUSDT", T0, "100.70000000"))
        assert buffer.forming is None  # held: the writer is busy
        assert ingest.stats.frames == 2
        # A final is never held, and the updates received before it are handled first: the
        # update of the candle it closes is a forming candle, not a stale frame.
        ingest.on_frame(final("BTCUSDT", T0))
        assert [w.kline.open_time_ms for w in writer.writes] == [T0]
        assert ingest.stats.ignored == 0
        assert forming_close(ingest, "ETHUSDT") == Decimal("100.70000000")
        # Held again until the writer is idle, then handled with the time they were received.
        received_ms = int(time.time() * 1000)
        ingest.on_frame(update("BTCUSDT", T0 + 60_000, "101.25000000"))
        assert forming_close(ingest, "BTCUSDT") is None
        await asyncio.sleep(0.1)
        writer.idle()
        assert forming_close(ingest, "BTCUSDT") == Decimal("101.25000000")
        assert buffer.last_frame_wall_ms is not None
        assert received_ms <= buffer.last_frame_wall_ms < received_ms + 50  # received, not handled
        assert ingest.stats.frames == 4

    asyncio.run(scenario())


def test_held_updates_are_handled_after_defer_max_s_even_if_the_writer_stays_busy():
    async def scenario() -> None:
        writer = BusyWriter()
        ingest = engine(writer, defer_max_s=0.05)
        ingest.on_frame(update("BTCUSDT", T0, "100.50000000"))
        ingest.on_frame(b'{"e":"kline","x":false')  # malformed: counted when handled
        assert ingest.stats.rejected == 0
        await asyncio.sleep(0.2)
        assert ingest._buffers[("BTCUSDT", Timeframe.M1)].forming is not None
        assert ingest.stats.rejected == 1
        assert len(writer.waiting) == 1  # asked once for the idle call, not per held frame

    asyncio.run(scenario())
