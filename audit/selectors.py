"""Reads of the audit log."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime

from django.db.models import QuerySet

from audit.alerts import AlertLevel, alert_actions, alert_level
from audit.chain import GENESIS_HASH, EventContent, event_hash
from audit.models import AuditEvent


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


def alert_events(*, limit: int = 50) -> list[tuple[AuditEvent, AlertLevel]]:
    """The newest alerts, newest first (events whose action and payload make them alerts)."""
    found: list[tuple[AuditEvent, AlertLevel]] = []
    queryset = AuditEvent.objects.filter(action__in=alert_actions()).order_by("-seq")
    for event in queryset.iterator(chunk_size=200):
        level = alert_level(event.action, event.payload)
        if level is not None:
            found.append((event, level))
            if len(found) >= limit:
                break
    return found
