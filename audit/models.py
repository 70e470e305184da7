from __future__ import annotations

from typing import Any, NoReturn

from django.db import models


class AuditImmutableError(Exception):
    """Audit events are append-only: they are never updated or deleted."""


def _refuse(what: str) -> NoReturn:
    raise AuditImmutableError(f"audit events are append-only: {what} is refused")


class AuditEventQuerySet(models.QuerySet["AuditEvent"]):
    def update(self, **kwargs: Any) -> NoReturn:
        _refuse("update")

    def delete(self) -> NoReturn:
        _refuse("delete")

    def bulk_update(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse("bulk_update")

    def bulk_create(self, *args: Any, **kwargs: Any) -> NoReturn:
        # Bulk inserts would bypass the hash chain; audit_record is the only writer.
        _refuse("bulk_create (use audit.services.audit_record)")


class AuditEvent(models.Model):
    """One entry of the append-only audit log, chained by hash to the one before it.

    ``seq`` numbers the chain from 1 without gaps; ``prev_hash`` is the hash of event
    ``seq - 1`` (64 zeros for the first); ``hash`` covers this event's contents and
    ``prev_hash``, so changing any stored event breaks the chain at that event. Both are
    unique: two events can never claim the same predecessor, so the chain cannot fork.
    """

    GENESIS_HASH = "0" * 64

    seq = models.PositiveBigIntegerField(unique=True, editable=False)
    created_at = models.DateTimeField(editable=False, db_index=True)
    actor = models.CharField(
        max_length=150, db_index=True, help_text="Who: user:<name> or system:<component>."
    )
    action = models.CharField(max_length=100, db_index=True, help_text="What, as <area>.<verb>.")
    object_type = models.CharField(max_length=100, blank=True, db_index=True)
    object_id = models.CharField(max_length=100, blank=True, db_index=True)
    payload = models.JSONField(default=dict)
    prev_hash = models.CharField(max_length=64, unique=True, editable=False)
    hash = models.CharField(max_length=64, unique=True, editable=False)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["seq"]
        constraints = [
            models.CheckConstraint(condition=models.Q(seq__gte=1), name="audit_event_seq_positive"),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.actor} {self.action} {self.object_type}:{self.object_id}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            _refuse("update")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse("delete")
