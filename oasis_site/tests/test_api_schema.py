"""The OpenAPI schema, the documentation page, and property-based fuzzing of every operation of
the schema (schemathesis, in process against the WSGI app, on a database with rows to return):
no 5xx, and every response as the schema says (status, content type, body)."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from django.core.cache import cache
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from marketdata.api import views as marketdata_views
from oasis_site.api.fields import ExactDecimalField
from oasis_site.tests.api_seed import seed

pytestmark = pytest.mark.django_db

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 25
OPERATIONS = 23  # every operation of /api/v1/; a new one must be counted here


def openapi_schema() -> dict[str, Any]:
    schema: dict[str, Any] = SchemaGenerator().get_schema(request=None, public=True)
    return schema


@pytest.fixture(autouse=True)
def unthrottled(settings):
    # Fuzzing sends hundreds of requests per route: throttling has tests of its own.
    cache.clear()
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"read": "1000000/min", "write": "1000000/min"},
    }


@pytest.fixture
def fuzz_schema():
    loaded = schemathesis.openapi.from_dict(openapi_schema())
    loaded.app = get_wsgi_application()
    # As Django's test client does: the app must not close the test's database connection at the
    # end of each request (the test's transaction, and its seeded rows, live on it).
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield loaded
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def steered(case: Any, known: dict[str, Any]) -> Any:
    """The case with its symbol, timeframe and ids replaced by ones that exist (half the cases,
    drawn by hypothesis): random strings almost never name a stored symbol, so without this
    the candles and indicators would only ever be asked for what is not there."""
    for location in (case.query, case.path_parameters, case.body):
        if isinstance(location, dict):
            for name in list(location):
                if name in known:
                    location[name] = known[name]
    return case


def fuzz(
    operation: Any, *, examples: int = EXAMPLES_PER_OPERATION, known: dict[str, Any] | None = None
) -> list[int]:
    """Send `examples` generated requests to one operation; raise on the first failed check.
    Returns the statuses received."""
    statuses: list[int] = []

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,  # the same requests on every run: CI failures reproduce
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(), steer=st.booleans())
    def run(case: Any, steer: bool) -> None:
        if steer and known:
            case = steered(case, known)
        statuses.append(case.call_and_validate(checks=CHECKS).status_code)

    run()
    return statuses


def test_the_schema_is_valid_openapi_with_every_operation():
    schema = openapi_schema()
    assert schema["openapi"].startswith("3.")
    operations = [(path, method) for path, item in schema["paths"].items() for method in item]
    assert len(operations) == OPERATIONS
    assert all(path.startswith("/api/v1/") for path, _ in operations)
    response = APIClient().get("/api/v1/schema/", {"format": "json"})
    assert response.status_code == 200
    assert set(response.json()["paths"]) == set(schema["paths"])


def test_the_docs_page_lists_every_operation_and_loads_nothing_from_elsewhere():
    response = APIClient().get("/api/v1/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    assert page.count("<section") == OPERATIONS
    assert "GET /api/v1/candles/" in page
    # Reads can be tried from the page: a plain form per GET without path parameters.
    assert "<form method='get' action='/api/v1/candles/'>" in page
    assert "<input name='timeframe' placeholder='1m, 3m, 5m, 10m, 15m, 1h, 4h'>" in page
    assert "<script" not in page
    assert "<link" not in page
    assert "src=" not in page


def test_fuzzing_every_operation_finds_no_server_error_and_no_response_off_schema(fuzz_schema):
    seeded = seed(candles=300)
    known = {
        "symbol": "BTCUSDT",
        "timeframe": "1m",
        "rule_id": seeded.rule.pk,
        "order_id": seeded.order.pk,
        "run_id": seeded.backtest.pk,
        "number": 1,
        "rule": "crossing",
        "symbols": ["BTCUSDT"],
    }
    operations = [result.ok() for result in fuzz_schema.get_all_operations()]
    assert len(operations) == OPERATIONS
    statuses = {operation.label: fuzz(operation, known=known) for operation in operations}
    print({label: sorted(set(codes)) for label, codes in statuses.items()})
    assert sum(len(codes) for codes in statuses.values()) >= OPERATIONS * 10
    # Not only refusals: most operations answered some generated requests with rows.
    answered = [label for label, codes in statuses.items() if any(200 <= code < 300 for code in codes)]
    assert len(answered) >= OPERATIONS // 2, statuses


def one_operation(fuzz_schema, path: str, method: str = "GET") -> Any:
    return fuzz_schema[path][method]


def test_the_fuzzer_fails_on_a_server_error(fuzz_schema, monkeypatch):
    seed(candles=120)

    def broken(**kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(marketdata_views, "symbols_list", broken)
    with pytest.raises(FailureGroup, match="Server error"):
        fuzz(one_operation(fuzz_schema, "/api/v1/symbols/"), examples=5)


def test_the_fuzzer_fails_on_a_response_off_schema(fuzz_schema, monkeypatch):
    seed(candles=120)
    # Prices as JSON numbers, not the decimal strings the schema promises.
    monkeypatch.setattr(ExactDecimalField, "to_representation", lambda self, value: float(value))
    with pytest.raises(FailureGroup, match="schema"):
        fuzz(one_operation(fuzz_schema, "/api/v1/symbols/"), examples=5)
