"""Input and output serializers of the audit API."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from oasis_site.api.fields import UtcTimeField
from oasis_site.api.pagination import PageParameters


class AuditEventListInput(PageParameters):
    action = serializers.CharField(
        required=False, max_length=100, help_text='Exact, or a prefix ending in "." (e.g. "trading.").'
    )
    actor = serializers.CharField(
        required=False, max_length=150, help_text="e.g. user:alice, system:backfill."
    )
    object_type = serializers.CharField(required=False, max_length=100, help_text="e.g. trading.killswitch.")
    object_id = serializers.CharField(required=False, max_length=100)
    start = UtcTimeField(required=False, help_text="Recorded from: ISO 8601 or epoch ms.")
    end = UtcTimeField(required=False, help_text="Recorded until, included.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        start, end = attrs.get("start"), attrs.get("end")
        if start is not None and end is not None and start > end:
            raise serializers.ValidationError({"start": ["must not be after end"]})
        return attrs


class AuditEventOutput(serializers.Serializer):  # type: ignore[type-arg]
    seq = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    actor = serializers.CharField()
    action = serializers.CharField()
    object_type = serializers.CharField()
    object_id = serializers.CharField()
    payload = serializers.JSONField()
    prev_hash = serializers.CharField()
    hash = serializers.CharField()
