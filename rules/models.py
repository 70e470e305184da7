"""Rules as data: a RuleConfig and its immutable versions, and the signals they produce."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from marketdata.core.timeframes import Timeframe
from marketdata.models import Symbol
from oasis_site.flags import rule_flag

TIMEFRAME_CHOICES = [(tf.value, tf.value) for tf in Timeframe]


class RuleConfig(models.Model):
    """A trading rule. What it does is the spec of its active version; editing it creates a new
    version, never changes one. `symbols` and `timeframes` say which pairs it covers (copied
    from the active version, so "which active rules cover BTCUSDT 5m" is one query)."""

    class Status(models.TextChoices):
        DRAFT = "draft"
        ACTIVE = "active"
        RETIRED = "retired"

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    symbols = models.JSONField(default=list, help_text='Symbol names, e.g. ["BTCUSDT", "ETHUSDT"].')
    timeframes = models.JSONField(default=list, help_text="From the active version's spec.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    active_version = models.ForeignKey(
        "RuleConfigVersion", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(status="active") | models.Q(active_version__isnull=False),
                name="rules_ruleconfig_active_has_version",
            )
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def flag_name(self) -> str:
        """The django-waffle flag that switches this rule on gradually (`oasis_site.flags`)."""
        return rule_flag(self.pk)


class ImmutableVersionError(RuntimeError):
    pass


class RuleConfigVersion(models.Model):
    """One version of a rule's spec. Immutable once saved: a change is a new version."""

    config = models.ForeignKey(RuleConfig, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    spec = models.JSONField()
    symbols = models.JSONField(default=list)
    checksum = models.CharField(max_length=64, help_text="sha256 of the canonical spec and symbols.")
    parent = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="children"
    )
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True)
    comment = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["config", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["config", "number"], name="rules_version_unique_number"),
            models.CheckConstraint(condition=models.Q(number__gte=1), name="rules_version_number_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.config.name} v{self.number}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise ImmutableVersionError("a rule version is immutable: save a new version instead")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise ImmutableVersionError("a rule version is never deleted")


class Signal(models.Model):
    """What a rule version said when a candle closed: enter or exit (no row when it said
    nothing). One per (symbol, timeframe, candle, version): recomputing it changes nothing."""

    class Action(models.TextChoices):
        ENTER = "enter"
        EXIT = "exit"

    id = models.BigAutoField(primary_key=True)
    symbol = models.ForeignKey(Symbol, on_delete=models.PROTECT, related_name="signals")
    timeframe = models.CharField(max_length=4, choices=TIMEFRAME_CHOICES)
    open_time = models.DateTimeField(help_text="Open time of the candle whose close produced it.")
    rule_version = models.ForeignKey(RuleConfigVersion, on_delete=models.PROTECT, related_name="signals")
    action = models.CharField(max_length=5, choices=Action.choices)
    indicators = models.JSONField(help_text="Indicator values and candle fields the rule saw.")
    computed_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["symbol", "timeframe", "open_time", "rule_version"], name="rules_signal_unique"
            )
        ]
        indexes = [models.Index(fields=["-computed_at"], name="rules_signal_recent")]

    def __str__(self) -> str:
        return f"{self.action} {self.symbol_id} {self.timeframe} {self.open_time:%Y-%m-%d %H:%M}"
