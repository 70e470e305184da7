"""Ingestion's health watch: a stream silent past `stale_after_s` gets its connection
reconnected (once per period) and a critical alert while it lasts; reconnections piling up
within the storm window are an alert too; both resolve when the condition clears."""

from __future__ import annotations

import asyncio
from collections import deque

import pytest

from audit.models import Alert
from marketdata.core.timeframes import Timeframe
from marketdata.exchanges import exchange_profile
from marketdata.ingest.engine import IngestEngine, stream_name

pytestmark = pytest.mark.django_db(transaction=True)


class FakeConnection:
    """Stands in for a StreamConnection's two health hooks (no socket is involved here)."""

    def __init__(self, streams: list[str]) -> None:
        self.streams = streams
        self.reconnects: deque[float] = deque()
        self.requested: list[str] = []

    def request_reconnect(self, reason: str) -> bool:
        self.requested.append(reason)
        return True


def alert_of(key: str) -> Alert:
    from django.db import connection

    try:
        return Alert.objects.get(key=key)
    finally:
        connection.close()  # a worker thread's own connection


def alert_exists(key: str) -> bool:
    from django.db import connection

    try:
        return Alert.objects.filter(key=key).exists()
    finally:
        connection.close()


def test_stale_streams_are_reconnected_and_alerted_then_resolved():
    engine = IngestEngine(
        profile=exchange_profile("sim"),
        symbol_ids={"BTCUSDT": 1, "ETHUSDT": 2},
        timeframes=[Timeframe.M1],
        writer=None,  # type: ignore[arg-type]
        stale_after_s=30,
        storm_reconnects=3,
        storm_window_s=300,
        health_alerts=True,
    )
    connection = FakeConnection([stream_name("BTCUSDT", Timeframe.M1), stream_name("ETHUSDT", Timeframe.M1)])
    engine._connections = dict.fromkeys(connection.streams, connection)  # type: ignore[arg-type]

    async def scenario() -> None:
        stale = [("BTCUSDT", Timeframe.M1, 45.0)]
        engine._health(stale, now=1000.0)
        engine._health(stale, now=1010.0)  # within the period: no second reconnect
        await asyncio.gather(*engine._health_calls)
        assert connection.requested == ["stream silent over 30 s"]
        engine._health(stale, now=1031.0)
        assert len(connection.requested) == 2
        await asyncio.gather(*engine._health_calls)
        alert = await asyncio.to_thread(alert_of, "ingest.stale.sim")
        assert (alert.severity, alert.state) == ("critical", "firing")
        assert "BTCUSDT 1m 45 s" in alert.detail

        connection.reconnects.extend([1000.0, 1010.0, 1020.0])
        engine._health([], now=1040.0)
        await asyncio.gather(*engine._health_calls)
        storm = await asyncio.to_thread(alert_of, "ingest.reconnect_storm.sim")
        assert storm.state == "firing"
        stale_alert = await asyncio.to_thread(alert_of, "ingest.stale.sim")
        assert stale_alert.state == "resolved"

        engine._health([], now=1400.0)  # the reconnections left the window
        await asyncio.gather(*engine._health_calls)
        storm = await asyncio.to_thread(alert_of, "ingest.reconnect_storm.sim")
        assert storm.state == "resolved"

    asyncio.run(scenario())
    assert engine.assisted_reconnects == 2


def test_an_ingest_shard_raises_its_own_alerts():
    """Two ingest processes (shards) each judge their own streams: with `instance` set, the keys
    and titles name the process, so one shard's all-clear never resolves the other's alert."""
    engines = [
        IngestEngine(
            profile=exchange_profile("sim"),
            symbol_ids={symbol: index},
            timeframes=[Timeframe.M1],
            writer=None,  # type: ignore[arg-type]
            stale_after_s=30,
            health_alerts=True,
            instance=instance,
        )
        for index, (symbol, instance) in enumerate((("BTCUSDT", "p1"), ("ETHUSDT", "p2")), start=1)
    ]

    async def scenario() -> None:
        engines[0]._health([("BTCUSDT", Timeframe.M1, 45.0)], now=1000.0)
        engines[1]._health([], now=1000.0)  # the other shard is healthy
        await asyncio.gather(*engines[0]._health_calls, *engines[1]._health_calls)
        alert = await asyncio.to_thread(alert_of, "ingest.stale.sim.p1")
        assert alert.state == "firing"
        assert alert.title.endswith("(p1)")
        assert not await asyncio.to_thread(alert_exists, "ingest.stale.sim")

    asyncio.run(scenario())
