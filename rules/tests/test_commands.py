"""rule_save and seed_demo_rule: thin commands over the rule services."""

import json

import pytest
from django.core.management import CommandError, call_command
from waffle.models import Flag

from audit.models import AuditEvent
from marketdata.tests.factories import SymbolFactory
from rules.management.commands.seed_demo_rule import NAME, SPEC
from rules.models import RuleConfig

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def symbols():
    SymbolFactory.create(symbol="BTCUSDT")
    SymbolFactory.create(symbol="ETHUSDT")


def test_rule_save_creates_versions_and_activates(tmp_path, capsys):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(SPEC))
    call_command("rule_save", "trend", spec=path, symbols="btcusdt")
    config = RuleConfig.objects.get(name="trend")
    assert (config.status, config.versions.count()) == ("draft", 1)
    path.write_text(json.dumps({**SPEC, "exit": "fast crosses_below slow"}))
    call_command(
        "rule_save", "trend", spec=path, symbols="BTCUSDT,ETHUSDT", comment="simpler exit", activate=True
    )
    config.refresh_from_db()
    assert config.active_version is not None
    assert (config.status, config.active_version.number, config.symbols) == (
        "active",
        2,
        ["BTCUSDT", "ETHUSDT"],
    )
    assert "trend: version 2 active" in capsys.readouterr().out
    assert AuditEvent.objects.filter(action="rules.version.activate", actor="system:manage.py").count() == 1


def test_rule_save_names_every_bad_field_and_saves_nothing(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({**SPEC, "timeframes": ["7m"], "entry": "fast >"}))
    with pytest.raises(CommandError) as error:
        call_command("rule_save", "bad", spec=path, symbols="BTCUSDT,NOPE")
    message = str(error.value)
    assert "spec.timeframes" in message
    assert "unknown symbol(s) NOPE" in message
    assert RuleConfig.objects.count() == 0
    path.write_text("{oops")
    with pytest.raises(CommandError, match="--spec: not valid JSON: line 1, column 2"):
        call_command("rule_save", "bad", spec=path, symbols="BTCUSDT")


def test_the_demo_rule_is_seeded_active_and_on_once():
    call_command("seed_demo_rule", symbols="BTCUSDT,ETHUSDT")
    config = RuleConfig.objects.get(name=NAME)
    assert config.status == "active"
    assert Flag.objects.get(name=config.flag_name).everyone is True
    call_command("seed_demo_rule", symbols="BTCUSDT")
    assert RuleConfig.objects.count() == 1
    assert config.versions.count() == 1
