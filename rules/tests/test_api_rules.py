"""The rules API: rule configs and versions through the admin's services (same validation, same
audit), signals, and indicators computed by the rules engine over stored candles."""

from __future__ import annotations

import copy
import math
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from rest_framework.test import APIClient

from audit.models import AuditEvent
from marketdata.models import Candle
from marketdata.tests.api_seed import START, seed_market
from rules.engine.base import CandleSeries
from rules.engine.indicators import Macd, Rsi
from rules.models import RuleConfig, RuleConfigVersion, Signal
from rules.services import RuleInputError, rule_input_validate

pytestmark = pytest.mark.django_db

SPEC: dict[str, Any] = {
    "timeframes": ["1m"],
    "indicators": {"fast": {"kind": "ema", "period": 5}, "slow": {"kind": "ema", "period": 13}},
    "entry": "fast crosses_above slow",
    "exit": "fast crosses_below slow",
    "sizing": {"quote_amount": "100"},
    "limits": {"max_position_per_symbol": "500", "max_position_total": "5000"},
}


@pytest.fixture(autouse=True)
def fresh_cache():
    cache.clear()


@pytest.fixture
def market():
    symbol, _gap = seed_market(candles=400)
    return symbol


@pytest.fixture
def api():
    return APIClient()


def create_rule(api, name="crossing", spec=None, symbols=("BTCUSDT",)):
    body = {"name": name, "symbols": list(symbols), "spec": spec or SPEC, "comment": "first"}
    return api.post("/api/v1/rules/", body, format="json")


def test_a_rule_is_created_with_version_1_and_audited_with_the_api_user(api, market):
    user = get_user_model().objects.create_user("desk", is_staff=True)
    api.force_authenticate(user)
    response = create_rule(api)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "crossing"
    assert body["status"] == "draft"
    config = RuleConfig.objects.get(pk=body["id"])
    assert config.versions.get().author == user
    actions = list(AuditEvent.objects.filter(actor="user:desk").values_list("action", flat=True))
    assert actions == ["rules.config.create", "rules.version.create"]


def test_a_version_is_validated_exactly_as_the_admin_validates_it(api, market):
    rule_id = create_rule(api).json()["id"]
    bad = copy.deepcopy(SPEC)
    bad["indicators"]["fast"]["period"] = 1  # an average of one value: refused by the spec
    bad["entry"] = "fast crosses_above nothing"
    with pytest.raises(RuleInputError) as refused:
        rule_input_validate(spec=bad, symbols=["BTCUSDT", "NOPEUSDT"])
    response = api.post(
        f"/api/v1/rules/{rule_id}/versions/", {"spec": bad, "symbols": ["BTCUSDT", "NOPEUSDT"]}, format="json"
    )
    assert response.status_code == 400
    errors = response.json()["errors"]
    expected: dict[str, list[str]] = {}
    for field, message in refused.value.errors:
        expected.setdefault(field, []).append(message)
    assert errors == expected
    assert "symbols" in errors
    assert "spec.indicators.fast.period" in errors
    assert RuleConfigVersion.objects.filter(config_id=rule_id).count() == 1


def test_versions_are_created_listed_newest_first_and_activated(api, market):
    rule_id = create_rule(api).json()["id"]
    changed = copy.deepcopy(SPEC)
    changed["indicators"]["slow"]["period"] = 21
    created = api.post(
        f"/api/v1/rules/{rule_id}/versions/", {"spec": changed, "symbols": ["BTCUSDT"]}, format="json"
    )
    assert created.status_code == 201
    assert created.json()["number"] == 2
    assert created.json()["parent"] == 1
    same = api.post(
        f"/api/v1/rules/{rule_id}/versions/", {"spec": changed, "symbols": ["BTCUSDT"]}, format="json"
    )
    assert same.status_code == 200  # unchanged: no new version
    assert same.json()["number"] == 2
    listed = api.get(f"/api/v1/rules/{rule_id}/versions/").json()["results"]
    assert [row["number"] for row in listed] == [2, 1]
    activated = api.post(f"/api/v1/rules/{rule_id}/versions/2/activate/")
    assert activated.status_code == 200
    assert activated.json()["active_version"] == 2
    assert activated.json()["status"] == "active"
    event = AuditEvent.objects.filter(action="rules.version.activate").get()
    assert event.actor == "api:anonymous"
    assert api.post(f"/api/v1/rules/{rule_id}/versions/9/activate/").status_code == 404
    assert api.get("/api/v1/rules/999999/").status_code == 404


