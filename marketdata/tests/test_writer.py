"""The batching writer: everything submitted is written once, even in bursts, through failures
of the database connection; a write that cannot succeed stops ingestion loudly."""

import asyncio

import pytest
from django.db import connection

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

    async def burst() -> None:
        async with writer.running():
            for minute in range(3):
                for symbol in symbols:
                    write = CandleWrite(
                        symbol.pk, kline(symbol.symbol, open_time_ms=T0 + minute * 60_000), "ws"
                    )
                    writer.submit(write)
                    writer.submit(write)  # a duplicate frame
                await asyncio.sleep(0)  # let the writers take what is queued

    asyncio.run(burst())
    assert Candle.objects.count() == 600
    stats = writer.stats
    assert stats.candles == 1200
    assert stats.written == 600
    assert sum(committed) == 1200
    assert stats.batches < 1200  # batched, not one write per candle


def test_a_failed_write_stops_the_loop_and_refuses_new_work():
    writer = CandleWriter()
    stop = asyncio.Event()

    async def run() -> None:
        async with writer.running(on_failure=stop):
            writer.submit(CandleWrite(999_999, kline(), "ws"))  # no such symbol: a foreign-key error
            await asyncio.wait_for(stop.wait(), timeout=10)

    with pytest.raises(RuntimeError, match="the candle writer failed"):
        asyncio.run(run())
    assert stop.is_set()
    with pytest.raises(RuntimeError, match="the candle writer has stopped"):
        writer.submit(CandleWrite(1, kline(), "ws"))


@pytest.mark.postgres
def test_a_lost_database_connection_is_reopened_and_nothing_is_lost():
    symbols = SymbolFactory.create_batch(50)
    writer = CandleWriter(connections=1)

    def terminate_writer_backends() -> int:
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = 'oasis-candle-writer' AND pid <> pg_backend_pid()"
                )
                return int(cursor.fetchone()[0])
        finally:
            connection.close()  # this thread's own connection

    async def run() -> int:
        async with writer.running():
            for symbol in symbols:
                writer.submit(CandleWrite(symbol.pk, kline(symbol.symbol, open_time_ms=T0), "ws"))
            while writer.stats.candles < 50:
                await asyncio.sleep(0.01)
            killed = await asyncio.to_thread(terminate_writer_backends)
            for symbol in symbols:
                writer.submit(CandleWrite(symbol.pk, kline(symbol.symbol, open_time_ms=T0 + 60_000), "ws"))
        return killed

    assert asyncio.run(run()) == 1
    assert Candle.objects.count() == 100
    assert writer.stats.written == 100


def test_when_idle_waits_for_the_whole_burst_not_a_pause_between_batches():
    symbols = SymbolFactory.create_batch(40)
    writer = CandleWriter(idle_settle_s=0.2)
    calls: list[tuple[int, float]] = []  # (candles committed by then, when)

    def busy() -> bool:
        return writer.busy

    async def burst() -> None:
        async with writer.running():
            loop = asyncio.get_running_loop()
            writer.when_idle(lambda: calls.append((writer.stats.candles, loop.time())))
            await asyncio.sleep(0.05)
            assert calls == [(0, calls[0][1])]  # idle at the time of asking: called at once
            calls.clear()
            for symbol in symbols[:20]:
                writer.submit(CandleWrite(symbol.pk, kline(symbol.symbol, open_time_ms=T0), "ws"))
            assert busy()
            writer.when_idle(lambda: calls.append((writer.stats.candles, loop.time())))
            while busy():
                await asyncio.sleep(0.005)
            idle_at = loop.time()
            await asyncio.sleep(0.05)  # a pause within the burst: the rest of it comes
            for symbol in symbols[20:]:
                writer.submit(CandleWrite(symbol.pk, kline(symbol.symbol, open_time_ms=T0), "ws"))
            await asyncio.sleep(0.6)
            assert len(calls) == 1, calls  # once, after the whole burst
            assert calls[0][0] == 40
            assert calls[0][1] >= idle_at + 0.2

    asyncio.run(burst())
