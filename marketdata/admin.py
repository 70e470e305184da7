"""Market data in the admin, read-only: it is written by ingestion, backfills and the gap scan
(services), never by hand. Gaps can be sent for another backfill attempt."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from marketdata.models import Candle, Gap, Symbol, SymbolFilterSnapshot
from oasis_site.readonly_admin import ReadOnlyModelAdmin


class SymbolFilterSnapshotInline(admin.TabularInline[SymbolFilterSnapshot, Symbol]):
    model = SymbolFilterSnapshot
    fields = ("valid_from", "status", "filters")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("-valid_from",)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Symbol)
class SymbolAdmin(ReadOnlyModelAdmin):
    list_display = ("symbol", "exchange", "status", "base", "quote", "updated_at")
    list_filter = ("exchange", "status", "quote")
    search_fields = ("symbol", "base", "quote")
    inlines = [SymbolFilterSnapshotInline]


@admin.register(Candle)
class CandleAdmin(ReadOnlyModelAdmin):
    list_display = (
        "symbol", "timeframe", "open_time", "open", "high", "low", "close", "volume",
        "source", "is_imputed", "imputed_inputs",
    )  # fmt: skip
    list_filter = ("timeframe", "source", "is_imputed", "symbol__exchange")
    search_fields = ("symbol__symbol",)
    list_select_related = ("symbol",)
    ordering = ("-open_time",)
    show_full_result_count = False  # millions of rows: no COUNT(*) per page


@admin.register(Gap)
class GapAdmin(ReadOnlyModelAdmin):
    list_display = (
        "symbol", "timeframe", "start", "end", "status", "attempts", "candles_backfilled",
        "candles_imputed", "next_attempt_at", "reason",
    )  # fmt: skip
    list_filter = ("status", "timeframe", "symbol__exchange")
    search_fields = ("symbol__symbol", "reason")
    list_select_related = ("symbol",)
    ordering = ("-detected_at",)
    actions = ["retry_now"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super(ReadOnlyModelAdmin, self).has_change_permission(
            request, obj
        )  # for the action

    @admin.action(description="Backfill the selected unresolved gaps now")
    def retry_now(self, request: HttpRequest, queryset: QuerySet[Gap]) -> None:
        from marketdata.tasks import gap_backfill_start

        started = 0
        for gap in queryset.filter(status__in=(Gap.Status.OPEN, Gap.Status.FAILED)):
            gap_backfill_start(gap)
            started += 1
        messages.info(request, f"{started} gap backfill(s) started; resolved gaps are left as they are.")
