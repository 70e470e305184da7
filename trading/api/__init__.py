"""REST API of trading: orders, positions, the kill switch and backtests (under /api/v1/)."""
