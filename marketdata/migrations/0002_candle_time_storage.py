"""Time-oriented storage for candles on PostgreSQL, guarded by what the server offers.

- TimescaleDB available (pg_available_extensions): the extension is created and candles become a
  hypertable (7-day chunks) whose chunks older than 30 days are compressed, segmented by symbol
  and timeframe. A hypertable's unique indexes must contain the time column, so the primary key
  becomes (id, open_time). If the extension is available but not preloaded, CREATE EXTENSION
  fails and so does this migration: loud, rather than silently running without hypertables.
- Plain PostgreSQL (these machines): a BRIN index on open_time beside the unique btree
  (symbol, timeframe, open_time). Candles arrive in time order, so BRIN stays tiny and exact.
- Other databases (SQLite, the embedded default): nothing.

docs/decisions/0011-timescaledb-guarded-migrations.md says why this replaces django-timescaledb.
"""

from django.apps.registry import Apps
from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

FORWARD = """
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        ALTER TABLE marketdata_candle DROP CONSTRAINT marketdata_candle_pkey;
        ALTER TABLE marketdata_candle ADD CONSTRAINT marketdata_candle_pkey PRIMARY KEY (id, open_time);
        PERFORM create_hypertable(
            'marketdata_candle', 'open_time',
            chunk_time_interval => INTERVAL '7 days', migrate_data => true
        );
        ALTER TABLE marketdata_candle SET (
            timescaledb.compress,
            timescaledb.compress_segmentby = 'symbol_id, timeframe',
            timescaledb.compress_orderby = 'open_time'
        );
        PERFORM add_compression_policy('marketdata_candle', INTERVAL '30 days');
    ELSE
        CREATE INDEX marketdata_candle_open_time_brin ON marketdata_candle USING brin (open_time);
    END IF;
END
$$;
"""

BACKWARD = "DROP INDEX IF EXISTS marketdata_candle_open_time_brin;"


def forward(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD, params=None)


def backward(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    # A hypertable is not turned back into a plain table here: that is a data migration of
    # its own, to be planned, not a side effect of rolling back.
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BACKWARD, params=None)


class Migration(migrations.Migration):
    dependencies = [("marketdata", "0001_symbols_and_candles")]

    operations = [migrations.RunPython(forward, backward)]
