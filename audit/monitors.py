"""A service-level monitor: the p95 of recent latencies per label (a timeframe) against a
threshold, raising the alert `<key>.<label>` while it is over and resolving it when it is back.

Fed by the process that measures (ingestion's commit hook, the rule evaluator) and checked at
most every `interval_s` from the thread that feeds it: no latency sample crosses a process
boundary and no check runs on an event loop. A window with fewer than `min_samples` samples
decides nothing (a quiet market is not a healthy one, nor a sick one).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np
import structlog

from audit.alerting import alert_raise, alert_resolve
from audit.models import AlertSeverity

logger = structlog.get_logger(__name__)


class ServiceLevelMonitor:
    def __init__(
        self,
        *,
        key: str,
        title: str,
        threshold_ms: float,
        window_s: float = 120.0,
        interval_s: float = 10.0,
        min_samples: int = 5,
        actor: str = "system:slo",
        clock: Callable[[], float] = time.time,
        grace_s: float | None = None,
    ) -> None:
        self.key, self.title, self.threshold_ms = key, title, threshold_ms
        self.window_s, self.interval_s, self.min_samples = window_s, interval_s, min_samples
        self.actor, self.clock = actor, clock
        self._samples: dict[str, deque[tuple[float, float]]] = {}
        self._lock = threading.Lock()
        self._next_check = 0.0
        self._firing: set[str] = set()
        # A process that just started catches up (backfill, a burst of stored closes): what it
        # measures then is the backlog, not the service level. Judged after one window (default).
        self._judging_from = self.clock() + (window_s if grace_s is None else grace_s)

    def add(self, label: str, latency_ms: float, *, at: float | None = None) -> None:
        at = self.clock() if at is None else at
        with self._lock:
            self._samples.setdefault(label, deque(maxlen=50_000)).append((at, latency_ms))

    def p95(self, label: str, *, now: float | None = None) -> tuple[float | None, int]:
        now = self.clock() if now is None else now
        with self._lock:
            samples = self._samples.get(label, deque())
            while samples and samples[0][0] < now - self.window_s:
                samples.popleft()
            values = [latency for _, latency in samples]
        if len(values) < self.min_samples:
            return None, len(values)
        return float(np.percentile(np.asarray(values), 95)), len(values)

    def maybe_check(self) -> None:
        """Check if `interval_s` has passed since the last check (cheap otherwise)."""
        now = self.clock()
        if now < self._next_check:
            return
        self._next_check = now + self.interval_s
        try:
            self.check(now=now)
        except Exception:  # a database hiccup must not stop the measuring path; next check retries
            logger.exception("slo_check_failed", key=self.key)

    def check(self, *, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        if now < self._judging_from:
            return
        with self._lock:
            labels = list(self._samples)
        for label in labels:
            p95, count = self.p95(label, now=now)
            if p95 is None:
                continue
            key = f"{self.key}.{label}"
            if p95 > self.threshold_ms:
                alert_raise(
                    key=key,
                    severity=AlertSeverity.CRITICAL,
                    title=f"{self.title} {label}: p95 {p95:.0f} ms > {self.threshold_ms:.0f} ms",
                    detail=f"{count} samples in the last {self.window_s:.0f} s",
                    payload={"p95_ms": round(p95, 1), "samples": count, "threshold_ms": self.threshold_ms},
                    actor=self.actor,
                )
                self._firing.add(label)
            else:
                # Resolve whatever fires for this key, raised by this process or a previous one.
                alert_resolve(key=key, actor=self.actor)
                self._firing.discard(label)
