"""The rule admin end to end, through the admin's own pages and forms: create, an invalid spec
refused with its message and nothing saved, an edit saved as a new version, the diff of two
versions, activate, roll back; every change in the audit log."""

import html
import json
import re
from typing import Any

import pytest
from django.urls import reverse
from waffle.models import Flag

from audit.models import AuditEvent
from audit.selectors import audit_chain_verify
from marketdata.tests.factories import SymbolFactory
from rules.models import RuleConfig, RuleConfigVersion

pytestmark = pytest.mark.django_db

SPEC: dict[str, Any] = {
    "timeframes": ["1m", "5m"],
    "indicators": {
        "fast": {"kind": "ema", "period": 9},
        "slow": {"kind": "ema", "period": 21},
        "rsi": {"kind": "rsi", "period": 14},
    },
    "entry": "fast crosses_above slow and rsi < 70",
    "exit": "fast crosses_below slow or rsi > 80",
    "sizing": {"quote_amount": "100"},
    "limits": {"max_position_per_symbol": "500", "max_position_total": "5000"},
}


@pytest.fixture(autouse=True)
def symbols():
    SymbolFactory.create(symbol="BTCUSDT")
    SymbolFactory.create(symbol="ETHUSDT")


def form(spec: object, **overrides: str) -> dict[str, str]:
    return {
        "name": "EMA cross",
        "description": "Trend entry with an RSI filter",
        "symbol_list": "BTCUSDT, ETHUSDT",
        "spec": spec if isinstance(spec, str) else json.dumps(spec),
        "comment": "first cut",
        **overrides,
    }


def actions() -> list[str]:
    return list(AuditEvent.objects.order_by("seq").values_list("action", flat=True))


def test_create_edit_diff_activate_and_roll_back(admin_client):
    add = reverse("admin:rules_ruleconfig_add")
    response = admin_client.post(add, form(SPEC))
    assert response.status_code == 302, response.content.decode()[-3000:]
    config = RuleConfig.objects.get(name="EMA cross")
    assert (config.status, config.active_version) == ("draft", None)
    assert list(config.versions.values_list("number", flat=True)) == [1]
    assert Flag.objects.get(name=config.flag_name).everyone is False  # its flag exists, off
    assert actions() == ["rules.config.create", "rules.version.create"]

    change = reverse("admin:rules_ruleconfig_change", args=[config.pk])
    page = html.unescape(admin_client.get(change).content.decode())
    assert '"fast crosses_above slow and rsi < 70"' in page  # the newest version's spec to edit
    edited = {**SPEC, "entry": "fast crosses_above slow and rsi < 60"}
    response = admin_client.post(change, form(edited, comment="tighter RSI"))
    assert response.status_code == 302
    assert list(config.versions.order_by("number").values_list("number", "comment")) == [
        (1, "first cut"),
        (2, "tighter RSI"),
    ]
    v1, v2 = config.versions.order_by("number")
    assert v1.spec["entry"] == "fast crosses_above slow and rsi < 70"  # untouched
    assert v2.parent == v1
    # Saving again without a change makes no version.
    admin_client.post(change, form(edited, comment="no change"))
    assert config.versions.count() == 2

    diff = admin_client.get(reverse("admin:rules_ruleconfig_diff", args=[config.pk]), {"a": 1, "b": 2})
    assert diff.status_code == 200
    assert 'class="diff_chg"' in diff.content.decode()  # the changed line is marked
    text = html.unescape(re.sub(r"<[^>]+>", "", diff.content.decode())).replace("\xa0", " ")
    assert "rsi < 70" in text
    assert "rsi < 60" in text

    admin_client.post(reverse("admin:rules_ruleconfig_activate", args=[config.pk, 2]))
    config.refresh_from_db()
    assert (config.status, config.active_version, config.timeframes) == ("active", v2, ["1m", "5m"])
    admin_client.post(reverse("admin:rules_ruleconfig_rollback", args=[config.pk]))
    config.refresh_from_db()
    assert config.active_version == v1

    assert actions() == [
        "rules.config.create",
        "rules.version.create",
        "rules.version.create",
        "rules.version.activate",
        "rules.version.rollback",
    ]
    rollback = AuditEvent.objects.get(action="rules.version.rollback")
    assert (rollback.payload["from"], rollback.payload["to"]) == (2, 1)
    assert rollback.actor == "user:admin"
    assert audit_chain_verify().intact


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{not json", "not valid JSON: line 1, column 2"),
        ({**SPEC, "entry": "fast crosses_above slwo"}, "unknown name"),
        ({**SPEC, "timeframes": ["2m"]}, "spec.timeframes"),
        (
            {**SPEC, "indicators": {**SPEC["indicators"], "fast": {"kind": "ema", "period": -3}}},
            "spec.indicators.fast",
        ),
        ({**SPEC, "indicators": {**SPEC["indicators"], "x": {"kind": "zigzag"}}}, "spec.indicators.x"),
        ({**SPEC, "sizing": {"quote_amount": "-5"}}, "spec.sizing"),
        ({**SPEC, "cooldowns": {"after_trade_s": -1}}, "spec.cooldowns"),
    ],
)
def test_an_invalid_spec_is_shown_with_its_field_and_nothing_is_saved(admin_client, spec, message):
    response = admin_client.post(reverse("admin:rules_ruleconfig_add"), form(spec))
    assert response.status_code == 200  # the form again, with the errors
    assert message in response.content.decode()
    assert RuleConfig.objects.count() == 0
    assert RuleConfigVersion.objects.count() == 0
    assert AuditEvent.objects.count() == 0


def test_unknown_symbols_are_named(admin_client):
    response = admin_client.post(
        reverse("admin:rules_ruleconfig_add"), form(SPEC, symbol_list="BTCUSDT, NOPEUSDT")
    )
    assert "unknown symbol(s) NOPEUSDT" in response.content.decode()
    assert RuleConfig.objects.count() == 0


def test_versions_cannot_be_changed_or_deleted():
    from rules.models import ImmutableVersionError
    from rules.services import rule_config_create

    config = rule_config_create(
        name="r", description="", symbols=["BTCUSDT"], spec=SPEC, author="system:test"
    )
    version = config.versions.get()
    version.comment = "rewritten"
    with pytest.raises(ImmutableVersionError):
        version.save()
    with pytest.raises(ImmutableVersionError):
        version.delete()
