"""Which audit events are alerts for the operators' live feed, and how loud.

An alert is not a second log: it is an audit event whose action (and, for some, payload)
says a human should look. The dashboard's feed reads them from the audit log and receives
new ones live (group `alerts`), so a feed never shows what the log does not hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

AlertLevel = Literal["critical", "warning", "info"]

ALERTS_GROUP = "alerts"

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
    if action == "trading.drift" and payload.get("over_tolerance"):
        return "critical"
    if action == "marketdata.backfill" and payload.get("reason"):
        return "warning"
    return None


def alert_actions() -> list[str]:
    """Every action that can be an alert (for reading the feed from the log)."""
    return [*ALERT_ACTIONS, "trading.drift", "marketdata.backfill"]
