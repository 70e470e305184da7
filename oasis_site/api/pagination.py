"""Cursor pagination by key (keyset): each page continues after the last row of the one before,
in the order of one unique column (a candle's open time, an event's sequence number, an id).

Unlike offset pages, a page costs one index range scan however deep it is, and rows written while
a script pages (new candles, new events) neither shift nor repeat rows. The cursor is opaque to
clients (base64 of the key and its last value) and checked: a malformed or foreign cursor is a
400 naming `cursor`. Pages go forward only; `next` is null on the last page.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlencode

from django.db.models import QuerySet
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from oasis_site.api.fields import MAX_EPOCH_MS

KeyKind = Literal["int", "time"]
MAX_KEY = 2**63 - 1


@dataclass(frozen=True)
class Keyset:
    """The column pages follow: its name, whether it holds ints or times, and the direction."""

    field: str
    kind: KeyKind = "int"
    descending: bool = False

    @property
    def ordering(self) -> str:
        return f"-{self.field}" if self.descending else self.field

    def encode(self, row: Any) -> str:
        value = row[self.field] if isinstance(row, dict) else getattr(row, self.field)
        number = int(value.timestamp() * 1000) if self.kind == "time" else int(value)
        body = json.dumps({"k": self.field, "v": number}, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(body).decode().rstrip("=")

    def decode(self, cursor: str) -> int:
        try:
            padded = cursor + "=" * (-len(cursor) % 4)
            body = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        except (ValueError, binascii.Error, UnicodeError):
            raise serializers.ValidationError({"cursor": ["malformed cursor"]}) from None
        if not isinstance(body, dict) or body.get("k") != self.field:
            raise serializers.ValidationError({"cursor": ["not a cursor of this endpoint"]})
        value = body.get("v")
        high = MAX_EPOCH_MS if self.kind == "time" else MAX_KEY
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
            raise serializers.ValidationError({"cursor": ["malformed cursor"]})
        return value

    def after(self, queryset: QuerySet[Any], value: int) -> QuerySet[Any]:
        bound: int | datetime = datetime.fromtimestamp(value / 1000, tz=UTC) if self.kind == "time" else value
        lookup = "lt" if self.descending else "gt"
        return queryset.filter(**{f"{self.field}__{lookup}": bound})


@dataclass(frozen=True)
class Page:
    rows: Sequence[Any]
    next_cursor: str | None


def keyset_page(queryset: QuerySet[Any], *, keyset: Keyset, cursor: str | None, limit: int) -> Page:
    """At most `limit` rows of `queryset` after `cursor`, in the keyset's order (one query: the
    page and one more row, which says whether there is a next page)."""
    if cursor:
        queryset = keyset.after(queryset, keyset.decode(cursor))
    rows = list(queryset.order_by(keyset.ordering)[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows=rows, next_cursor=keyset.encode(rows[-1]) if more and rows else None)


def page_response(request: Request, page: Page, results: Any) -> Response:
    """{"next": url or null, "results": [...]}; the next page's URL is also the `Link` header
    (rel="next"), which is where a CSV client finds it."""
    next_url = None
    if page.next_cursor is not None:
        query = {key: value for key, value in request.query_params.items() if key != "cursor"}
        query["cursor"] = page.next_cursor
        next_url = request.build_absolute_uri(request.path) + "?" + urlencode(query)
    response = Response({"next": next_url, "results": results})
    if next_url is not None:
        response["Link"] = f'<{next_url}>; rel="next"'
    return response


def paginated(serializer_class: type[serializers.Serializer[Any]]) -> type[serializers.Serializer[Any]]:
    """The schema of a page of `serializer_class` rows (for drf-spectacular)."""
    name = serializer_class.__name__.removesuffix("Serializer").removesuffix("Output") + "Page"
    fields = {
        "next": serializers.URLField(allow_null=True, help_text="The next page, or null on the last."),
        "results": serializer_class(many=True),
    }
    return type(name, (serializers.Serializer,), {**fields, "__module__": serializer_class.__module__})


class PageParameters(serializers.Serializer):  # type: ignore[type-arg]
    """`cursor` and `limit`, shared by every paged list; subclasses add their filters."""

    default_limit = 100
    max_limit = 1000

    cursor = serializers.RegexField(
        r"^[A-Za-z0-9_-]*$",
        required=False,
        allow_blank=True,
        max_length=200,
        help_text="From the previous page's `next` (opaque).",
    )
    limit = serializers.IntegerField(required=False, min_value=1, help_text="Rows per page.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limit = self.fields["limit"]
        assert isinstance(limit, serializers.IntegerField)
        limit.help_text = f"Rows per page: {self.default_limit} by default, at most {self.max_limit}."
        limit.max_value = self.max_limit  # for the schema; validate_limit names the parameter

    def validate_limit(self, value: int) -> int:
        if value > self.max_limit:
            raise serializers.ValidationError(f"must be at most {self.max_limit}")
        return value

    def page_limit(self) -> int:
        return int(self.validated_data.get("limit") or self.default_limit)
