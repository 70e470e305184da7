"""Dashboard pages and the JSON they refresh from. Thin: read through `selectors`, render.

Each page renders its data into the HTML (a first paint with no request after it), then
its script listens on /ws/live/ and fetches the matching ``*.json`` view for what an event
changed, so a live page and a reloaded one show the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from marketdata.core.timeframes import Timeframe
from marketdata.models import Symbol
from oasis_site.access import api_auth_required
from oasis_site.dashboard import selectors
from trading.models import Mode

View = Callable[..., HttpResponse]


def dashboard_view(view: View) -> View:
    """GET only, never cached, and behind a login when the api_auth_required flag is on."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if api_auth_required() and not request.user.is_authenticated:
            if request.path.endswith(".json"):
                return JsonResponse({"error": "login required: the api_auth_required flag is on"}, status=401)
            return redirect_to_login(request.get_full_path())
        return view(request, *args, **kwargs)

    return require_GET(never_cache(wrapped))


class BadParameter(ValueError):
    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def _bad_request(request: HttpRequest, error: BadParameter) -> HttpResponse:
    if request.path.endswith(".json"):
        return JsonResponse({"error": str(error), "parameter": error.parameter}, status=400)
    context = {"page": "error", "parameter": error.parameter, "message": str(error)}
    return _render(request, "dashboard/bad_request.html", context, status=400)


def _render(request: HttpRequest, template: str, context: dict[str, Any], status: int = 200) -> HttpResponse:
    """Every page shows the kill switch (its banner turns live with the feed)."""
    return render(request, template, {**context, "killswitch": selectors.killswitch_banner()}, status=status)


def _chart_request(symbol: str, request: HttpRequest) -> selectors.ChartRequest:
    row = Symbol.objects.filter(symbol=symbol.upper()).order_by("exchange").first()
    if row is None:
        raise Http404(f"unknown symbol {symbol!r}")
    timeframe = request.GET.get("tf", Timeframe.M1.value)
    if timeframe not in selectors.TIMEFRAMES:
        raise BadParameter("tf", f"tf must be one of {', '.join(selectors.TIMEFRAMES)}; got {timeframe!r}")
    return selectors.ChartRequest(symbol=row, timeframe=Timeframe(timeframe))


def _mode(request: HttpRequest) -> str:
    mode = request.GET.get("mode", Mode.DRY_RUN.value)
    if mode not in Mode.values:
        raise BadParameter("mode", f"mode must be one of {', '.join(Mode.values)}; got {mode!r}")
    return mode


@dashboard_view
def overview(request: HttpRequest) -> HttpResponse:
    return _render(request, "dashboard/overview.html", {"page": "overview", "data": selectors.overview()})


@dashboard_view
def overview_json(request: HttpRequest) -> HttpResponse:
    return JsonResponse(selectors.overview())


@dashboard_view
def symbols_index(request: HttpRequest) -> HttpResponse:
    """The chart of the first symbol (the nav's "Chart")."""
    symbols = selectors.dashboard_symbols()
    if not symbols:
        raise Http404("no symbols yet: run sync_symbols (make run does)")
    return redirect("dashboard:symbol", symbol=symbols[0].symbol)


@dashboard_view
def symbol_page(request: HttpRequest, symbol: str) -> HttpResponse:
    try:
        chart = _chart_request(symbol, request)
    except BadParameter as error:
        return _bad_request(request, error)
    context = {
        "page": "symbol",
        "symbol": chart.symbol.symbol,
        "timeframe": chart.timeframe.value,
        "timeframes": selectors.TIMEFRAMES,
        "symbols": [row.symbol for row in selectors.dashboard_symbols()],
        "data": selectors.symbol_chart(chart),
    }
    return _render(request, "dashboard/symbol.html", context)


@dashboard_view
def symbol_json(request: HttpRequest, symbol: str) -> HttpResponse:
    try:
        return JsonResponse(selectors.symbol_chart(_chart_request(symbol, request)))
    except BadParameter as error:
        return _bad_request(request, error)


@dashboard_view
def trading_page(request: HttpRequest) -> HttpResponse:
    try:
        mode = _mode(request)
    except BadParameter as error:
        return _bad_request(request, error)
    context = {
        "page": "trading",
        "mode": mode,
        "modes": Mode.choices,
        "data": selectors.trading_book(mode=mode),
    }
    return _render(request, "dashboard/trading.html", context)


@dashboard_view
def trading_json(request: HttpRequest) -> HttpResponse:
    try:
        return JsonResponse(selectors.trading_book(mode=_mode(request)))
    except BadParameter as error:
        return _bad_request(request, error)


@dashboard_view
def operations_page(request: HttpRequest) -> HttpResponse:
    return _render(
        request, "dashboard/operations.html", {"page": "operations", "data": selectors.operations()}
    )


@dashboard_view
def operations_json(request: HttpRequest) -> HttpResponse:
    return JsonResponse(selectors.operations())


@dashboard_view
def incidents_page(request: HttpRequest) -> HttpResponse:
    context = {"page": "incidents", "data": selectors.incidents(), "alerts": selectors.alerts(limit=100)}
    return _render(request, "dashboard/incidents.html", context)
