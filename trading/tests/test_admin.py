"""Trading in the admin: the lists render for a superuser and refuse a staff user without
permission; orders and the rest are read-only (no add, change or delete, not even by a
superuser); the kill switch page engages and releases through the audited service, needs a
reason and the change permission, and changes nothing on GET."""

from __future__ import annotations

import html
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from audit.models import Alert, AuditEvent
from audit.selectors import audit_chain_verify
from marketdata.tests.factories import SymbolFactory
from trading.core.types import (
    ExecutedFill,
    KillSwitchState,
    OrderIntent,
    OrderReport,
    OrderStatus,
    OrderType,
    Refusal,
    Side,
)
from trading.killswitch import killswitch_engage, killswitch_view
from trading.models import (
    Balance,
    EquitySnapshot,
    Fill,
    KillSwitch,
    Mode,
    Order,
    Position,
    SignalDecision,
)
from trading.services import balance_set, equity_snapshot_take, order_apply_report, order_create

pytestmark = pytest.mark.django_db

READ_ONLY = ["order", "fill", "position", "balance", "equitysnapshot", "signaldecision"]
NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)


@pytest.fixture
def filled_order() -> Order:
    """One dry-run market buy, filled: an order, a fill, a position, balances and equity."""
    symbol = SymbolFactory.create(symbol="BTCUSDT", base="BTC")
    balance_set(
        mode=Mode.DRY_RUN,
        asset="USDT",
        free=Decimal(1000),
        locked=Decimal(0),
        actor="system:test",
        reason="opening balance",
    )
    intent = OrderIntent(
        client_order_id="oasis-test-0001",
        symbol="BTCUSDT",
        side=Side.BUY,
        type=OrderType.MARKET,
        quantity=Decimal("0.01000"),
        reference_price=Decimal("50000.00"),
    )
    order = order_create(
        intent=intent,
        symbol=symbol,
        mode=Mode.DRY_RUN,
        exchange="sim",
        requested_quantity=Decimal("0.010002"),
        now=NOW,
    )
    fill = ExecutedFill(
        trade_id="t-1",
        price=Decimal("50010.00"),
        quantity=Decimal("0.01000"),
        fee=Decimal("0.50010"),
        fee_asset="USDT",
        time_ms=int(NOW.timestamp() * 1000),
    )
    report = OrderReport(
        client_order_id=intent.client_order_id,
        exchange_order_id="ex-42",
        symbol="BTCUSDT",
        side=Side.BUY,
        type=OrderType.MARKET,
        status=OrderStatus.FILLED,
        quantity=intent.quantity,
        price=None,
        filled_quantity=intent.quantity,
        average_price=fill.price,
        updated_ms=fill.time_ms,
        fills=(fill,),
    )
    order = order_apply_report(order=order, report=report, acknowledged=True, now=NOW)
    equity_snapshot_take(mode=Mode.DRY_RUN, quote_asset="USDT", now=NOW)
    return order


