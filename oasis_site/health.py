"""Readiness checks: is this process able to serve traffic right now?

Each check answers for one component and never raises; `/readyz` reports all of them and
names the failing ones, so an operator reads what is wrong from the probe's body.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor

# A probe must answer quickly even when a dependency hangs.
REDIS_TIMEOUT_SECONDS = 1.0


@dataclass(frozen=True)
class CheckResult:
    component: str
    ok: bool
    detail: str
    duration_ms: float

    def as_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "detail": self.detail, "duration_ms": round(self.duration_ms, 2)}


def _timed(component: str, check: Callable[[], str]) -> CheckResult:
    started = time.perf_counter()
    try:
        detail = check()
        ok = True
    except Exception as exc:  # noqa: BLE001 - a probe reports every failure, whatever its type
        detail = f"{type(exc).__name__}: {exc}".strip()
        ok = False
    return CheckResult(component, ok, detail, (time.perf_counter() - started) * 1000)


def _database() -> str:
    connection = connections[DEFAULT_DB_ALIAS]
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return f"{connection.vendor} reachable"


def _migrations() -> str:
    connection = connections[DEFAULT_DB_ALIAS]
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if plan:
        pending = ", ".join(f"{m.app_label}.{m.name}" for m, _ in plan[:5])
        more = f" (+{len(plan) - 5} more)" if len(plan) > 5 else ""
        raise RuntimeError(f"{len(plan)} unapplied: {pending}{more}")
    return "all applied"


def _redis() -> str:
    url: str | None = settings.REDIS_URL
    if not url:
        raise RuntimeError("REDIS_URL is not configured")
    client = redis.Redis.from_url(
        url,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
    )
    try:
        client.ping()
    finally:
        client.close()
    return "reachable"


def readiness_checks() -> list[CheckResult]:
    """Database, migrations (only if the database answered) and Redis when configured."""
    results = [_timed("database", _database)]
    if results[0].ok:
        results.append(_timed("migrations", _migrations))
    else:
        results.append(CheckResult("migrations", False, "database unreachable", 0.0))
    if settings.REDIS_URL:
        results.append(_timed("redis", _redis))
    return results
