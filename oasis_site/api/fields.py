"""Serializer fields for what every app's API exchanges: exact decimals and UTC times."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

# Epoch milliseconds from 1970 to 9999: what a `start`/`end` number may be.
MAX_EPOCH_MS = 253_402_300_799_999
_EPOCH_MS = re.compile(r"-?[0-9]{1,16}")


@extend_schema_field(
    {
        "type": "string",
        "pattern": r"^-?[0-9]+(\.[0-9]+)?$",
        "description": "A decimal number as a string, digit for digit as stored.",
        "example": "27450.12000000",
    }
)
class ExactDecimalField(serializers.Field):  # type: ignore[type-arg]
    """A Decimal as its fixed-point text, exactly as stored ("27450.12000000", never "2.745E+4"):
    prices and quantities never pass through a float."""

    def to_representation(self, value: Decimal) -> str:
        return format(value, "f")

    def to_internal_value(self, data: Any) -> Decimal:
        if not isinstance(data, str) or not re.fullmatch(r"-?[0-9]{1,20}(\.[0-9]{1,18})?", data):
            raise serializers.ValidationError('must be a decimal number as a string, e.g. "2.5"')
        return Decimal(data)


@extend_schema_field(
    {
        "type": "string",
        "format": "date-time",
        "description": "ISO 8601 with a UTC offset, or epoch milliseconds.",
        "example": "2026-03-01T00:00:00Z",
    }
)
class UtcTimeField(serializers.Field):  # type: ignore[type-arg]
    """A moment given as ISO 8601 with its offset ("2026-01-01T00:00:00Z") or as epoch
    milliseconds ("1767225600000"); always a timezone-aware UTC datetime inside."""

    default_error_messages = {
        "invalid": "must be ISO 8601 with a UTC offset (e.g. 2026-01-01T00:00:00Z) or epoch milliseconds",
        "naive": "give the UTC offset (e.g. 2026-01-01T00:00:00Z) or epoch milliseconds",
        "range": "is outside the years 1970 to 9999",
    }

    def to_internal_value(self, data: Any) -> datetime:
        text = str(data).strip()
        if _EPOCH_MS.fullmatch(text):
            ms = int(text)
            if not 0 <= ms <= MAX_EPOCH_MS:
                self.fail("range")
            return datetime.fromtimestamp(ms / 1000, tz=UTC)
        try:
            moment = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            self.fail("invalid")
        if moment.tzinfo is None:
            self.fail("naive")
        try:
            utc = moment.astimezone(UTC)
        except (OverflowError, ValueError):
            self.fail("range")
        if utc.year < 1970:
            self.fail("range")
        return utc

    def to_representation(self, value: datetime) -> str:
        return iso_utc(value)


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z: 2026-01-01T00:00:00Z (milliseconds when there are any)."""
    utc = moment.astimezone(UTC)
    text = utc.isoformat(timespec="milliseconds" if utc.microsecond else "seconds")
    return text.replace("+00:00", "Z")
