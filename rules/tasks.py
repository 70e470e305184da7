"""Celery tasks of rules: post-close evaluation, routed by symbol to a shard queue so one
symbol's closes are evaluated in order by one worker (whose states are its cache)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from rules.evaluation import candle_from_payload, evaluator


@shared_task(name="rules.evaluate_closes", acks_late=True, expires=600)
def evaluate_closes(candles: list[dict[str, Any]]) -> int:
    """Evaluate the covering rules on these closed candles; returns the signals written.
    Safe to run twice: a signal is stored once per pair, candle and rule version."""
    return len(evaluator().on_closes([candle_from_payload(candle) for candle in candles]))
