"""Where orders go: the dry-run broker (the one fill model) and the live broker (ccxt)."""
