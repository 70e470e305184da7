"""Celery tasks of trading: the periodic drift check of the last hour of dry-run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from celery import shared_task

from trading.drift import drift_check


@shared_task(name="trading.drift_check", ignore_result=False, expires=3000)
def drift_check_task(*, until: str | None = None, hours: int = 1) -> dict[str, Any]:
    """Drift over the `hours` before `until` (ISO; default: the last whole minute), safe to run
    twice: it reads, and writes only its gauges and an audit event."""
    end = datetime.fromisoformat(until) if until else datetime.now(tz=UTC).replace(second=0, microsecond=0)
    report = drift_check(since=end - timedelta(hours=hours), until=end)
    return {
        "mismatches": len(report.mismatches),
        "over_tolerance": report.over_tolerance,
        "pnl_bps": report.pnl_bps,
    }
