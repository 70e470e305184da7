from django.contrib import admin

from audit.models import AuditEvent
from oasis_site.readonly_admin import ReadOnlyModelAdmin


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyModelAdmin):
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
