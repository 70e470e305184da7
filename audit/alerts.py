"""Which audit events raise an alert (`audit.alerting.alert_from_event`), and how loud.

Conditions (latency over a service level, a stale stream, open gaps, drift) raise and
resolve their alerts themselves; these are the events that are alerts by their nature: a
human should look at every kill-switch change, rejected or unknown order, oversold position,
failed backfill, imputed candles or disabled rule pair.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

# "clear": the event says the condition behind an alert is gone (a drift check within tolerance).
AlertLevel = Literal["critical", "warning", "info", "clear"]

# Actions that are always alerts, with their level.
ALERT_ACTIONS: dict[str, AlertLevel] = {
    "trading.killswitch": "critical",
    "trading.order.rejected": "warning",
    "trading.order.outcome_unknown": "critical",
    "trading.position.oversold": "critical",
    "trading.position.corrected": "warning",
    "trading.order.corrected": "warning",
    "rules.pair.disabled": "warning",
    "marketdata.candles_imputed": "info",
}


def alert_level(action: str, payload: Mapping[str, Any]) -> AlertLevel | None:
    """The event's alert level, or None when it is not an alert."""
    if action in ALERT_ACTIONS:
        return ALERT_ACTIONS[action]
    if action == "trading.drift":
        return "critical" if payload.get("over_tolerance") else "clear"
    if action == "marketdata.backfill" and payload.get("reason"):
        return "warning"
    return None


def alert_actions() -> list[str]:
    """Every action that can be an alert (for reading the feed from the log)."""
    return [*ALERT_ACTIONS, "trading.drift", "marketdata.backfill"]
