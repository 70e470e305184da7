"""Alerts and incidents: the writes (services). Every app may raise an alert (audit is the
lowest layer); each change is audited, broadcast to the dashboard after commit and, for a new
alert, a reminder after its cooldown or a resolution, queued as notifications (an outbox row
per configured channel, written in the same transaction; `audit.notifications` sends them).

A critical alert joins the incident that is open (opening one if none is), so an incident
gathers what fired while it lasted; a kill-switch trip is a critical alert.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.models import Alert, AlertSeverity, CorrectiveAction, Incident, Notification
from audit.services import Actor, actor_label, audit_record
from oasis_site.broadcast import broadcast_after_commit

ALERTS_GROUP = "alerts"
SEVERITY_RANK: dict[str, int] = {
    AlertSeverity.INFO.value: 0,
    AlertSeverity.WARNING.value: 1,
    AlertSeverity.CRITICAL.value: 2,
}
# A critical alert joins an incident opened this recently, rather than opening another.
INCIDENT_JOIN_WINDOW = timedelta(hours=6)


class IncidentError(ValueError):
    """An incident change that is refused; the message says what is missing."""


def alert_payload(alert: Alert) -> dict[str, Any]:
    """An alert as the dashboard shows it (live and on first render)."""
    return {
        "id": alert.pk,
        "key": alert.key,
        "severity": alert.severity,
        "title": alert.title,
        "detail": alert.detail,
        "state": alert.state,
        "count": alert.count,
        "first_seen": alert.first_seen.isoformat(),
        "last_seen": alert.last_seen.isoformat(),
        "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
        "incident": alert.incident_id,
    }


def _channels() -> list[str]:
    channels: list[str] = []
    if getattr(settings, "OASIS_SLACK_WEBHOOK_URL", None):
        channels.append(Notification.Channel.SLACK)
    if getattr(settings, "OASIS_ALERT_EMAIL_TO", ()):
        channels.append(Notification.Channel.EMAIL)
    return channels


def _notify(alert: Alert, kind: str, now: datetime) -> None:
    rows = [
        Notification.objects.create(
            alert=alert, channel=channel, kind=kind, next_attempt_at=now, created_at=now
        )
        for channel in _channels()
    ]
    if kind != "resolved":
        alert.last_notified_at = now
        alert.save(update_fields=["last_notified_at"])
    if rows:
        from audit.notifications import dispatch_soon

        ids = [row.pk for row in rows]
        transaction.on_commit(lambda: dispatch_soon(ids))


def _broadcast(alert: Alert) -> None:
    broadcast_after_commit(ALERTS_GROUP, {"type": "alert.update", "alert": alert_payload(alert)})


def alert_raise(
    *,
    key: str,
    severity: str,
    title: str,
    detail: str = "",
    payload: dict[str, Any] | None = None,
    cooldown_s: int = 900,
    actor: Actor = "system:alerts",
    now: datetime | None = None,
) -> Alert:
    """Fire the alert `key`, or, while it fires, count one more occurrence (notifying again
    only once `cooldown_s` has passed since the last notification)."""
    if severity not in SEVERITY_RANK:
        raise ValueError(f"severity must be one of {', '.join(SEVERITY_RANK)}; got {severity!r}")
    if not key or len(key) > 200:
        raise ValueError("key must be 1 to 200 characters, e.g. slo.ingest_p95.1m")
    now = now or timezone.now()
    with transaction.atomic():
        alert = Alert.objects.select_for_update().filter(key=key, state=Alert.State.FIRING).first()
        if alert is None:
            try:
                with transaction.atomic():
                    alert = Alert.objects.create(
                        key=key,
                        severity=severity,
                        title=title[:200],
                        detail=detail,
                        payload=payload or {},
                        first_seen=now,
                        last_seen=now,
                        cooldown_s=cooldown_s,
                    )
            except IntegrityError:  # another process fired it first: count this one on it
                alert = Alert.objects.select_for_update().get(key=key, state=Alert.State.FIRING)
            else:
                audit_record(
                    actor=actor,
                    action="alert.raised",
                    obj=alert,
                    payload={"key": key, "severity": severity, "title": alert.title, "detail": detail},
                )
                if severity == AlertSeverity.CRITICAL:
                    _incident_join(alert, actor=actor, now=now)
                _notify(alert, "firing", now)
                _broadcast(alert)
                return alert
        alert.count += 1
        alert.last_seen = now
        alert.detail = detail or alert.detail
        alert.payload = payload or alert.payload
        if SEVERITY_RANK[severity] > SEVERITY_RANK[alert.severity]:
            alert.severity = severity
        alert.save(update_fields=["count", "last_seen", "detail", "payload", "severity"])
        if alert.severity == AlertSeverity.CRITICAL and alert.incident_id is None:
            _incident_join(alert, actor=actor, now=now)
        due = alert.last_notified_at is None or now - alert.last_notified_at >= timedelta(
            seconds=alert.cooldown_s
        )
        if due:
            _notify(alert, "reminder", now)
        _broadcast(alert)
    return alert


def alert_resolve(*, key: str, actor: Actor = "system:alerts", now: datetime | None = None) -> Alert | None:
    """Resolve the firing alert `key` (its condition cleared); None when nothing fires."""
    now = now or timezone.now()
    with transaction.atomic():
        alert = Alert.objects.select_for_update().filter(key=key, state=Alert.State.FIRING).first()
        if alert is None:
            return None
        alert.state = Alert.State.RESOLVED
        alert.resolved_at = now
        alert.save(update_fields=["state", "resolved_at"])
        audit_record(
            actor=actor, action="alert.resolved", obj=alert, payload={"key": key, "after": alert.count}
        )
        _notify(alert, "resolved", now)
        _broadcast(alert)
    return alert


def _incident_join(alert: Alert, *, actor: Actor, now: datetime) -> None:
    incident = (
        Incident.objects.select_for_update()
        .filter(state=Incident.State.OPEN, opened_at__gte=now - INCIDENT_JOIN_WINDOW)
        .order_by("-opened_at")
        .first()
    )
    joined = incident is not None
    if incident is None:
        incident = incident_open(
            title=alert.title, severity=alert.severity, actor=actor, now=now, alert=alert
        )
    alert.incident = incident
    alert.save(update_fields=["incident"])
    if joined:
        audit_record(actor=actor, action="incident.alert_joined", obj=incident, payload={"alert": alert.pk})


def incident_open(
    *, title: str, severity: str, actor: Actor, now: datetime | None = None, alert: Alert | None = None
) -> Incident:
    if not title.strip():
        raise IncidentError("an incident needs a title")
    if severity not in SEVERITY_RANK:
        raise IncidentError(f"severity must be one of {', '.join(SEVERITY_RANK)}")
    now = now or timezone.now()
    with transaction.atomic():
        incident = Incident.objects.create(
            title=title.strip()[:200], severity=severity, opened_at=now, opened_by=actor_label(actor)
        )
        audit_record(
            actor=actor,
            action="incident.opened",
            obj=incident,
            payload={"title": incident.title, "alert": alert.pk if alert else None},
        )
    return incident


def incident_action_add(
    *, incident: Incident, description: str, owner: str, due_date: date, actor: Actor
) -> CorrectiveAction:
    if not description.strip() or not owner.strip():
        raise IncidentError("a corrective action needs a description and an owner")
    with transaction.atomic():
        action = CorrectiveAction.objects.create(
            incident=incident,
            description=description.strip(),
            owner=owner.strip(),
            due_date=due_date,
            created_at=timezone.now(),
        )
        audit_record(
            actor=actor,
            action="incident.action_added",
            obj=incident,
            payload={
                "action": action.pk,
                "description": action.description,
                "owner": action.owner,
                "due_date": due_date.isoformat(),
            },
        )
    return action


def incident_action_done(*, action: CorrectiveAction, actor: Actor) -> CorrectiveAction:
    with transaction.atomic():
        action.status = CorrectiveAction.Status.DONE
        action.done_at = timezone.now()
        action.save(update_fields=["status", "done_at"])
        audit_record(
            actor=actor, action="incident.action_done", obj=action.incident, payload={"action": action.pk}
        )
    return action


def incident_close(*, incident: Incident, root_cause: str, impact: str, actor: Actor) -> Incident:
    """Close with the post-mortem: refused without a root cause, the impact and at least one
    corrective action on record."""
    missing = []
    if not root_cause.strip():
        missing.append("a root cause")
    if not impact.strip():
        missing.append("the impact")
    with transaction.atomic():
        incident = Incident.objects.select_for_update().get(pk=incident.pk)
        if incident.state == Incident.State.CLOSED:
            raise IncidentError(f"incident {incident.pk} is already closed")
        if not incident.actions.exists():
            missing.append("at least one corrective action (owner, due date)")
        if missing:
            raise IncidentError(f"incident {incident.pk} cannot be closed without {', '.join(missing)}")
        incident.state = Incident.State.CLOSED
        incident.root_cause = root_cause.strip()
        incident.impact = impact.strip()
        incident.closed_at = timezone.now()
        incident.closed_by = actor_label(actor)
        incident.save(update_fields=["state", "root_cause", "impact", "closed_at", "closed_by"])
        audit_record(
            actor=actor,
            action="incident.closed",
            obj=incident,
            payload={"root_cause": incident.root_cause, "impact": incident.impact},
        )
    return incident


# Event-raised alerts have no condition to clear: they resolve after this long without a
# recurrence (`alerts_expire`), except the kill switch, which its release resolves.
EVENT_ALERT_QUIET = timedelta(hours=1)
KILLSWITCH_KEY = "killswitch"


def _event_summary(event: Any) -> str:
    payload = event.payload if isinstance(event.payload, dict) else {}
    for field in ("reason", "detail", "error", "to"):
        if payload.get(field):
            return str(payload[field])
    return ""


def alert_from_event(event: Any, level: str) -> Alert | None:
    """The alert an audit event raises (audit.alerts says which events are alerts): the kill
    switch fires one alert while engaged and its release resolves it; other events fire one
    alert per action (and object kind), counted while it recurs."""
    payload = event.payload if isinstance(event.payload, dict) else {}
    if level == "clear":
        return alert_resolve(key=event.action, actor=event.actor, now=event.created_at)
    if event.action == "trading.killswitch":
        if payload.get("to") == "active":
            return alert_resolve(key=KILLSWITCH_KEY, actor=event.actor, now=event.created_at)
        reason = payload.get("reason") or payload.get("tripwire") or ""
        return alert_raise(
            key=KILLSWITCH_KEY,
            severity=AlertSeverity.CRITICAL,
            title=f"Kill switch {str(payload.get('to', '')).upper()}: {reason}"[:200],
            detail=f"by {event.actor}; tripwire {payload.get('tripwire') or 'none'}",
            payload={"event": event.seq, **payload},
            actor=event.actor,
            now=event.created_at,
        )
    summary = _event_summary(event)
    return alert_raise(
        key=event.action,
        severity=level,
        title=f"{event.action}{': ' + summary if summary else ''}"[:200],
        detail=f"{event.object_type}:{event.object_id} by {event.actor}"
        if event.object_type
        else f"by {event.actor}",
        payload={"event": event.seq},
        actor=event.actor,
        now=event.created_at,
    )


def alerts_expire(*, now: datetime | None = None) -> int:
    """Resolve event-raised alerts quiet for EVENT_ALERT_QUIET (the beat runs it)."""
    from audit.alerts import alert_actions

    now = now or timezone.now()
    keys = list(
        Alert.objects.filter(
            state=Alert.State.FIRING,
            key__in=[key for key in alert_actions() if key != "trading.killswitch"],
            last_seen__lt=now - EVENT_ALERT_QUIET,
        ).values_list("key", flat=True)
    )
    for key in keys:
        alert_resolve(key=key, actor="system:alerts", now=now)
    return len(keys)


def incident_post_mortem_edit(*, incident: Incident, root_cause: str, impact: str, actor: Actor) -> Incident:
    """Write the post-mortem of an open incident (closing is `incident_close`)."""
    with transaction.atomic():
        incident = Incident.objects.select_for_update().get(pk=incident.pk)
        if incident.state == Incident.State.CLOSED:
            raise IncidentError(f"incident {incident.pk} is closed: its post-mortem is final")
        if (incident.root_cause, incident.impact) == (root_cause, impact):
            return incident
        incident.root_cause, incident.impact = root_cause, impact
        incident.save(update_fields=["root_cause", "impact"])
        audit_record(
            actor=actor,
            action="incident.post_mortem",
            obj=incident,
            payload={"root_cause": root_cause, "impact": impact},
        )
    return incident
