"""Symbols and candles arrive with the ingestion issue; the app is registered now so its
place in the layout (and in import contracts) is fixed from the start."""
