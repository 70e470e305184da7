"""The one Celery app, configured from Django settings (the ``CELERY_*`` names).

Without REDIS_URL (dev/test only) tasks run eagerly in the calling process; with it they
go to Redis. Tasks live in each app's ``tasks.py`` and are found by autodiscovery.

Metrics: each pool process of a worker serves its own /metrics on OASIS_WORKER_METRICS_PORT
+ its pool index (prefork children count their metrics apart, and a child replaced after a crash
takes the same index, so the same port). deploy/prometheus/prometheus.yml scrapes those ports.
"""

from __future__ import annotations

import os
from typing import Any

import structlog
from billiard.process import current_process
from celery import Celery
from celery.signals import worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "oasis_site.settings")

logger = structlog.get_logger(__name__)

app = Celery("oasis")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def worker_metrics_port(base: int, pool_index: int | None) -> int | None:
    """The /metrics port of the pool process with this index (None: metrics off)."""
    if base == 0:
        return None
    return base + (pool_index or 0)


@worker_process_init.connect
def serve_worker_metrics(**_: Any) -> None:
    """Runs in each pool process as it starts (prefork children; the solo pool's one process).

    A signal receiver because a pool process has no other hook of ours before its first task; it
    only starts the metrics server. A port already taken is logged, never fatal: a worker that
    cannot be scraped must still run its tasks.
    """
    from django.conf import settings
    from prometheus_client import start_http_server

    port = worker_metrics_port(settings.OASIS_WORKER_METRICS_PORT, getattr(current_process(), "index", 0))
    if port is None:
        return
    try:
        start_http_server(port, addr=settings.OASIS_BIND)
    except OSError as exc:
        logger.warning("worker_metrics_port_unavailable", port=port, error=str(exc))
        return
    logger.info("worker_metrics_serving", port=port)
