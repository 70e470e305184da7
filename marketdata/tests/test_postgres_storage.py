"""Candle storage on plain PostgreSQL: a BRIN index on time beside the unique btree."""

import pytest
from django.db import connection

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def test_candles_have_brin_on_time_and_unique_bucket_btree():
    with connection.cursor() as cursor:
        cursor.execute("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')")
        if cursor.fetchone()[0]:
            pytest.skip("TimescaleDB is installed here: candles are a hypertable instead")
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'marketdata_candle'")
        indexes = dict(cursor.fetchall())
    assert "USING brin (open_time)" in indexes["marketdata_candle_open_time_brin"]
    assert "UNIQUE INDEX marketdata_candle_unique_bucket" in indexes["marketdata_candle_unique_bucket"]
    assert "(symbol_id, timeframe, open_time)" in indexes["marketdata_candle_unique_bucket"]


def test_prices_are_unconstrained_numeric():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT column_name, data_type, numeric_precision, numeric_scale "
            "FROM information_schema.columns WHERE table_name = 'marketdata_candle' "
            "AND column_name IN ('open', 'high', 'low', 'close', 'volume')"
        )
        rows = cursor.fetchall()
    assert len(rows) == 5
    assert all(row[1:] == ("numeric", None, None) for row in rows)
