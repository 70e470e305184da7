"""REST API of market data: symbols, candles, gaps and backfill requests (under /api/v1/)."""
