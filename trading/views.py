"""Backtest reports: the HTML page (plotly, served locally) and the same as JSON for scripts.
Staff only, like the admin they are linked from."""

from __future__ import annotations

import json

import plotly.io
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render

from trading.models import BacktestRun
from trading.reports import backtest_figure


def _document(run: BacktestRun) -> dict[str, object]:
    return {
        "id": run.pk,
        "status": run.status,
        "rule": f"{run.rule_version.config.name} v{run.rule_version.number}",
        "rule_checksum": run.rule_checksum,
        "parameters": run.parameters,
        "candles": run.candles,
        "imputed_candles": run.imputed_candles,
        "error": run.error,
        "results": run.results,
    }


@staff_member_required
def backtest_report(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(BacktestRun.objects.select_related("rule_version__config"), pk=pk)
    symbol = request.GET.get("symbol") or None
    if symbol is not None and symbol not in run.parameters.get("symbols", []):
        symbol = None
    figure = backtest_figure(run, symbol_name=symbol) if run.status == BacktestRun.Status.SUCCEEDED else None
    results = {k: v for k, v in (run.results or {}).items() if k not in ("fills", "trades", "equity_curve")}
    return render(
        request,
        "trading/backtest_report.html",
        {
            "run": run,
            "results": results,
            "trades": (run.results or {}).get("trades", []),
            "figure_json": plotly.io.to_json(figure) if figure else "null",
        },
    )


@staff_member_required
def backtest_report_json(request: HttpRequest, pk: int) -> JsonResponse:
    run = get_object_or_404(BacktestRun.objects.select_related("rule_version__config"), pk=pk)
    document = _document(run)
    if run.status == BacktestRun.Status.SUCCEEDED:
        document["figure"] = json.loads(plotly.io.to_json(backtest_figure(run)))
    return JsonResponse(document)