def test_a_duplicate_name_is_named(api, market):
    create_rule(api)
    response = create_rule(api)
    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["name"]


def test_signals_are_filtered_and_newest_first(api, market):
    rule_id = create_rule(api).json()["id"]
    version = RuleConfigVersion.objects.get(config_id=rule_id)
    for index, action in enumerate(["enter", "exit", "enter"]):
        Signal.objects.create(
            symbol=market,
            timeframe="1m",
            open_time=START + timedelta(minutes=index),
            rule_version=version,
            action=action,
            indicators={"fast": 1.5},
            computed_at=START + timedelta(minutes=index + 1),
        )
    every = api.get("/api/v1/signals/", {"symbol": "BTCUSDT"}).json()["results"]
    assert [row["action"] for row in every] == ["enter", "exit", "enter"]
    assert every[0]["open_time"] == "2026-03-01T00:02:00Z"
    entries = api.get("/api/v1/signals/", {"action": "enter", "rule": rule_id}).json()["results"]
    assert len(entries) == 2
    window = api.get("/api/v1/signals/", {"start": "2026-03-01T00:01:00Z", "end": "2026-03-01T00:01:00Z"})
    assert [row["action"] for row in window.json()["results"]] == ["exit"]


def stored_series(symbol) -> CandleSeries:
    rows = list(
        Candle.objects.filter(symbol=symbol, timeframe="1m")
        .order_by("open_time")
        .values_list("open_time", "high", "low", "close", "volume")
    )
    return CandleSeries.from_columns(
        open_time_ms=[int(row[0].timestamp() * 1000) for row in rows],
        high=[float(row[1]) for row in rows],
        low=[float(row[2]) for row in rows],
        close=[float(row[3]) for row in rows],
        volume=[float(row[4]) for row in rows],
    )


def test_indicator_values_are_the_engines_over_the_stored_history(api, market):
    expected = Rsi(period=14).batch(stored_series(market))
    response = api.get(
        "/api/v1/indicators/",
        {
            "symbol": "BTCUSDT",
            "timeframe": "1m",
            "kind": "rsi",
            "period": 14,
            "start": "2026-03-01T05:00:00Z",
        },
    )
    assert response.status_code == 200, response.content
    rows = response.json()["results"]
    assert len(rows) == 100  # minutes 300 … 399
    assert rows[0]["open_time"] == "2026-03-01T05:00:00Z"
    assert [row["values"]["rsi"] for row in rows] == [float(value) for value in expected[300:]]


def test_multi_output_indicators_name_outputs_as_conditions_do_and_warm_up_is_null(api, market):
    expected = Macd(fast=12, slow=26, signal=9).batch(stored_series(market))
    first = api.get(
        "/api/v1/indicators/", {"symbol": "BTCUSDT", "timeframe": "1m", "kind": "macd", "limit": 40}
    ).json()
    assert set(first["results"][0]["values"]) == {"macd.line", "macd.signal", "macd.hist"}
    assert first["results"][0]["values"]["macd.line"] is None  # warm-up
    assert math.isnan(expected.macd[0])
    second = APIClient().get(first["next"]).json()
    row = second["results"][0]
    assert row["open_time"] == "2026-03-01T00:40:00Z"
    assert row["values"]["macd.hist"] == float(expected.histogram[40])
    assert not np.isnan(expected.histogram[40])


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"kind": "rsi", "period": 1}, "period"),  # the engine's minimum for RSI is 2
        ({"kind": "rsi", "period": 5000}, "period"),
        ({"kind": "macd", "fast": 30, "slow": 10}, "slow"),
        ({"kind": "vwap", "period": 3}, "period"),  # vwap takes no period
        ({"kind": "nope"}, "kind"),
        ({"kind": "rsi", "symbol": "NOPEUSDT"}, "symbol"),
        ({"kind": "rsi", "timeframe": "7m"}, "timeframe"),
        ({"kind": "rsi", "limit": 1001}, "limit"),
        ({"kind": "rsi", "cursor": "%%%"}, "cursor"),
        ({"kind": "rsi", "start": "2026-03-02T00:00:00Z", "end": "2026-03-01T00:00:00Z"}, "start"),
    ],
)
def test_bad_indicator_requests_name_the_parameter(api, market, params, parameter):
    response = api.get("/api/v1/indicators/", {"symbol": "BTCUSDT", "timeframe": "1m", **params})
    assert response.status_code == 400, response.content
    assert list(response.json()["errors"]) == [parameter]
