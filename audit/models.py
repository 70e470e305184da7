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


class AlertSeverity(models.TextChoices):
    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


class Alert(models.Model):
    """A condition a human should look at, deduplicated by `key`: while it fires, a recurrence
    only bumps `count` and `last_seen` (and notifies again once `cooldown_s` has passed).
    Resolving it ends this row; the same key firing later opens a new row."""

    class State(models.TextChoices):
        FIRING = "firing"
        RESOLVED = "resolved"

    id = models.BigAutoField(primary_key=True)
    key = models.CharField(max_length=200, help_text="Dedupe key, e.g. slo.ingest_p95.1m or killswitch.")
    severity = models.CharField(max_length=8, choices=AlertSeverity.choices)
    title = models.CharField(max_length=200)
    detail = models.TextField(blank=True)
    payload = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=8, choices=State.choices, default=State.FIRING)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    count = models.PositiveIntegerField(default=1)
    cooldown_s = models.PositiveIntegerField(default=900, help_text="Notify again at most this often.")
    last_notified_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    incident = models.ForeignKey(
        "Incident", on_delete=models.PROTECT, null=True, blank=True, related_name="alerts"
    )

    class Meta:
        ordering = ["-last_seen", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["key"], condition=models.Q(state="firing"), name="audit_alert_one_firing_per_key"
            ),
            models.CheckConstraint(
                condition=models.Q(state="firing") | models.Q(resolved_at__isnull=False),
                name="audit_alert_resolved_has_time",
            ),
            models.CheckConstraint(condition=models.Q(count__gte=1), name="audit_alert_count_positive"),
        ]
        indexes = [models.Index(fields=["state", "-last_seen"], name="audit_alert_state_recent")]

    def __str__(self) -> str:
        return f"[{self.severity}] {self.title}"


class Incident(models.Model):
    """Opened by a kill-switch trip or a critical alert (or by hand); closed only with a root
    cause, the impact and at least one corrective action."""

    class State(models.TextChoices):
        OPEN = "open"
        CLOSED = "closed"

    id = models.BigAutoField(primary_key=True)
    title = models.CharField(max_length=200)
    severity = models.CharField(max_length=8, choices=AlertSeverity.choices)
    state = models.CharField(max_length=8, choices=State.choices, default=State.OPEN)
    opened_at = models.DateTimeField()
    opened_by = models.CharField(max_length=150)
    root_cause = models.TextField(blank=True)
    impact = models.TextField(blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    closed_by = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-opened_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(state="open")
                | (models.Q(closed_at__isnull=False) & ~models.Q(root_cause="") & ~models.Q(impact="")),
                name="audit_incident_closed_has_post_mortem",
            ),
        ]

    def __str__(self) -> str:
        return f"Incident {self.pk}: {self.title}"


class CorrectiveAction(models.Model):
    class Status(models.TextChoices):
        OPEN = "open"
        DONE = "done"

    id = models.BigAutoField(primary_key=True)
    incident = models.ForeignKey(Incident, on_delete=models.PROTECT, related_name="actions")
    description = models.TextField()
    owner = models.CharField(max_length=150)
    due_date = models.DateField()
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.OPEN)
    created_at = models.DateTimeField()
    done_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["due_date", "id"]

    def __str__(self) -> str:
        return f"{self.description[:60]} ({self.owner}, due {self.due_date})"


class Notification(models.Model):
    """Outbox of alert notifications, written with the alert change it announces; a
    dispatcher sends them off the trading path (timeouts, retries with backoff, counted)."""

    class Channel(models.TextChoices):
        SLACK = "slack"
        EMAIL = "email"

    class Status(models.TextChoices):
        PENDING = "pending"
        SENT = "sent"
        FAILED = "failed"

    id = models.BigAutoField(primary_key=True)
    alert = models.ForeignKey(Alert, on_delete=models.PROTECT, related_name="notifications")
    channel = models.CharField(max_length=8, choices=Channel.choices)
    kind = models.CharField(max_length=10, help_text="firing, reminder or resolved.")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="audit_notification_due")]

    def __str__(self) -> str:
        return f"{self.channel} {self.kind} of alert {self.alert_id}: {self.status}"


class MirrorOutbox(models.Model):
    """Documents to mirror to MongoDB (when MONGO_URL is set), written in the same transaction
    as what they mirror and shipped later in `id` order (audit.mirror)."""

    class Kind(models.TextChoices):
        AUDIT_EVENT = "audit_event"
        RULE_VERSION = "rule_version"

    id = models.BigAutoField(primary_key=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    key = models.CharField(max_length=100, help_text="The document's _id in its collection.")
    document = models.JSONField()
    created_at = models.DateTimeField()
    shipped_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        indexes = [models.Index(fields=["shipped_at", "id"], name="audit_mirror_pending")]

    def __str__(self) -> str:
        return f"{self.kind} {self.key} ({'shipped' if self.shipped_at else 'pending'})"
