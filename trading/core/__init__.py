"""The execution hot path without Django: symbol filters, risk checks, the fill model, position
accounting and kill-switch tripwires. Live, dry-run and backtest all use these, and only these."""
