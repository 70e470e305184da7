"""Rules in the admin: saving an edit validates the spec and creates a new version; the change
page lists the versions, diffs any two side by side, and activates or rolls back. The admin
only calls `rules.services`, which audit every change."""

from __future__ import annotations

import difflib
import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.views.decorators.http import require_POST

from rules.models import RuleConfig, RuleConfigVersion, Signal
from rules.services import (
    RuleInputError,
    rule_config_create,
    rule_config_update,
    rule_input_validate,
    rule_rollback,
    rule_version_activate,
    rule_version_create,
)


class RuleConfigForm(forms.ModelForm[RuleConfig]):
    spec = forms.CharField(
        widget=forms.Textarea(
            attrs={"rows": 28, "cols": 100, "spellcheck": "false", "class": "vLargeTextField"}
        ),
        help_text="JSON, see docs/rules.md. Saving a change creates a new version; none is ever changed.",
    )
    symbol_list = forms.CharField(label="Symbols", help_text="Comma-separated, e.g. BTCUSDT, ETHUSDT.")
    comment = forms.CharField(required=False, max_length=500, help_text="Why this version (kept with it).")

    class Meta:
        model = RuleConfig
        fields = ["name", "description"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        newest = self.instance.versions.order_by("-number").first() if self.instance.pk else None
        if newest is not None:
            self.fields["spec"].initial = json.dumps(newest.spec, indent=2, sort_keys=True)
            self.fields["symbol_list"].initial = ", ".join(newest.symbols)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        text = cleaned.get("spec")
        symbols = [name.strip().upper() for name in cleaned.get("symbol_list", "").split(",") if name.strip()]
        cleaned["symbols"] = symbols
        if text is None:
            return cleaned
        try:
            cleaned["spec_data"] = json.loads(text)
        except json.JSONDecodeError as exc:
            self.add_error("spec", f"not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}")
            return cleaned
        try:
            rule_input_validate(spec=cleaned["spec_data"], symbols=symbols)
        except RuleInputError as exc:
            for field, message in exc.errors:
                self.add_error("symbol_list" if field == "symbols" else "spec", f"{field}: {message}")
        return cleaned


@admin.register(RuleConfig)
class RuleConfigAdmin(admin.ModelAdmin[RuleConfig]):
    form = RuleConfigForm
    list_display = ("name", "status", "active_number", "timeframe_list", "symbol_count", "updated_at")
    list_filter = ("status",)
    search_fields = ("name", "description")
    readonly_fields = ("status", "active_version", "timeframes", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "description", "status", "active_version", "timeframes")}),
        ("New version", {"fields": ("symbol_list", "spec", "comment")}),
        ("Record", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}),
    )
    change_form_template = "admin/rules/ruleconfig/change_form.html"

    @admin.display(description="active version")
    def active_number(self, config: RuleConfig) -> str:
        return "—" if config.active_version is None else f"v{config.active_version.number}"

    @admin.display(description="timeframes")
    def timeframe_list(self, config: RuleConfig) -> str:
        return ", ".join(config.timeframes)

    @admin.display(description="symbols")
    def symbol_count(self, config: RuleConfig) -> int:
        return len(config.symbols)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # retire a rule; its versions and signals are history

    def save_model(self, request: HttpRequest, obj: RuleConfig, form: Any, change: bool) -> None:
        data = form.cleaned_data
        try:
            if not change:
                created = rule_config_create(
                    name=data["name"],
                    description=data.get("description", ""),
                    symbols=data["symbols"],
                    spec=data["spec_data"],
                    author=request.user,  # type: ignore[arg-type]
                    comment=data.get("comment", ""),
                )
                obj.pk = created.pk
                obj.refresh_from_db()
                return
            rule_config_update(
                config=obj,
                name=data["name"],
                description=data.get("description", ""),
                actor=request.user,  # type: ignore[arg-type]
            )
            before = obj.versions.order_by("-number").values_list("number", flat=True).first()
            version = rule_version_create(
                config=obj,
                spec=data["spec_data"],
                symbols=data["symbols"],
                author=request.user,  # type: ignore[arg-type]
                comment=data.get("comment", ""),
            )
            if version.number != before:
                messages.info(request, f"Saved as version {version.number}; activate it to run it.")
        except RuleInputError as exc:  # validated in the form; a race can still get here
            raise PermissionDenied(str(exc)) from exc

    def get_urls(self) -> list[URLPattern]:
        own = [
            path(
                "<int:config_id>/versions/<int:number>/activate/",
                self.admin_site.admin_view(require_POST(self.activate_view)),
                name="rules_ruleconfig_activate",
            ),
            path(
                "<int:config_id>/rollback/",
                self.admin_site.admin_view(require_POST(self.rollback_view)),
                name="rules_ruleconfig_rollback",
            ),
            path(
                "<int:config_id>/diff/",
                self.admin_site.admin_view(self.diff_view),
                name="rules_ruleconfig_diff",
            ),
        ]
        return own + super().get_urls()

    def _config(self, request: HttpRequest, config_id: int) -> RuleConfig:
        config = get_object_or_404(RuleConfig, pk=config_id)
        if not self.has_change_permission(request, config):
            raise PermissionDenied
        return config

    def _back(self, config: RuleConfig) -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse("admin:rules_ruleconfig_change", args=[config.pk]))

    def activate_view(self, request: HttpRequest, config_id: int, number: int) -> HttpResponse:
        config = self._config(request, config_id)
        version = get_object_or_404(RuleConfigVersion, config=config, number=number)
        rule_version_activate(version=version, actor=request.user)  # type: ignore[arg-type]
        messages.success(request, f"Version {number} of {config.name} is active.")
        return self._back(config)

    def rollback_view(self, request: HttpRequest, config_id: int) -> HttpResponse:
        config = self._config(request, config_id)
        try:
            config = rule_rollback(config=config, actor=request.user)  # type: ignore[arg-type]
        except RuleInputError as exc:
            messages.error(request, str(exc))
        else:
            assert config.active_version is not None
            messages.success(request, f"Rolled back: version {config.active_version.number} is active.")
        return self._back(config)

    def diff_view(self, request: HttpRequest, config_id: int) -> HttpResponse:
        config = self._config(request, config_id)
        try:
            a, b = int(request.GET["a"]), int(request.GET["b"])
        except (KeyError, ValueError):
            messages.error(request, "Choose two versions to compare.")
            return self._back(config)
        left = get_object_or_404(RuleConfigVersion, config=config, number=a)
        right = get_object_or_404(RuleConfigVersion, config=config, number=b)
        table = difflib.HtmlDiff(wrapcolumn=70).make_table(
            _lines(left), _lines(right), f"version {a}", f"version {b}", context=False
        )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": config,
            "title": f"{config.name}: version {a} ↔ version {b}",
            "left": left,
            "right": right,
            "table": table,
        }
        return TemplateResponse(request, "admin/rules/ruleconfig/diff.html", context)


def _lines(version: RuleConfigVersion) -> list[str]:
    body = {"symbols": version.symbols, "spec": version.spec}
    return json.dumps(body, indent=2, sort_keys=True).splitlines()


@admin.register(RuleConfigVersion)
class RuleConfigVersionAdmin(admin.ModelAdmin[RuleConfigVersion]):
    """Read-only: versions are created by saving the rule and never changed."""

    list_display = ("config", "number", "created_at", "author", "comment")
    list_filter = ("config",)
    readonly_fields = (
        "config",
        "number",
        "spec",
        "symbols",
        "checksum",
        "parent",
        "author",
        "comment",
        "created_at",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Signal)
class SignalAdmin(admin.ModelAdmin[Signal]):
    list_display = ("computed_at", "symbol", "timeframe", "open_time", "action", "rule_version")
    list_filter = ("action", "timeframe", "rule_version__config")
    date_hierarchy = "open_time"
    readonly_fields = (
        "symbol",
        "timeframe",
        "open_time",
        "rule_version",
        "action",
        "indicators",
        "computed_at",
    )
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
