"""The audit API: events of the append-only log, newest first, filtered and paged by sequence."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from audit.services import audit_record

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_cache():
    cache.clear()


@pytest.fixture
def events():
    for index in range(7):
        audit_record(
            actor="user:desk" if index % 2 else "system:ingestor",
            action="trading.balance.set" if index < 3 else "rules.version.create",
            payload={"index": index, "price": "27450.12000000"},
        )


def test_events_come_newest_first_with_their_chain_and_page_by_sequence(events):
    api = APIClient()
    first = api.get("/api/v1/audit-events/", {"limit": 4}).json()
    assert [row["seq"] for row in first["results"]] == [7, 6, 5, 4]
    second = api.get(first["next"]).json()
    assert [row["seq"] for row in second["results"]] == [3, 2, 1]
    assert second["next"] is None
    oldest = second["results"][-1]
    assert oldest["prev_hash"] == "0" * 64
    assert oldest["payload"] == {"index": 0, "price": "27450.12000000"}
    assert first["results"][-1]["prev_hash"] == second["results"][0]["hash"]


def test_events_are_filtered_by_action_prefix_actor_and_time(events):
    api = APIClient()
    trading = api.get("/api/v1/audit-events/", {"action": "trading."}).json()["results"]
    assert [row["seq"] for row in trading] == [3, 2, 1]
    exact = api.get("/api/v1/audit-events/", {"action": "trading"}).json()["results"]
    assert exact == []  # not a prefix without the dot
    desk = api.get("/api/v1/audit-events/", {"actor": "user:desk"}).json()["results"]
    assert [row["seq"] for row in desk] == [6, 4, 2]
    future = api.get("/api/v1/audit-events/", {"start": "2999-01-01T00:00:00Z"}).json()["results"]
    assert future == []


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"cursor": "eyJrIjoib3Blbl90aW1lIiwidiI6MX0"}, "cursor"),  # a candles cursor
        ({"limit": 5000}, "limit"),
        ({"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "start"),
        ({"end": "soon"}, "end"),
    ],
)
def test_bad_input_names_the_parameter(events, params, parameter):
    response = APIClient().get("/api/v1/audit-events/", params)
    assert response.status_code == 400
    assert list(response.json()["errors"]) == [parameter]


def test_the_api_cannot_write_the_log():
    response = APIClient().post("/api/v1/audit-events/", {"actor": "x"}, format="json")
    assert response.status_code == 405