@pytest.fixture
def staff_client(db: None) -> Client:
    """A staff member with no permission at all: may log in to the admin, may see nothing."""
    user = User.objects.create_user("clerk", password="x", is_staff=True)
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def viewer_client(db: None) -> Client:
    """A staff member who may look at the kill switch but not change it."""
    user = User.objects.create_user("viewer", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_killswitch"))
    client = Client()
    client.force_login(user)
    return client


def killswitch_url(name: str = "changelist") -> str:
    return reverse(f"admin:trading_killswitch_{name}")


def page_text(response) -> str:
    return html.unescape(str(response.content.decode()))


def test_the_fixture_made_one_of_each(filled_order):
    assert Order.objects.get().status == OrderStatus.FILLED
    assert Fill.objects.count() == 1
    assert Position.objects.get().quantity == Decimal("0.01000")
    assert Balance.objects.filter(mode=Mode.DRY_RUN).count() == 2
    assert EquitySnapshot.objects.count() == 1


@pytest.mark.parametrize("model", READ_ONLY)
def test_lists_render_and_nothing_can_be_added_or_deleted(admin_client, filled_order, model):
    response = admin_client.get(reverse(f"admin:trading_{model}_changelist"))
    assert response.status_code == 200
    assert admin_client.get(reverse(f"admin:trading_{model}_add")).status_code == 403
    assert 'name="action"' not in response.content.decode()  # no bulk delete either


def test_the_order_list_shows_the_useful_columns_and_searches_by_id(admin_client, filled_order):
    url = reverse("admin:trading_order_changelist")
    page = page_text(admin_client.get(url))
    for text in ("oasis-test-0001", "filled", "buy", "0.01000", "dry-run", "sim:BTCUSDT"):
        assert text in page
    assert "oasis-test-0001" in page_text(admin_client.get(url, {"q": "ex-42"}))
    assert "oasis-test-0001" not in page_text(admin_client.get(url, {"q": "nope"}))
    assert "oasis-test-0001" in page_text(admin_client.get(url, {"status__exact": "filled"}))
    assert "oasis-test-0001" not in page_text(admin_client.get(url, {"status__exact": "rejected"}))


def test_a_rejected_order_shows_its_reason(admin_client):
    symbol = SymbolFactory.create(symbol="ETHUSDT")
    intent = OrderIntent("oasis-test-0002", "ETHUSDT", Side.BUY, OrderType.MARKET, Decimal(0), Decimal(3000))
    order_create(
        intent=intent,
        symbol=symbol,
        mode=Mode.LIVE,
        exchange="sim",
        requested_quantity=Decimal("0.0001"),
        refusal=Refusal("below_min_notional", "0 ETH at 3000 is below 5 USDT"),
        now=NOW,
    )
    url = reverse("admin:trading_order_changelist")
    page = page_text(admin_client.get(url, {"reject_reason": "below_min_notional"}))
    assert "oasis-test-0002" in page
    assert "below_min_notional" in page


def test_the_order_page_is_read_only_and_lists_its_fills(admin_client, filled_order):
    url = reverse("admin:trading_order_change", args=[filled_order.pk])
    response = admin_client.get(url)
    assert response.status_code == 200
    page = page_text(response)
    assert "t-1" in page  # the fill, inline
    assert "50010.00" in page
    assert 'name="_save"' not in page  # nothing to save
    before = Order.objects.values().get(pk=filled_order.pk)
    response = admin_client.post(url, {"status": "canceled", "quantity": "5"})
    assert response.status_code == 403
    assert Order.objects.values().get(pk=filled_order.pk) == before
    delete = reverse("admin:trading_order_delete", args=[filled_order.pk])
    assert admin_client.get(delete).status_code == 403
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert Order.objects.filter(pk=filled_order.pk).exists()


def test_the_fill_list_links_to_its_order(admin_client, filled_order):
    page = admin_client.get(reverse("admin:trading_fill_changelist")).content.decode()
    assert reverse("admin:trading_order_change", args=[filled_order.pk]) in page
    fill = Fill.objects.get()
    assert admin_client.post(reverse("admin:trading_fill_delete", args=[fill.pk])).status_code == 403


def test_the_signal_decision_list_renders_with_a_decision(admin_client):
    from rules.models import Signal
    from rules.services import rule_config_create

    symbol = SymbolFactory.create(symbol="BTCUSDT")
    config = rule_config_create(
        name="r",
        description="",
        symbols=["BTCUSDT"],
        spec={
            "timeframes": ["1m"],
            "indicators": {"fast": {"kind": "ema", "period": 3}, "slow": {"kind": "ema", "period": 8}},
            "entry": "fast crosses_above slow",
            "exit": "fast crosses_below slow",
            "sizing": {"quote_amount": "100"},
            "limits": {"max_position_per_symbol": "500", "max_position_total": "5000"},
        },
        author="system:test",
    )
    signal = Signal.objects.create(
        symbol=symbol,
        timeframe="1m",
        open_time=NOW,
        rule_version=config.versions.get(),
        action=Signal.Action.EXIT,
        indicators={},
        computed_at=NOW,
    )
    SignalDecision.objects.create(
        signal=signal, mode=Mode.DRY_RUN, outcome="skipped", reason="nothing_held", decided_at=NOW
    )
    response = admin_client.get(reverse("admin:trading_signaldecision_changelist"))
    assert response.status_code == 200
    assert "nothing_held" in response.content.decode()


@pytest.mark.parametrize("model", [*READ_ONLY, "killswitch"])
def test_a_staff_user_without_permission_is_refused(staff_client, filled_order, model):
    assert staff_client.get(reverse(f"admin:trading_{model}_changelist")).status_code == 403
    order_page = reverse("admin:trading_order_change", args=[filled_order.pk])
    assert staff_client.get(order_page).status_code == 403


# The kill switch page.


def test_the_page_works_before_the_switch_was_ever_touched(admin_client):
    assert not KillSwitch.objects.exists()
    response = admin_client.get(killswitch_url())
    assert response.status_code == 200
    page = page_text(response)
    assert ">ACTIVE<" in page
    assert "never changed" in page
    assert "No changes yet." in page
    assert 'action="' + killswitch_url("engage") + '"' in page
    assert "csrfmiddlewaretoken" in page
    assert not KillSwitch.objects.exists()  # looking changes nothing
    assert AuditEvent.objects.count() == 0


def test_engage_from_the_admin_is_audited_under_the_user(admin_client, admin_user):
    response = admin_client.post(
        killswitch_url("engage"), {"state": "reducing", "reason": "exchange maintenance"}, follow=True
    )
    assert response.redirect_chain == [(killswitch_url(), 302)]
    page = page_text(response)
    assert "Kill switch engaged: REDUCING." in page
    assert ">REDUCING<" in page
    assert "exchange maintenance" in page

    row = KillSwitch.objects.get()
    assert (row.state, row.reason, row.changed_by, row.tripwire) == (
        "reducing",
        "exchange maintenance",
        f"user:{admin_user.username}",
        "",
    )
    event = AuditEvent.objects.get(action="trading.killswitch")
    assert (event.action, event.actor, event.object_type, event.object_id) == (
        "trading.killswitch",
        "user:admin",
        "trading.killswitch",
        "1",
    )
    assert event.payload == {
        "from": "active",
        "to": "reducing",
        "reason": "exchange maintenance",
        "tripwire": "",
    }

    admin_client.post(killswitch_url("engage"), {"state": "halted", "reason": "worse"})
    assert killswitch_view().state == "halted"
    last = AuditEvent.objects.filter(action="trading.killswitch").order_by("-seq").first()
    assert last is not None
    assert last.payload["from"] == "reducing"
    # Engaged: one critical alert (deduplicated across both changes) and an incident.
    [alert] = Alert.objects.all()
    assert (alert.key, alert.severity, alert.state, alert.count) == ("killswitch", "critical", "firing", 2)
    assert alert.incident is not None
    assert audit_chain_verify().intact


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"state": "halted", "reason": ""}, "This field is required."),
        ({"state": "halted", "reason": "   "}, "This field is required."),
        ({"state": "halted"}, "This field is required."),
        ({"state": "active", "reason": "x"}, "Select a valid choice."),
        ({"state": "halted", "reason": "x" * 1001}, "at most 1000 characters"),
    ],
)
def test_engage_without_a_valid_reason_or_state_changes_nothing(admin_client, form, message):
    killswitch_engage(state=KillSwitchState.REDUCING, reason="before", actor="cli:ops")
    before = KillSwitch.objects.values().get()
    response = admin_client.post(killswitch_url("engage"), form)
    assert response.status_code == 200  # the page again, with the errors
    page = page_text(response)
    assert "The kill switch was not changed" in page
    assert 'class="error"' in page  # shown as an admin error message
    assert message in page
    assert KillSwitch.objects.values().get() == before
    assert AuditEvent.objects.filter(action="trading.killswitch").count() == 1


