"""Market-data tasks delivered for real: through Redis to a Celery worker consuming only the
stream's shard queue (so the routing is what brought it there), and the result in the database."""

import time

import pytest
from django.db import connections

from marketdata.core.timeframes import Timeframe
from marketdata.models import Candle
from marketdata.services import CandleWrite, candles_upsert_closed
from marketdata.tasks import resample_refresh, stream_queue
from marketdata.tests.factories import SymbolFactory, kline

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]
T0 = 1_677_628_800_000
M = 60_000


def test_a_refresh_is_routed_to_its_streams_shard_and_run_by_a_worker(settings):
    from celery.contrib.testing.worker import start_worker
    from celery.signals import task_postrun

    from oasis_site.celery import app

    settings.OASIS_DERIVATIONS = ((Timeframe.M1, Timeframe.M3),)
    symbol = SymbolFactory.create()
    candles_upsert_closed(
        writes=[CandleWrite(symbol.pk, kline(open_time_ms=T0 + n * M), "rest") for n in range(3)]
    )

    def close_connections(**_: object) -> None:
        connections.close_all()  # the worker thread's own connection: closed, not left to the test DB

    task_postrun.connect(close_connections, weak=False)
    try:
        with start_worker(
            app, pool="solo", concurrency=1, queues=[stream_queue(symbol.pk, "1m")], perform_ping_check=False
        ):
            resample_refresh.apply_async(args=(symbol.pk, "1m", T0, T0 + 2 * M))
            deadline = time.monotonic() + 30
            while not Candle.objects.filter(timeframe="3m").exists():
                assert time.monotonic() < deadline, (
                    "the worker on the stream's shard queue never ran the task"
                )
                time.sleep(0.1)
    finally:
        task_postrun.disconnect(close_connections)
    derived = Candle.objects.get(timeframe="3m")
    assert (derived.source, int(derived.open_time.timestamp() * 1000)) == ("resampled", T0)
