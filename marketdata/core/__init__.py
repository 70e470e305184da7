"""The market-data hot path: pure Python, no Django. Shared by live ingestion, the simulator,
resampling and backtests, so there is exactly one implementation of each rule."""
