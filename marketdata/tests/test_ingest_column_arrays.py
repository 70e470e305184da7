"""The candle writer's column arrays: PostgreSQL reads back exactly the lists that were dumped,
whatever they hold (the fast forms and the careful ones), and the writer stores a batch as the
synchronous service does, digits and exponents included."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketdata.core.klines import Kline
from marketdata.core.timeframes import Timeframe
from marketdata.ingest.column_arrays import ColumnArrayDumper, int8_array, text_array
from marketdata.ingest.writer import CandleWriter
from marketdata.models import Candle
from marketdata.selectors import CANDLE_COLUMNS
from marketdata.services import CandleWrite, candles_upsert_closed
from marketdata.tests.factories import SymbolFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
T0 = 1_677_628_800_000


@pytest.fixture
def pg() -> Any:
    """A psycopg connection with the dumper registered, as the writer's connections have it."""
    params = {
        key: value
        for key, value in connection.get_connection_params().items()
        if key not in ("cursor_factory", "context", "prepare_threshold")
    }
    with psycopg.connect(**params, autocommit=True) as conn:
        conn.adapters.register_dumper(list, ColumnArrayDumper)
        yield conn


def read_back(pg: Any, values: list[Any], cast: str) -> Any:
    return pg.execute(f"SELECT %b::{cast}", [values]).fetchone()[0]


# What a str can hold and PostgreSQL's text too: no NUL, no lone surrogate (no UTF-8 for it).
_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=200)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(st.none(), _TEXT, st.from_regex(r"[0-9]{1,12}\.[0-9]{8}|[0-9]E-[0-9]", fullmatch=True))
    )
)
def test_text_columns_read_back_as_dumped(pg, values):
    assert read_back(pg, values, "text[]") == values


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))))
def test_int8_columns_read_back_as_dumped(pg, values):
    assert read_back(pg, values, "int8[]") == values


def test_what_the_fast_forms_cannot_take_goes_the_careful_way_or_is_refused(pg):
    assert read_back(pg, ["1.00000000", None, "café", "x" * 300], "text[]") == [
        "1.00000000",
        None,
        "café",
        "x" * 300,
    ]
    assert read_back(pg, [1, None, -(2**63)], "int8[]") == [1, None, -(2**63)]
    assert read_back(pg, [True, False], "bool[]") == [True, False]  # not a column of ours: psycopg's
    assert read_back(pg, [], "int8[]") == []
    with pytest.raises(psycopg.DataError, match="out of range"):
        int8_array([1, 2**63])
    with pytest.raises(psycopg.DataError, match="holds a float"):
        text_array(["1", 1.5])


def test_the_writer_stores_a_batch_as_the_synchronous_service_does():
    symbols = SymbolFactory.create_batch(6)
    prices = ["27450.12000000", "1E-8", "0.00000001", "123456789012.5", "3.10", "42"]

    def batch(minute: int) -> list[CandleWrite]:
        writes = []
        for symbol, price in zip(symbols, prices, strict=True):
            p = Decimal(price)
            kline = Kline(
                symbol.symbol, Timeframe.M1, T0 + minute * 60_000, p, p, p, p, Decimal("0"),
                Decimal("1.5E+3"), 2**20 + minute, True,
            )  # fmt: skip
            writes.append(CandleWrite(symbol.pk, kline, "ws", imputed_inputs=minute))
        return writes

    writer = CandleWriter(connections=1)

    async def run() -> None:
        async with writer.running():
            for write in batch(0):
                writer.submit(write)

    asyncio.run(run())
    candles_upsert_closed(writes=batch(1))
    columns = [name for name in CANDLE_COLUMNS if name != "open_time"]  # the API's, in its order
    by_writer = {
        row[0]: row[1:]
        for row in Candle.objects.filter(open_time__minute=0).values_list("symbol_id", *columns)
    }
    by_service = {
        row[0]: row[1:]
        for row in Candle.objects.filter(open_time__minute=1).values_list("symbol_id", *columns)
    }
    assert len(by_writer) == 6
    for symbol_id, written in by_writer.items():
        expected = by_service[symbol_id]
        assert [str(value) for value in written[:6]] == [str(value) for value in expected[:6]]
        assert written[6] == expected[6] - 1  # the trade counts differ by the minute
        assert (written[7], written[8]) == (False, "ws")
        assert expected[7] is True  # imputed_inputs 1
