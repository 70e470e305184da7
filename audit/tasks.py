"""Beat routines of the audit app: alert notifications, quiet alerts, the hash chain."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from audit.alerting import alert_raise, alert_resolve, alerts_expire
from audit.mirror import mirror_ship
from audit.models import AlertSeverity
from audit.notifications import notifications_dispatch
from audit.selectors import audit_chain_verify

CHAIN_ALERT_KEY = "audit.chain_broken"


@shared_task(name="audit.notifications_dispatch", acks_late=True, expires=60)
def notifications_dispatch_task() -> int:
    """Send due alert notifications (retries, and rows whose process died before sending)."""
    return notifications_dispatch()


@shared_task(name="audit.alerts_expire", acks_late=True, expires=600)
def alerts_expire_task() -> int:
    return alerts_expire()


@shared_task(name="audit.chain_verify", acks_late=True, expires=3600)
def chain_verify_task() -> dict[str, Any]:
    """Verify the whole hash chain; a break is a critical alert (and an incident)."""
    result = audit_chain_verify()
    if result.intact:
        alert_resolve(key=CHAIN_ALERT_KEY, actor="system:audit_verify")
    else:
        alert_raise(
            key=CHAIN_ALERT_KEY,
            severity=AlertSeverity.CRITICAL,
            title=f"Audit chain broken at seq {result.broken_seq}",
            detail=result.problem or "",
            actor="system:audit_verify",
        )
    return {"intact": result.intact, "checked": result.checked, "broken_seq": result.broken_seq}


@shared_task(name="audit.mirror_ship", acks_late=True, expires=60)
def mirror_ship_task() -> dict[str, Any]:
    """Ship the MongoDB mirror's outbox, in order (a no-op without MONGO_URL)."""
    result = mirror_ship()
    return {"shipped": result.shipped, "pending": result.pending, "error": result.error}
