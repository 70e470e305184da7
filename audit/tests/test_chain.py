"""The pure hash-chain core: normalisation and hashing (no database)."""

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit.chain import GENESIS_HASH, EventContent, PayloadError, event_hash, normalise_payload

WHEN = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def content(payload, **overrides) -> EventContent:
    fields = {
        "seq": 1,
        "created_at": WHEN,
        "actor": "system:test",
        "action": "test.event",
        "object_type": "",
        "object_id": "",
        "payload": payload,
        "prev_hash": GENESIS_HASH,
    }
    return EventContent(**{**fields, **overrides})


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ([1, 2], "payload must be a JSON object (dict), got list"),
        ({"price": Decimal("1.5")}, "payload.price is of type Decimal"),
        ({"when": WHEN}, "payload.when is of type datetime"),
        ({"a": {"b": [1, float("nan")]}}, "payload.a.b[1] is nan"),
        ({"x": float("inf")}, "payload.x is inf"),
        ({1: "one"}, "has a key 1 of type int"),
        ({"s": "a\x00b"}, "payload.s contains a NUL character"),
        ({"o": object()}, "payload.o is of type object"),
        ({"k": "\ud800"}, "payload.k is not valid Unicode"),
        ({"\x00": 1}, "payload key '\\x00' contains a NUL character"),
    ],
)
def test_unstorable_payloads_are_refused_naming_the_path(payload, fragment):
    with pytest.raises(PayloadError) as excinfo:
        normalise_payload(payload)
    assert fragment in str(excinfo.value)


def test_tuples_become_lists():
    assert normalise_payload({"t": (1, "a")}) == {"t": [1, "a"]}


def test_hash_ignores_number_spelling_and_key_order():
    # What PostgreSQL's jsonb hands back for what we wrote.
    written = {"big": 1e16, "small": 1.5e-7, "one": 1.0, "b": 1, "a": [0.1, -0.0]}
    read_back = {"a": [0.1, 0], "b": 1, "big": 10**16, "one": 1.0, "small": 0.00000015}
    assert event_hash(content(written)) == event_hash(content(read_back))


def test_hash_tells_a_string_from_a_number():
    assert event_hash(content({"qty": "1"})) != event_hash(content({"qty": 1}))


def test_hash_is_the_same_in_any_time_zone():
    eastern = WHEN.astimezone(timezone(timedelta(hours=-5)))
    assert event_hash(content({}, created_at=eastern)) == event_hash(content({}))


@pytest.mark.parametrize(
    "change",
    [
        {"seq": 2},
        {"created_at": WHEN + timedelta(microseconds=1)},
        {"actor": "user:mallory"},
        {"action": "test.other"},
        {"object_type": "trading.order"},
        {"object_id": "7"},
        {"payload": {"qty": 2}},
        {"prev_hash": "1" * 64},
    ],
)
def test_every_field_is_covered_by_the_hash(change):
    base = content({"qty": 1})
    assert event_hash(base) != event_hash(content(**{"payload": {"qty": 1}, **change}))


storable_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | storable_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(storable_text, children, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(storable_text, json_values, max_size=5))
def test_hash_survives_a_json_round_trip(payload):
    normalised = normalise_payload(payload)
    round_tripped = json.loads(json.dumps(normalised))
    assert event_hash(content(round_tripped)) == event_hash(content(normalised))
