"""Writes to the audit log. `audit_record` is the only way an event is written."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import structlog
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, models, transaction
from django.utils import timezone

from audit.alerts import alert_level
from audit.chain import GENESIS_HASH, EventContent, event_hash, normalise_payload
from audit.mirror import mirror_enqueue
from audit.models import AuditEvent

logger = structlog.get_logger(__name__)

# Key of the PostgreSQL advisory lock that serialises writers of the chain (any constant
# unique to this use; "OASISAUD" in ASCII).
CHAIN_LOCK_KEY = 0x4F41534953415544 & 0x7FFFFFFFFFFFFFFF

Actor = str | AbstractBaseUser


def actor_label(actor: Actor) -> str:
    """``user:<username>`` for a user; a string is taken as it is (``system:<component>``)."""
    if isinstance(actor, AbstractBaseUser):
        return f"user:{actor.get_username()}"
    if not isinstance(actor, str) or not actor.strip():
        raise ValueError("actor must be a user or a non-empty string such as 'system:ingestor'")
    return actor.strip()


def audit_record(
    *,
    actor: Actor,
    action: str,
    obj: models.Model | None = None,
    payload: dict[str, Any],
) -> AuditEvent:
    """Append one event to the audit log and return it.

    Runs in the caller's transaction when there is one, so the event commits or rolls back
    with the state change it records. Writers are serialised (an advisory lock on
    PostgreSQL, the write lock on SQLite), so concurrent writers never fork the chain.
    A payload that cannot be stored exactly raises `audit.chain.PayloadError` and nothing
    is written.
    """
    label = actor_label(actor)
    if not isinstance(action, str) or not action.strip() or len(action) > 100:
        raise ValueError("action must be a non-empty string of at most 100 characters, e.g. 'rules.activate'")
    clean_payload = normalise_payload(payload)
    object_type, object_id = ("", "")
    if obj is not None:
        if obj.pk is None:
            raise ValueError("obj must be saved before it is audited (it has no primary key)")
        object_type, object_id = obj._meta.label_lower, str(obj.pk)

    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CHAIN_LOCK_KEY])
        head = AuditEvent.objects.order_by("-seq").values_list("seq", "hash").first()
        seq, prev_hash = (head[0] + 1, head[1]) if head else (1, GENESIS_HASH)
        content = EventContent(
            seq=seq,
            created_at=timezone.now(),
            actor=label,
            action=action.strip(),
            object_type=object_type,
            object_id=object_id,
            payload=clean_payload,
            prev_hash=prev_hash,
        )
        event = AuditEvent.objects.create(**asdict(content), hash=event_hash(content))
        transaction.on_commit(
            lambda: logger.info(
                "audit_event_recorded",
                seq=event.seq,
                actor=event.actor,
                action=event.action,
                object_type=event.object_type,
                object_id=event.object_id,
            )
        )
        mirror_enqueue(
            kind="audit_event",
            key=str(event.seq),
            document={
                "seq": event.seq,
                "created_at": event.created_at.isoformat(),
                "actor": event.actor,
                "action": event.action,
                "object_type": event.object_type,
                "object_id": event.object_id,
                "payload": event.payload,
                "prev_hash": event.prev_hash,
                "hash": event.hash,
            },
        )
        level = alert_level(event.action, clean_payload)
        if level is not None:
            # Same transaction: the alert exists exactly when the event that raised it does.
            from audit.alerting import alert_from_event

            alert_from_event(event, level)
    return event
