from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin[AuditEvent]):
    """Read-only: the audit log is written by services only and never changed."""

    list_display = ("seq", "created_at", "actor", "action", "object_type", "object_id")
    list_filter = ("action", "object_type", "created_at", "actor")
    search_fields = ("actor", "action", "object_type", "object_id", "hash")
    date_hierarchy = "created_at"
    ordering = ("-seq",)
    list_per_page = 100
    show_full_result_count = False
    readonly_fields = (
        "seq",
        "created_at",
        "actor",
        "action",
        "object_type",
        "object_id",
        "payload",
        "prev_hash",
        "hash",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
