"""Prometheus metrics of the ingest process (served on its own port by `manage.py ingest`)."""

from prometheus_client import Counter, Gauge, Histogram

# Event time (the exchange's E, wall clock) → committed in PostgreSQL.
INGEST_LATENCY = Histogram(
    "oasis_ingest_latency_seconds",
    "From the exchange's event time of a closing kline frame to its candle being committed.",
    ["timeframe"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.04, 0.075, 0.1, 0.15, 0.3, 0.5, 1.0, 2.5, 5.0),
)
CANDLES_RECEIVED = Counter(
    "oasis_ingest_closed_candles_received_total", "Closed candles handed to the writer.", ["source"]
)
CANDLES_WRITTEN = Counter(
    "oasis_ingest_candles_written_total", "Closed candles that became new rows (duplicates excluded)."
)
CANDLES_IGNORED = Counter(
    "oasis_ingest_candles_ignored_total",
    "Frames that changed nothing: duplicates, stale or out-of-order updates.",
    ["reason"],
)
FRAMES_REJECTED = Counter(
    "oasis_ingest_frames_rejected_total", "Frames or rows refused as malformed or impossible.", ["kind"]
)
WS_RECONNECTS = Counter("oasis_ingest_ws_reconnects_total", "WebSocket reconnections.", ["exchange"])
BUFFER_LAG = Gauge(
    "oasis_ingest_buffer_lag_seconds",
    "Seconds since the last frame of a stream (staleness).",
    ["symbol", "timeframe"],
)
GAPS_BACKFILLED = Counter(
    "oasis_ingest_backfilled_candles_total", "Closed candles fetched over REST to fill a gap."
)
WRITE_BATCH_SIZE = Histogram(
    "oasis_ingest_write_batch_size",
    "Candles per database write.",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
)
GAPS_OPEN = Gauge("oasis_marketdata_gaps_open", "Gaps of missing candles not yet backfilled or imputed.")
BACKFILL_PAGES_REJECTED = Counter(
    "oasis_backfill_pages_rejected_total",
    "Pages of REST klines a backfill refused whole (malformed, out of order, misaligned or outside "
    "the range asked for): nothing from them is written.",
    ["kind"],
)
BACKFILL_CANDLES = Counter(
    "oasis_backfill_candles_total", "Candles written by backfills: fetched or imputed.", ["kind"]
)
BACKFILL_WAITS = Counter(
    "oasis_backfill_waits_total",
    "Pauses of a backfill: request-weight budget spent, or the exchange's Retry-After (429/418).",
    ["reason"],
)
