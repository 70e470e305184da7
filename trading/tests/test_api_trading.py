"""The trading API: orders with fills, positions, the kill switch (engaged and released through
its service, audited with the API user) and backtests (run through the backtest service)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from rest_framework.test import APIClient

from audit.models import AuditEvent
from oasis_site.tests.api_seed import seed
from trading.models import BacktestRun, KillSwitch

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_cache():
    cache.clear()


@pytest.fixture
def seeded():
    return seed(candles=400)


@pytest.fixture
def api():
    return APIClient()


def test_orders_carry_exact_decimal_strings_and_their_fills(api, seeded):
    listed = api.get("/api/v1/orders/", {"mode": "dry_run", "symbol": "BTCUSDT"}).json()["results"]
    assert [row["id"] for row in listed] == [seeded.order.pk]
    row = listed[0]
    assert row["quantity"] == "0.00500000"
    assert row["requested_quantity"] == "0.005012345"
    assert row["price"] is None
    assert row["rule"] == "crossing"
    assert row["created_at"] == "2026-03-01T01:41:00Z"
    detail = api.get(f"/api/v1/orders/{seeded.order.pk}/").json()
    assert detail["fills"] == [
        {
            "trade_id": "dry-1",
            "price": "20011.50000000",
            "quantity": "0.00500000",
            "fee": "0.10005750",
            "fee_asset": "USDT",
            "is_maker": False,
            "executed_at": "2026-03-01T01:41:00Z",
        }
    ]
    assert api.get("/api/v1/orders/", {"status": "rejected"}).json()["results"] == []
    assert api.get("/api/v1/orders/424242/").status_code == 404


def test_positions_are_listed_with_exact_values(api, seeded):
    rows = api.get("/api/v1/positions/", {"mode": "dry_run", "open": "true"}).json()["results"]
    assert [(row["symbol"], row["quantity"], row["mark_price"]) for row in rows] == [
        ("BTCUSDT", "0.00500000", "20100.00")
    ]
    assert api.get("/api/v1/positions/", {"mode": "live"}).json()["results"] == []


def test_the_kill_switch_is_read_engaged_and_released_through_its_service_and_audited(api, seeded):
    assert api.get("/api/v1/killswitch/").json()["state"] == "reducing"
    user = get_user_model().objects.create_user("desk", is_staff=True)
    api.force_authenticate(user)
    engaged = api.post(
        "/api/v1/killswitch/engage/", {"state": "halted", "reason": "exchange trouble"}, format="json"
    )
    assert engaged.status_code == 200, engaged.content
    assert engaged.json()["state"] == "halted"
    assert engaged.json()["changed_by"] == "user:desk"
    released = api.post("/api/v1/killswitch/release/", {"reason": "resolved"}, format="json")
    assert released.json()["state"] == "active"
    assert KillSwitch.objects.get().state == "active"
    events = AuditEvent.objects.filter(action="trading.killswitch", actor="user:desk").order_by("seq")
    assert [(event.payload["from"], event.payload["to"]) for event in events] == [
        ("reducing", "halted"),
        ("halted", "active"),
    ]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("engage", {"state": "active", "reason": "x"}, "state"),  # engaging to active is a release
        ("engage", {"state": "halted", "reason": "   "}, "reason"),
        ("engage", {"state": "halted"}, "reason"),
        ("release", {"reason": ""}, "reason"),
    ],
)
def test_bad_kill_switch_requests_are_named_and_change_nothing(api, seeded, path, body, field):
    before = AuditEvent.objects.count()
    response = api.post(f"/api/v1/killswitch/{path}/", body, format="json")
    assert response.status_code == 400
    assert list(response.json()["errors"]) == [field]
    assert AuditEvent.objects.count() == before
    assert KillSwitch.objects.get().state == "reducing"


def test_backtests_are_listed_detailed_and_run_through_the_service(api, seeded):
    listed = api.get("/api/v1/backtests/").json()["results"]
    assert [row["id"] for row in listed] == [seeded.backtest.pk]
    assert "results" not in listed[0]
    detail = api.get(f"/api/v1/backtests/{seeded.backtest.pk}/").json()
    assert detail["results"] == seeded.backtest.results
    assert detail["report"] == f"/trading/backtests/{seeded.backtest.pk}/report/"

    body = {
        "rule": "crossing",
        "start": "2026-03-01T01:00:00Z",
        "end": "2026-03-01T06:00:00Z",
        "fee_bps": "7.5",
    }
    response = api.post("/api/v1/backtests/", body, format="json")
    assert response.status_code == 201, response.content
    run = BacktestRun.objects.get(pk=response.json()["id"])
    assert run.status == "succeeded"
    assert run.created_by == "api:anonymous"
    assert run.parameters["fee_bps"] == "7.5"
    event = AuditEvent.objects.get(action="trading.backtest.run")
    assert event.object_id == str(run.pk)
    assert event.actor == "api:anonymous"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"rule": "nope"}, "rule"),
        ({"version": 7}, "version"),
        ({"start": "2026-03-01T07:00:00Z"}, "start"),
        ({"symbols": ["NOPEUSDT"]}, "symbols"),
        ({"timeframes": ["4h"]}, "timeframes"),
        ({"fee_bps": "-1"}, "fee_bps"),
        ({"opening_balance": "0"}, "opening_balance"),
        ({"start": "2025-01-01T00:00:00Z", "end": "2025-01-02T00:00:00Z"}, "start"),  # no candles there
    ],
)
def test_bad_backtest_requests_are_named_and_store_nothing(api, seeded, change, field):
    body = {"rule": "crossing", "start": "2026-03-01T01:00:00Z", "end": "2026-03-01T06:00:00Z", **change}
    response = api.post("/api/v1/backtests/", body, format="json")
    assert response.status_code == 400, response.content
    assert list(response.json()["errors"]) == [field]
    assert BacktestRun.objects.count() == 1


def test_decisions_say_what_the_loop_did_with_each_signal(api, seeded):
    rows = api.get("/api/v1/decisions/", {"mode": "dry_run"}).json()["results"]
    assert [(row["action"], row["outcome"], row["reason"], row["order"]) for row in rows] == [
        ("exit", "skipped", "nothing_held", None),
        ("enter", "ordered", "", seeded.order.pk),
    ]
    assert rows[0]["symbol"] == "BTCUSDT"
    skipped = api.get("/api/v1/decisions/", {"outcome": "skipped"}).json()["results"]
    assert [row["reason"] for row in skipped] == ["nothing_held"]
    response = api.get("/api/v1/decisions/", {"outcome": "maybe"})
    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["outcome"]
