"""Scrape-time figures (oasis_site/metrics_collectors.py) and the Celery workers' metrics port
(oasis_site/celery.py): read from the real broker and database, exported on /metrics, and a broken
backing service costs its figures, never the whole /metrics page."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import ProgrammingError
from django.test import Client
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from marketdata.models import Gap
from marketdata.tests.factories import SymbolFactory
from oasis_site.celery import worker_metrics_port
from oasis_site.metrics_collectors import (
    CeleryQueueCollector,
    GapsCollector,
    KillSwitchCollector,
    celery_queue_names,
    register_collectors,
)
from trading.core.types import KillSwitchState
from trading.killswitch import killswitch_engage


def samples(collector: Any, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in collector.collect()
        for sample in family.samples
        if sample.name == name
    }


def test_queue_names_are_the_workers_queues():
    shards = settings.OASIS_MARKETDATA_SHARDS
    assert celery_queue_names() == [
        "default",
        *(f"marketdata.{i}" for i in range(shards)),
        *(f"rules.{i}" for i in range(shards)),
    ]


@pytest.mark.redis
def test_queue_lengths_come_from_the_redis_broker():
    client = redis.Redis.from_url(str(settings.REDIS_URL))
    busy, idle = f"test-busy-{uuid.uuid4().hex}", f"test-idle-{uuid.uuid4().hex}"
    client.rpush(busy, "a", "b", "c")
    try:
        collector = CeleryQueueCollector(client_factory=lambda: client, queues=[busy, idle])
        assert samples(collector, "oasis_celery_queue_length") == {
            (("queue", busy),): 3.0,
            (("queue", idle),): 0.0,
        }
        assert samples(collector, "oasis_celery_broker_up") == {(): 1.0}
    finally:
        client.delete(busy)


def test_an_unreachable_broker_is_broker_up_0_without_lengths(settings: Any):
    settings.REDIS_URL = "redis://127.0.0.1:9/0"
    # Nothing listens on port 9 (discard); the collector must not wait or raise.
    unreachable = redis.Redis(host="127.0.0.1", port=9, socket_connect_timeout=0.5, socket_timeout=0.5)
    collector = CeleryQueueCollector(client_factory=lambda: unreachable, queues=["default"])
    assert samples(collector, "oasis_celery_queue_length") == {}
    assert samples(collector, "oasis_celery_broker_up") == {(): 0.0}


def test_without_a_broker_there_are_no_queue_figures(settings: Any):
    settings.REDIS_URL = None

    def no_client() -> None:
        raise AssertionError("no broker: nothing to ask")

    collector = CeleryQueueCollector(client_factory=no_client)
    assert samples(collector, "oasis_celery_queue_length") == {}
    assert samples(collector, "oasis_celery_broker_up") == {}


@pytest.mark.django_db
def test_unresolved_gaps_are_counted_by_timeframe_at_scrape_time():
    symbol = SymbolFactory.create()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for offset, (timeframe, status) in enumerate(
        [
            ("1m", Gap.Status.OPEN),
            ("1m", Gap.Status.FAILED),
            ("5m", Gap.Status.OPEN),
            ("1m", Gap.Status.IMPUTED),
        ]
    ):
        begin = start + timedelta(hours=offset)
        Gap.objects.create(
            symbol=symbol, timeframe=timeframe, start=begin, end=begin, detected_at=begin, status=status
        )
    collector = GapsCollector()
    assert samples(collector, "oasis_gaps_unresolved") == {
        (("timeframe", "1m"),): 2.0,
        (("timeframe", "5m"),): 1.0,
    }
    Gap.objects.filter(timeframe="5m").update(status=Gap.Status.BACKFILLED)
    assert samples(collector, "oasis_gaps_unresolved") == {(("timeframe", "1m"),): 2.0}


@pytest.mark.django_db
def test_kill_switch_state_is_the_stored_one():
    collector = KillSwitchCollector()
    assert samples(collector, "oasis_killswitch_stored_state") == {
        (("state", "active"),): 1.0,
        (("state", "reducing"),): 0.0,
        (("state", "halted"),): 0.0,
    }
    killswitch_engage(state=KillSwitchState.HALTED, reason="exchange incident", actor="test")
    assert samples(collector, "oasis_killswitch_stored_state")[(("state", "halted"),)] == 1.0
    assert samples(collector, "oasis_killswitch_stored_state")[(("state", "active"),)] == 0.0


def test_database_collectors_yield_empty_families_when_the_database_fails(monkeypatch: pytest.MonkeyPatch):
    # Start-up before migrations: the tables are missing; /metrics must still answer.
    def missing_table(*args: Any, **kwargs: Any) -> Any:
        raise ProgrammingError('relation "marketdata_gap" does not exist')

    monkeypatch.setattr("oasis_site.metrics_collectors.gaps_list", missing_table)
    monkeypatch.setattr("oasis_site.metrics_collectors.killswitch_state", missing_table)
    assert samples(GapsCollector(), "oasis_gaps_unresolved") == {}
    assert samples(KillSwitchCollector(), "oasis_killswitch_stored_state") == {}


def test_collectors_register_once_per_registry():
    registry = CollectorRegistry()
    register_collectors(registry)
    register_collectors(registry)
    names = set(registry._names_to_collectors)
    assert {"oasis_celery_queue_length", "oasis_celery_broker_up", "oasis_gaps_unresolved"} <= names
    assert "oasis_killswitch_stored_state" in names
    assert len(registry._collector_to_names) == 3


@pytest.mark.django_db
def test_web_metrics_page_exports_the_scrape_time_figures(client: Client):
    assert "oasis_gaps_unresolved" in REGISTRY._names_to_collectors  # registered by OasisSiteConfig.ready
    response = client.get("/metrics")
    assert response.status_code == 200
    families = {family.name for family in text_string_to_metric_families(response.content.decode())}
    assert {"oasis_gaps_unresolved", "oasis_killswitch_stored_state", "oasis_celery_queue_length"} <= families


@pytest.mark.parametrize(
    ("base", "index", "port"),
    [(9103, 0, 9103), (9103, 3, 9106), (9103, None, 9103), (0, 2, None)],
)
def test_worker_pool_process_i_serves_on_base_plus_i(base: int, index: int | None, port: int | None):
    assert worker_metrics_port(base, index) == port


def _free_consecutive_ports(count: int) -> int:
    for _ in range(50):
        base = random.randint(20_000, 40_000)
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free ports")


@pytest.mark.redis
def test_each_pool_process_of_a_real_worker_serves_metrics_on_its_own_port(tmp_path: Path):
    base = _free_consecutive_ports(2)
    environ = {
        **os.environ,
        "OASIS_ENV": "test",
        "REDIS_URL": str(settings.REDIS_URL),
        "OASIS_WORKER_METRICS_PORT": str(base),
        "OASIS_BIND": "127.0.0.1",
    }
    queue = f"test-metrics-{uuid.uuid4().hex}"  # consumes nothing anyone sends
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "oasis_site",
        "worker",
        "--concurrency",
        "2",
        "-Q",
        queue,
    ]
    command += [
        "--pool",
        "prefork",
        "-l",
        "WARNING",
        "--without-heartbeat",
        "--without-mingle",
        "--without-gossip",
    ]
    with (tmp_path / "worker.log").open("w") as log:
        worker = subprocess.Popen(command, cwd=settings.BASE_DIR, env=environ, stdout=log, stderr=log)
    try:
        pages: dict[int, str] = {}
        deadline = time.monotonic() + 60
        while len(pages) < 2 and time.monotonic() < deadline:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            for port in (base, base + 1):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                        pages[port] = response.read().decode()
                except OSError:
                    pass
            time.sleep(0.25)
        assert set(pages) == {base, base + 1}, (tmp_path / "worker.log").read_text()
        for page in pages.values():
            names = {family.name for family in text_string_to_metric_families(page)}
            assert {"oasis_signal_latency_seconds", "oasis_celery_broker_up"} <= names
    finally:
        worker.terminate()
        worker.wait(timeout=30)
