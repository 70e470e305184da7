"""Reads of the audit log."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta

from django.db.models import QuerySet
from django.utils import timezone

from audit.chain import GENESIS_HASH, EventContent, event_hash
from audit.models import Alert, AuditEvent, CorrectiveAction, Incident


@dataclass(frozen=True)
class ChainVerification:
    checked: int
    head_seq: int | None
    head_hash: str | None
    broken_event_id: int | None = None
    broken_seq: int | None = None
    problem: str | None = None

    @property
    def intact(self) -> bool:
        return self.problem is None


def audit_events_list(
    *,
    action: str | None = None,
    actor: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> QuerySet[AuditEvent]:
    """Audit events filtered by any of: action (exact, or a prefix ending in "." such as
    "trading."), actor, object and time (start … end, included); unordered: callers page."""
    rows = AuditEvent.objects.all()
    if action:
        rows = rows.filter(action__startswith=action) if action.endswith(".") else rows.filter(action=action)
    if actor:
        rows = rows.filter(actor=actor)
    if object_type:
        rows = rows.filter(object_type=object_type)
    if object_id:
        rows = rows.filter(object_id=object_id)
    if start is not None:
        rows = rows.filter(created_at__gte=start)
    if end is not None:
        rows = rows.filter(created_at__lte=end)
    return rows


def audit_chain_verify(*, batch_size: int = 2000) -> ChainVerification:
    """Walk the whole chain in order and report the first event that breaks it.

    An event breaks the chain when its stored hash does not match its contents (it was
    changed), when it does not point at the previous event's hash, or when its sequence
    number skips (events were removed before it).
    """
    expected_seq = 1
    prev_hash = GENESIS_HASH
    checked = 0
    last_seq = 0
    while True:
        batch = list(AuditEvent.objects.filter(seq__gt=last_seq).order_by("seq")[:batch_size])
        if not batch:
            break
        for event in batch:
            problem = None
            if event.seq != expected_seq:
                problem = f"sequence jumps from {expected_seq - 1} to {event.seq}: events are missing"
            elif event.prev_hash != prev_hash:
                problem = "prev_hash does not match the previous event's hash"
            elif event.hash != event_hash(_content_of(event)):
                problem = "stored hash does not match the event's contents"
            if problem is not None:
                return ChainVerification(
                    checked=checked,
                    head_seq=last_seq or None,
                    head_hash=prev_hash if checked else None,
                    broken_event_id=event.pk,
                    broken_seq=event.seq,
                    problem=problem,
                )
            checked += 1
            expected_seq = event.seq + 1
            prev_hash = event.hash
            last_seq = event.seq
    return ChainVerification(
        checked=checked, head_seq=last_seq or None, head_hash=prev_hash if checked else None
    )


def _content_of(event: AuditEvent) -> EventContent:
    return EventContent(**{field.name: getattr(event, field.name) for field in fields(EventContent)})


def latest_event(*, action: str) -> AuditEvent | None:
    """The newest event of `action`."""
    return AuditEvent.objects.filter(action=action).order_by("-seq").first()


def alerts_recent(*, limit: int = 50) -> list[Alert]:
    """Firing alerts first (newest first), then the most recently resolved, up to `limit`."""
    firing = list(Alert.objects.filter(state=Alert.State.FIRING).order_by("-last_seen", "-id")[:limit])
    resolved = Alert.objects.filter(state=Alert.State.RESOLVED).order_by("-resolved_at", "-id")
    return firing + list(resolved[: max(0, limit - len(firing))])


def incidents_open() -> list[Incident]:
    return list(Incident.objects.filter(state=Incident.State.OPEN).order_by("-opened_at"))


def actions_overdue(*, today: date) -> list[CorrectiveAction]:
    return list(
        CorrectiveAction.objects.filter(status=CorrectiveAction.Status.OPEN, due_date__lt=today)
        .select_related("incident")
        .order_by("due_date", "id")
    )


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    kind: str  # "alert" or "audit"
    text: str


def incident_timeline(
    incident: Incident, *, before: timedelta = timedelta(minutes=15), limit: int = 500
) -> list[TimelineEntry]:
    """What happened around an incident: its alerts and every audit event from a little
    before it opened until it closed (or now), in time order."""
    start = incident.opened_at - before
    end = incident.closed_at or timezone.now()
    entries = [
        TimelineEntry(
            alert.first_seen, "alert", f"[{alert.severity}] {alert.title} (x{alert.count}, {alert.state})"
        )
        for alert in incident.alerts.all()
    ]
    events = AuditEvent.objects.filter(created_at__gte=start, created_at__lte=end).order_by("seq")[:limit]
    entries += [
        TimelineEntry(event.created_at, "audit", f"#{event.seq} {event.action} by {event.actor}")
        for event in events
    ]
    return sorted(entries, key=lambda entry: entry.at)
