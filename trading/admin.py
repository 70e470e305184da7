"""Trading in the admin. Orders, fills, positions, balances, equity and signal decisions are
read-only: services write them, never a person through a form. The kill switch has one page:
its state and history, with Engage and Release forms that call `trading.killswitch` (which
audits and broadcasts every change) as the logged-in user."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_GET, require_POST

from audit.models import AuditEvent
from oasis_site.readonly_admin import ReadOnlyModelAdmin
from trading.core.types import KillSwitchState
from trading.killswitch import KillSwitchError, killswitch_engage, killswitch_release, killswitch_view
from trading.models import (
    BacktestRun,
    Balance,
    EquitySnapshot,
    Fill,
    KillSwitch,
    Order,
    Position,
    SignalDecision,
)

HISTORY_LENGTH = 20


class FillInline(admin.TabularInline[Fill, Order]):
    model = Fill
    fields = ("trade_id", "executed_at", "price", "quantity", "fee", "fee_asset", "is_maker", "recorded_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("executed_at", "id")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Order)
class OrderAdmin(ReadOnlyModelAdmin):
    list_display = (
        "created_at", "client_order_id", "mode", "symbol", "side", "type", "status", "reject_reason",
        "quantity", "price", "filled_quantity", "average_price",
    )  # fmt: skip
    list_filter = ("mode", "status", "reject_reason", "side", "type", "symbol__exchange")
    search_fields = ("client_order_id", "exchange_order_id", "symbol__symbol")
    list_select_related = ("symbol",)
    date_hierarchy = "created_at"
    ordering = ("-created_at", "-id")
    show_full_result_count = False
    inlines = [FillInline]


@admin.register(Fill)
class FillAdmin(ReadOnlyModelAdmin):
    list_display = (
        "executed_at", "order_link", "symbol", "side", "trade_id", "price", "quantity", "fee", "fee_asset",
        "is_maker",
    )  # fmt: skip
    list_filter = ("order__mode", "order__side", "is_maker", "fee_asset")
    search_fields = (
        "trade_id",
        "order__client_order_id",
        "order__exchange_order_id",
        "order__symbol__symbol",
    )
    list_select_related = ("order__symbol",)
    ordering = ("-executed_at", "-id")
    show_full_result_count = False

    @admin.display(description="order", ordering="order__client_order_id")
    def order_link(self, fill: Fill) -> str:
        url = reverse("admin:trading_order_change", args=[fill.order_id])
        return format_html('<a href="{}">{}</a>', url, fill.order.client_order_id)

    @admin.display(description="symbol", ordering="order__symbol__symbol")
    def symbol(self, fill: Fill) -> str:
        return fill.order.symbol.symbol

    @admin.display(description="side", ordering="order__side")
    def side(self, fill: Fill) -> str:
        return fill.order.side


@admin.register(Position)
class PositionAdmin(ReadOnlyModelAdmin):
    list_display = (
        "mode", "symbol", "quantity", "average_price", "mark_price", "unrealized_pnl", "realized_pnl",
        "fees", "last_trade_at", "updated_at",
    )  # fmt: skip
    list_filter = ("mode", "symbol__exchange")
    search_fields = ("symbol__symbol",)
    list_select_related = ("symbol",)
    ordering = ("mode", "symbol__symbol")


@admin.register(Balance)
class BalanceAdmin(ReadOnlyModelAdmin):
    list_display = ("mode", "asset", "free", "locked", "updated_at")
    list_filter = ("mode",)
    search_fields = ("asset",)
    ordering = ("mode", "asset")


@admin.register(EquitySnapshot)
class EquitySnapshotAdmin(ReadOnlyModelAdmin):
    list_display = (
        "taken_at", "mode", "quote_asset", "equity", "cash", "positions_value", "realized_pnl",
        "unrealized_pnl", "fees", "peak_equity", "drawdown_pct",
    )  # fmt: skip
    list_filter = ("mode", "quote_asset")
    date_hierarchy = "taken_at"
    ordering = ("-taken_at", "-id")
    show_full_result_count = False


@admin.register(SignalDecision)
class SignalDecisionAdmin(ReadOnlyModelAdmin):
    list_display = ("decided_at", "signal", "mode", "outcome", "reason")
    list_filter = ("mode", "outcome", "reason")
    search_fields = ("signal__symbol__symbol", "reason")
    list_select_related = ("signal",)
    ordering = ("-decided_at", "-id")
    show_full_result_count = False


@admin.register(BacktestRun)
class BacktestRunAdmin(ReadOnlyModelAdmin):
    """Runs are made by `manage.py backtest`; here they are looked at, with their report."""

    list_display = (
        "id",
        "created_at",
        "rule_version",
        "status",
        "candles",
        "imputed_candles",
        "net_pnl",
        "report",
    )
    list_filter = ("status",)
    list_select_related = ("rule_version__config",)
    ordering = ("-created_at", "-id")

    @admin.display(description="net PnL")
    def net_pnl(self, run: BacktestRun) -> str:
        return str((run.results or {}).get("net_pnl", ""))

    @admin.display(description="report")
    def report(self, run: BacktestRun) -> str:
        if run.status != BacktestRun.Status.SUCCEEDED:
            return ""
        return format_html('<a href="{}">report</a>', reverse("trading:backtest_report", args=[run.pk]))


class KillSwitchEngageForm(forms.Form):
    state = forms.ChoiceField(
        choices=[(s.value, s.value.upper()) for s in (KillSwitchState.HALTED, KillSwitchState.REDUCING)],
        help_text=(
            "HALTED: no new orders (cancels still go out). REDUCING: only orders that reduce a position."
        ),
    )
    reason = forms.CharField(
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 2, "cols": 80}),
        help_text="Required; it goes into the audit log.",
    )


class KillSwitchReleaseForm(forms.Form):
    reason = forms.CharField(
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 2, "cols": 80}),
        help_text="Required; it goes into the audit log.",
    )


@admin.register(KillSwitch)
class KillSwitchAdmin(admin.ModelAdmin[KillSwitch]):
    """One page instead of a list and a form: the row may not exist yet (the switch is ACTIVE
    then), and its fields are only ever written by `trading.killswitch`."""

    control_template = "admin/trading/killswitch/control.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        own = [
            path(
                "engage/",
                self.admin_site.admin_view(require_POST(self.engage_view)),
                name="trading_killswitch_engage",
            ),
            path(
                "release/",
                self.admin_site.admin_view(require_POST(self.release_view)),
                name="trading_killswitch_release",
            ),
        ]
        return own + super().get_urls()

    @staticmethod
    def _back() -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse("admin:trading_killswitch_changelist"))

    @staticmethod
    def _actor(request: HttpRequest) -> AbstractBaseUser:
        user = request.user
        if not isinstance(user, AbstractBaseUser):  # admin_view lets only logged-in staff through
            raise PermissionDenied
        return user

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        return require_GET(self._control_page)(request)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        # The raw form would let someone write the state without a reason or an audit event.
        return self._back()

    def _control_page(
        self,
        request: HttpRequest,
        *,
        engage_form: KillSwitchEngageForm | None = None,
        release_form: KillSwitchReleaseForm | None = None,
    ) -> HttpResponse:
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        view = killswitch_view()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Kill switch",
            "view": view,
            "can_change": self.has_change_permission(request),
            "engage_form": engage_form or KillSwitchEngageForm(auto_id="engage_%s"),
            "release_form": release_form or KillSwitchReleaseForm(auto_id="release_%s"),
            "history": _history(),
        }
        return TemplateResponse(request, self.control_template, context)

    def engage_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_change_permission(request):
            raise PermissionDenied
        form = KillSwitchEngageForm(request.POST, auto_id="engage_%s")
        if not form.is_valid():
            messages.error(request, "The kill switch was not changed: correct the errors below.")
            return self._control_page(request, engage_form=form)
        state = KillSwitchState(form.cleaned_data["state"])
        try:
            killswitch_engage(state=state, reason=form.cleaned_data["reason"], actor=self._actor(request))
        except KillSwitchError as error:
            messages.error(request, f"The kill switch was not changed: {error}")
            return self._control_page(request, engage_form=form)
        messages.success(request, f"Kill switch engaged: {state.value.upper()}.")
        return self._back()

    def release_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_change_permission(request):
            raise PermissionDenied
        form = KillSwitchReleaseForm(request.POST, auto_id="release_%s")
        if not form.is_valid():
            messages.error(request, "The kill switch was not changed: correct the errors below.")
            return self._control_page(request, release_form=form)
        try:
            killswitch_release(reason=form.cleaned_data["reason"], actor=self._actor(request))
        except KillSwitchError as error:
            messages.error(request, f"The kill switch was not changed: {error}")
            return self._control_page(request, release_form=form)
        messages.success(request, "Kill switch released: ACTIVE.")
        return self._back()


def _history() -> QuerySet[AuditEvent]:
    """The switch's past states: its audit events, newest first."""
    return AuditEvent.objects.filter(action="trading.killswitch").order_by("-seq")[:HISTORY_LENGTH]
