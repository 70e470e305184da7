"""Figures read at scrape time, for every process's /metrics: the Celery queues' depth (from the
Redis broker), the unresolved gaps and the kill switch's stored state (from the database).

Both are facts of shared state, not of one process: a gauge set by whichever worker last touched
the state would go stale in the others (prefork children each keep their own). Every process that
loads Django exports the same values; dashboards and alerts read the web job's
(deploy/prometheus/rules/oasis.yml).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from marketdata.models import Gap
from marketdata.selectors import gaps_list
from trading.core.types import KillSwitchState
from trading.selectors import killswitch_state

# The broker is asked at most this long per scrape: a slow Redis must not hang /metrics.
BROKER_TIMEOUT_S = 1.0


def celery_queue_names() -> list[str]:
    """The queues the worker consumes (docker-compose.yml's -Q): default and the shard queues."""
    shards = range(settings.OASIS_MARKETDATA_SHARDS)
    return [
        settings.CELERY_TASK_DEFAULT_QUEUE,
        *(f"marketdata.{i}" for i in shards),
        *(f"rules.{i}" for i in shards),
    ]


def _redis_client() -> Any:
    return redis.Redis.from_url(
        str(settings.REDIS_URL), socket_timeout=BROKER_TIMEOUT_S, socket_connect_timeout=BROKER_TIMEOUT_S
    )


class CeleryQueueCollector(Collector):
    """`oasis_celery_queue_length{queue}`: messages waiting in each queue (tasks taken by a worker
    but not yet acknowledged are not counted: with acks late they sit in Redis's unacked hash).
    `oasis_celery_broker_up`: 1 when the broker answered this scrape. Without REDIS_URL (eager
    Celery, dev/test) there is no broker and neither family has samples."""

    def __init__(self, *, client_factory: Callable[[], Any] = _redis_client, queues: Sequence[str] = ()):
        self._client_factory = client_factory
        self._queues = tuple(queues)
        self._client: Any = None

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("oasis_celery_queue_length", "", labels=["queue"])
        yield GaugeMetricFamily("oasis_celery_broker_up", "")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lengths = GaugeMetricFamily(
            "oasis_celery_queue_length",
            "Messages waiting in each Celery queue (Redis broker).",
            labels=["queue"],
        )
        up = GaugeMetricFamily("oasis_celery_broker_up", "1 when the Redis broker answered this scrape.")
        if settings.REDIS_URL is None:
            yield lengths
            yield up
            return
        queues = self._queues or tuple(celery_queue_names())
        try:
            if self._client is None:
                self._client = self._client_factory()
            pipeline = self._client.pipeline(transaction=False)
            for queue in queues:
                pipeline.llen(queue)
            counts = pipeline.execute()
        except redis.RedisError:
            up.add_metric([], 0.0)
        else:
            up.add_metric([], 1.0)
            for queue, count in zip(queues, counts, strict=True):
                lengths.add_metric([queue], float(count))
        yield lengths
        yield up


class GapsCollector(Collector):
    """`oasis_gaps_unresolved{timeframe}`: recorded gaps still open or failed, read at scrape time."""

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("oasis_gaps_unresolved", "", labels=["timeframe"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "oasis_gaps_unresolved",
            "Recorded gaps of missing candles not yet backfilled or imputed (open or failed), by timeframe.",
            labels=["timeframe"],
        )
        try:
            rows = list(
                gaps_list()
                .filter(status__in=(Gap.Status.OPEN, Gap.Status.FAILED))
                .order_by()
                .values("timeframe")
                .annotate(count=Count("id"))
            )
        except DatabaseError:  # no database yet (start-up, migrations): no figures rather than no /metrics
            rows = []
        for row in rows:
            family.add_metric([row["timeframe"]], float(row["count"]))
        yield family


class KillSwitchCollector(Collector):
    """`oasis_killswitch_stored_state{state}`: 1 for the state stored in the database, 0 for the
    others. The trade loop's `oasis_killswitch_state` is that process's view (set at start and on
    its own trips); a switch engaged from the admin or the command line shows here at once."""

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("oasis_killswitch_stored_state", "", labels=["state"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "oasis_killswitch_stored_state",
            "1 for the kill switch's state stored in the database (read at scrape time), 0 for the others.",
            labels=["state"],
        )
        try:
            current: KillSwitchState | None = killswitch_state()
        except DatabaseError:
            current = None
        if current is not None:
            for member in KillSwitchState:
                family.add_metric([member.value], 1.0 if member is current else 0.0)
        yield family


def register_collectors(registry: Any) -> None:
    """Once per process (AppConfig.ready() can run twice under some test runners)."""
    present = {type(collector) for collector in list(registry._collector_to_names)}
    for collector_class in (CeleryQueueCollector, GapsCollector, KillSwitchCollector):
        if collector_class not in present:
            registry.register(collector_class())
