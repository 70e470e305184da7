"""The ingest process's commit hook holds committed batches while the writer has more of the
burst to commit, and hands them over (broadcasts, then derived candles and rules in its thread)
in commit order once the writer is idle, or after `hold_max_s`. The latency monitor records each
candle at its commit, held or not."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from audit.monitors import ServiceLevelMonitor
from marketdata.core.klines import Kline
from marketdata.core.timeframes import Timeframe
from marketdata.ingest import derived
from marketdata.ingest.derived import DerivedRefresher
from marketdata.services import CandleWrite
from marketdata.tests.test_engine_frames import BusyWriter

T0 = 1_677_628_800_000


def batch(*open_times: int) -> list[CandleWrite]:
    price = Decimal("100")
    return [
        CandleWrite(
            1,
            Kline("BTCUSDT", Timeframe.M1, t, price, price, price, price, price, price, 1, True, t + 60_000),
            "ws",
        )
        for t in open_times
    ]


@pytest.fixture
def handed(monkeypatch):
    """What the hook handed over, in order: ("broadcast" | "thread", candle open times)."""
    seen: list[tuple[str, list[int]]] = []
    monkeypatch.setattr(
        derived,
        "candles_broadcast",
        lambda events: seen.append(("broadcast", [e.open_time_ms for e in events])),
    )
    return seen


def refresher_for(handed, **options) -> DerivedRefresher:
    refresher = DerivedRefresher(**options)

    def in_thread(batch: list[CandleWrite], events: object) -> None:
        handed.append(("thread", [write.kline.open_time_ms for write in batch]))

    refresher._after_commit = in_thread  # type: ignore[method-assign]
    return refresher


def test_batches_wait_for_the_writer_to_be_idle_then_go_in_commit_order(handed):
    async def scenario() -> None:
        monitor = ServiceLevelMonitor(key="slo.test", title="t", threshold_ms=300, grace_s=0)
        refresher = refresher_for(handed, latency_monitor=monitor, hold_max_s=60)
        writer = BusyWriter()
        refresher.hold_while_busy(writer)
        refresher.after_commit(batch(T0), (T0 + 60_010) / 1000, 0.001)
        refresher.after_commit(batch(T0 + 60_000), (T0 + 120_020) / 1000, 0.001)
        await asyncio.sleep(0.05)
        assert handed == []  # held while the burst is being written
        assert len(writer.waiting) == 1  # asked once
        assert monitor.p95("1m", now=(T0 + 120_030) / 1000)[1] == 2  # recorded at commit
        writer.idle()
        refresher.close()  # waits for the thread
        # Each in commit order (the thread runs beside the loop: the two lists interleave).
        assert [times for kind, times in handed if kind == "broadcast"] == [[T0], [T0 + 60_000]]
        assert [times for kind, times in handed if kind == "thread"] == [[T0], [T0 + 60_000]]

    asyncio.run(scenario())


def test_an_idle_writer_means_at_once_and_a_busy_one_at_most_hold_max_s(handed):
    async def scenario() -> None:
        refresher = refresher_for(handed, hold_max_s=0.05)
        writer = BusyWriter()
        writer.busy = False
        refresher.hold_while_busy(writer)
        refresher.after_commit(batch(T0), 0.0, 0.001)
        assert ("broadcast", [T0]) in handed  # not held: nothing else to commit
        writer.busy = True
        refresher.after_commit(batch(T0 + 60_000), 0.0, 0.001)
        await asyncio.sleep(0.01)
        assert [times for _, times in handed if times == [T0 + 60_000]] == []
        await asyncio.sleep(0.2)  # the writer stays busy (a long backfill): released anyway
        assert ("broadcast", [T0 + 60_000]) in handed
        # Still busy: the next batch is held again, and again for at most hold_max_s.
        refresher.after_commit(batch(T0 + 120_000), 0.0, 0.001)
        await asyncio.sleep(0.2)
        assert ("broadcast", [T0 + 120_000]) in handed
        refresher.close()
        assert ("thread", [T0 + 60_000]) in handed

    asyncio.run(scenario())
