"""Drift figures for the web process's /metrics: the drift check runs in a Celery worker (or a
command), which nobody scrapes, so the last check's figures are read from its audit event at
scrape time (one indexed query) and exported as gauges."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.db import DatabaseError
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from audit.selectors import latest_event


class DriftCollector(Collector):
    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families, without reading anything (the registry asks at registration)."""
        yield GaugeMetricFamily("oasis_drift_last_mismatches", "", labels=["symbol", "timeframe", "kind"])
        yield GaugeMetricFamily("oasis_drift_last_pnl_bps", "", labels=["symbol"])
        yield GaugeMetricFamily("oasis_drift_last_over_tolerance", "")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        payload: dict[str, Any] = {}
        try:
            event = latest_event(action="trading.drift")
            payload = dict(event.payload) if event is not None else {}
        except DatabaseError:  # no database yet (start-up, migrations): no figures rather than no /metrics
            payload = {}
        mismatches = GaugeMetricFamily(
            "oasis_drift_last_mismatches",
            "Mismatches of the last drift check, by symbol, timeframe and kind.",
            labels=["symbol", "timeframe", "kind"],
        )
        for row in payload.get("mismatch_counts", []):
            mismatches.add_metric([row["symbol"], row["timeframe"], row["kind"]], float(row["count"]))
        yield mismatches
        pnl = GaugeMetricFamily(
            "oasis_drift_last_pnl_bps", "PnL divergence of the last drift check, in bps.", labels=["symbol"]
        )
        for symbol, bps in (payload.get("pnl_bps") or {}).items():
            pnl.add_metric([symbol], float(bps))
        yield pnl
        over = GaugeMetricFamily(
            "oasis_drift_last_over_tolerance",
            "1 when the last drift check was over a rule version's tolerance.",
        )
        if payload:
            over.add_metric([], 1.0 if payload.get("over_tolerance") else 0.0)
        yield over
