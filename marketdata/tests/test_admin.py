"""Market data admin pages render for a superuser, read-only, and a gap can be retried."""

import pytest
from django.urls import reverse

from marketdata.models import Gap
from marketdata.services import CandleWrite, candles_upsert_closed
from marketdata.tests.factories import SymbolFactory, kline

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("model", ["symbol", "candle", "gap"])
def test_lists_and_pages_render_without_add_or_delete(admin_client, model):
    symbol = SymbolFactory.create()
    candles_upsert_closed(writes=[CandleWrite(symbol.pk, kline(), "ws")])
    response = admin_client.get(reverse(f"admin:marketdata_{model}_changelist"))
    assert response.status_code == 200
    assert admin_client.get(reverse(f"admin:marketdata_{model}_add")).status_code == 403


def test_the_retry_action_sends_unresolved_gaps_to_the_backfill(admin_client, monkeypatch):
    symbol = SymbolFactory.create()
    open_gap = Gap.objects.create(
        symbol=symbol,
        timeframe="1m",
        start="2024-01-01T00:00Z",
        end="2024-01-01T00:05Z",
        detected_at="2024-01-01T00:10Z",
    )
    resolved = Gap.objects.create(
        symbol=symbol, timeframe="1m", start="2024-01-02T00:00Z", end="2024-01-02T00:05Z",
        detected_at="2024-01-02T00:10Z", status=Gap.Status.BACKFILLED,
    )  # fmt: skip
    sent = []
    monkeypatch.setattr(
        "marketdata.tasks.gap_backfill_task.apply_async", lambda args, queue: sent.append((args, queue))
    )
    response = admin_client.post(
        reverse("admin:marketdata_gap_changelist"),
        {"action": "retry_now", "_selected_action": [open_gap.pk, resolved.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert [args for args, _ in sent] == [(open_gap.pk,)]
    assert "1 gap backfill(s) started" in response.content.decode()
