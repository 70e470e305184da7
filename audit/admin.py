from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html_join
from django.utils.safestring import mark_safe

from audit.alerting import (
    IncidentError,
    alert_resolve,
    incident_action_add,
    incident_action_done,
    incident_close,
    incident_open,
    incident_post_mortem_edit,
)
from audit.models import Alert, AuditEvent, CorrectiveAction, Incident
from audit.selectors import incident_timeline
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


@admin.register(Alert)
class AlertAdmin(ReadOnlyModelAdmin):
    """Alerts are raised and resolved by the routines that watch their conditions; an operator
    may resolve one by hand (audited) when its condition is known to be gone."""

    list_display = ("last_seen", "severity", "state", "title", "count", "key", "incident")
    list_filter = ("state", "severity", "key")
    search_fields = ("key", "title", "detail")
    ordering = ("-last_seen",)
    actions = ["resolve_selected"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The changelist's actions need it; every field stays read-only.
        return bool(request.user.is_staff)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [field.name for field in Alert._meta.fields]

    @admin.action(description="Resolve the selected alerts (their condition is gone)")
    def resolve_selected(self, request: HttpRequest, queryset: QuerySet[Alert]) -> None:
        resolved = 0
        for key in queryset.filter(state=Alert.State.FIRING).values_list("key", flat=True):
            if alert_resolve(key=key, actor=request.user) is not None:  # type: ignore[arg-type]
                resolved += 1
        self.message_user(request, f"{resolved} alert(s) resolved.")


class CorrectiveActionInline(admin.TabularInline[CorrectiveAction, Incident]):
    model = CorrectiveAction
    extra = 1
    fields = ("description", "owner", "due_date", "status", "done_at")
    readonly_fields = ("done_at",)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class AlertInline(admin.TabularInline[Alert, Incident]):
    model = Alert
    extra = 0
    fields = ("first_seen", "severity", "state", "title", "count")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Incident)
class IncidentAdmin(admin.ModelAdmin[Incident]):
    """Open by hand or automatically; write the post-mortem and the corrective actions here,
    then close with the action (refused without root cause, impact and an action)."""

    list_display = ("id", "opened_at", "severity", "state", "title", "opened_by", "closed_at")
    list_filter = ("state", "severity")
    search_fields = ("title", "root_cause", "impact")
    ordering = ("-opened_at",)
    inlines = [CorrectiveActionInline, AlertInline]
    actions = ["close_selected"]
    readonly_fields = ("state", "opened_at", "opened_by", "closed_at", "closed_by", "timeline")
    fields = (
        "title",
        "severity",
        "state",
        "root_cause",
        "impact",
        "opened_at",
        "opened_by",
        "closed_at",
        "closed_by",
        "timeline",
    )

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Incident | None = None) -> tuple[str, ...]:
        if obj is not None and obj.state == Incident.State.CLOSED:
            return tuple(self.fields)
        if obj is not None:
            return (*self.readonly_fields, "title", "severity")
        return self.readonly_fields

    @admin.display(description="Timeline")
    def timeline(self, obj: Incident | None) -> str:
        if obj is None or obj.pk is None:
            return ""
        rows = [
            f"{entry.at:%Y-%m-%d %H:%M:%S} · {entry.kind} · {entry.text}" for entry in incident_timeline(obj)
        ]
        return format_html_join(mark_safe("<br>"), "{}", ((row,) for row in rows)) or "—"

    def save_model(self, request: HttpRequest, obj: Incident, form: Any, change: bool) -> None:
        actor: Any = request.user
        if not change:
            opened = incident_open(title=obj.title, severity=obj.severity, actor=actor)
            obj.pk, obj.opened_at, obj.opened_by = opened.pk, opened.opened_at, opened.opened_by
            obj._state.adding = False
            if obj.root_cause or obj.impact:
                incident_post_mortem_edit(
                    incident=opened, root_cause=obj.root_cause, impact=obj.impact, actor=actor
                )
            return
        incident_post_mortem_edit(incident=obj, root_cause=obj.root_cause, impact=obj.impact, actor=actor)

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        if formset.model is not CorrectiveAction:
            return
        actor: Any = request.user
        for action_form in formset.forms:
            if not action_form.has_changed() or not action_form.cleaned_data:
                continue
            action = action_form.instance
            if action.pk is None:
                created = incident_action_add(
                    incident=form.instance,
                    description=action_form.cleaned_data["description"],
                    owner=action_form.cleaned_data["owner"],
                    due_date=action_form.cleaned_data["due_date"],
                    actor=actor,
                )
                if action_form.cleaned_data.get("status") == CorrectiveAction.Status.DONE:
                    incident_action_done(action=created, actor=actor)
            elif "status" in action_form.changed_data and action.status == CorrectiveAction.Status.DONE:
                incident_action_done(action=CorrectiveAction.objects.get(pk=action.pk), actor=actor)

    @admin.action(
        description="Close the selected incidents (needs root cause, impact and a corrective action)"
    )
    def close_selected(self, request: HttpRequest, queryset: QuerySet[Incident]) -> None:
        for incident in queryset:
            try:
                incident_close(
                    incident=incident,
                    root_cause=incident.root_cause,
                    impact=incident.impact,
                    actor=request.user,  # type: ignore[arg-type]
                )
            except IncidentError as error:
                self.message_user(request, str(error), level=messages.ERROR)
            else:
                self.message_user(request, f"Incident {incident.pk} closed.")
