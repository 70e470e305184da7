"""The batching writer thread: everything submitted is written once, even in bursts."""

import pytest

from marketdata.ingest.writer import CandleWriter
from marketdata.models import Candle
from marketdata.services import CandleWrite
from marketdata.tests.factories import SymbolFactory, kline

pytestmark = pytest.mark.django_db(transaction=True)
T0 = 1_677_628_800_000


def test_a_burst_is_written_in_few_batches_and_nothing_twice():
    symbols = SymbolFactory.create_batch(200)
    committed = []
    writer = CandleWriter(on_committed=lambda batch, at, took: committed.append(len(batch)))
    writer.start()
    for minute in range(3):
        for symbol in symbols:
            write = CandleWrite(symbol.pk, kline(symbol.symbol, open_time_ms=T0 + minute * 60_000), "ws")
            writer.submit(write)
            writer.submit(write)  # a duplicate frame
    writer.stop()
    assert Candle.objects.count() == 600
    stats = writer.stats
    assert stats.candles == 1200
    assert stats.written == 600
    assert sum(committed) == 1200
    assert stats.batches < 1200  # batched, not one write per candle


def test_stop_refuses_new_work_after_a_failure():
    writer = CandleWriter()
    writer.start()
    writer.submit(CandleWrite(999_999, kline(), "ws"))  # no such symbol: a foreign-key error
    with pytest.raises(RuntimeError, match="the candle writer failed"):
        writer.stop()
    with pytest.raises(RuntimeError, match="the candle writer has stopped"):
        writer.submit(CandleWrite(1, kline(), "ws"))
