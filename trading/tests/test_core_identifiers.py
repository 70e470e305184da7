"""Client order ids (`trading.core.identifiers`): the same signal always gives the same id,
different signals different ids, and every id is one Binance accepts."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trading.core.identifiers import PREFIX, client_order_id

BINANCE_CLIENT_ORDER_ID = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")

# Parts as the execution loop passes them (exchange, symbol, timeframe, close time, rule version,
# action), and any other text: separators and lone surrogates included.
part = st.one_of(st.integers(-(2**63), 2**63), st.text(max_size=20))
parts = st.lists(part, min_size=1, max_size=6).map(tuple)


def test_same_parts_same_id() -> None:
    signal = ("binance", "BTCUSDT", "1m", 1_767_225_660_000, 7, "entry")
    assert client_order_id(*signal) == client_order_id(*signal)
    assert client_order_id(*signal).startswith(PREFIX)


def test_each_part_changes_the_id() -> None:
    signal = ["binance", "BTCUSDT", "1m", 1_767_225_660_000, 7, "entry"]
    ids = {client_order_id(*signal)}
    for index, other in enumerate(["coinbase", "ETHUSDT", "5m", 1_767_225_720_000, 8, "exit"]):
        changed = list(signal)
        changed[index] = other
        ids.add(client_order_id(*changed))
    assert len(ids) == 7


def test_parts_are_kept_apart() -> None:
    assert client_order_id("a|b") != client_order_id("a", "b")
    assert client_order_id('a", "b') != client_order_id("a", "b")
    assert client_order_id("\ud800").startswith(PREFIX)


def test_order_of_parts_matters() -> None:
    assert client_order_id("BTCUSDT", "ETHUSDT") != client_order_id("ETHUSDT", "BTCUSDT")


def test_needs_a_part() -> None:
    with pytest.raises(ValueError, match="at least one part"):
        client_order_id()


@settings(max_examples=300, deadline=None)
@given(first=parts, second=parts)
def test_ids_are_deterministic_distinct_and_accepted_by_binance(
    first: tuple[object, ...], second: tuple[object, ...]
) -> None:
    one = client_order_id(*first)
    assert one == client_order_id(*first)
    assert BINANCE_CLIENT_ORDER_ID.fullmatch(one)
    assert len(one) == 32
    if tuple(map(str, first)) != tuple(map(str, second)):
        assert one != client_order_id(*second)


def _reference_id(*parts: object) -> str:
    """The definition: SHA-256 over json.dumps of the parts as text (live orders carry ids made
    this way, so the id of a part list may never change)."""
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps([str(part) for part in parts]).encode()).hexdigest()
    return PREFIX + digest[:28]


@settings(max_examples=500, deadline=None)
@given(
    parts=st.lists(
        st.one_of(
            st.integers(-(2**63), 2**63),
            st.text(max_size=20),
            st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x80), max_size=12),
            st.sampled_from(['"', "\\", "\x7f", "\x1f", " ", "~", "/", "é", "\u2028"]),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_ids_are_sha256_of_the_parts_as_json(parts: list[object]) -> None:
    assert client_order_id(*parts) == _reference_id(*parts)


def test_known_ids_do_not_change() -> None:
    # Pinned values: orders already at the exchange carry these.
    signal = ("binance", "BTCUSDT", "1m", 1_767_225_660_000, 7, "enter")
    assert client_order_id(*signal) == "oas-fcf6647b53c0612ff990e2bc61aa" == _reference_id(*signal)
    assert client_order_id('a"b', "c\\d", "\x7f") == _reference_id('a"b', "c\\d", "\x7f")
