"""The engine's handling of single frames: bad ones are counted by kind, logged once, skipped."""

import logging

import orjson

from marketdata.core.timeframes import Timeframe
from marketdata.exchanges import exchange_profile
from marketdata.ingest.engine import IngestEngine
from marketdata.services import CandleWrite

T0 = 1_677_628_800_000


class ListWriter:
    def __init__(self) -> None:
        self.writes: list[CandleWrite] = []

    def submit(self, write: CandleWrite) -> None:
        self.writes.append(write)


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


def engine(writer: ListWriter) -> IngestEngine:
    return IngestEngine(
        profile=exchange_profile("sim"),
        symbol_ids={"BTCUSDT": 1},
        timeframes=[Timeframe.M1],
        writer=writer,  # type: ignore[arg-type]
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