def test_release_from_the_admin(admin_client):
    killswitch_engage(state=KillSwitchState.HALTED, reason="drill", actor="cli:ops")
    response = admin_client.post(killswitch_url("release"), {"reason": ""})
    assert "This field is required." in page_text(response)
    assert killswitch_view().state == "halted"

    response = admin_client.post(killswitch_url("release"), {"reason": "drill over"}, follow=True)
    assert "Kill switch released: ACTIVE." in page_text(response)
    view = killswitch_view()
    assert (view.state, view.reason, view.changed_by) == ("active", "drill over", "user:admin")
    event = AuditEvent.objects.filter(action="trading.killswitch").order_by("-seq").first()
    assert event is not None
    assert (event.actor, event.payload["from"], event.payload["to"]) == ("user:admin", "halted", "active")
    page = page_text(admin_client.get(killswitch_url()))
    assert page.index("drill over") < page.index(">drill<")  # history, newest first


def test_get_changes_nothing(admin_client):
    for name in ("engage", "release"):
        response = admin_client.get(killswitch_url(name), {"state": "halted", "reason": "via GET"})
        assert response.status_code == 405
    assert admin_client.post(killswitch_url(), {"state": "halted", "reason": "x"}).status_code == 405
    # The raw change form is not offered: it redirects to the page.
    killswitch_engage(state=KillSwitchState.HALTED, reason="r", actor="cli:ops")
    change = reverse("admin:trading_killswitch_change", args=[1])
    assert admin_client.post(change, {"state": "active", "reason": ""}).status_code == 302
    assert killswitch_view().state == "halted"
    assert admin_client.get(killswitch_url("add")).status_code == 403
    assert admin_client.post(reverse("admin:trading_killswitch_delete", args=[1])).status_code == 403
    assert KillSwitch.objects.get().state == "halted"
    assert AuditEvent.objects.filter(action="trading.killswitch").count() == 1


def test_csrf_is_enforced(admin_user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    response = client.post(killswitch_url("engage"), {"state": "halted", "reason": "no token"})
    assert response.status_code == 403
    assert not KillSwitch.objects.exists()


def test_without_permission_engaging_and_releasing_are_refused(staff_client, viewer_client):
    for client in (staff_client, viewer_client):
        for name, form in (("engage", {"state": "halted", "reason": "x"}), ("release", {"reason": "x"})):
            assert client.post(killswitch_url(name), form).status_code == 403
    assert not KillSwitch.objects.exists()
    assert AuditEvent.objects.count() == 0
    # A viewer sees the state without the forms.
    page = page_text(viewer_client.get(killswitch_url()))
    assert ">ACTIVE<" in page
    assert killswitch_url("engage") not in page


def test_a_user_with_the_change_permission_may_engage(db):
    user = User.objects.create_user("ops", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="change_killswitch"))
    client = Client()
    client.force_login(user)
    response = client.post(killswitch_url("engage"), {"state": "halted", "reason": "on call"})
    assert response.status_code == 302
    assert AuditEvent.objects.get(action="trading.killswitch").actor == "user:ops"
