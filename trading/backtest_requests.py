"""A backtest asked for through the REST API: run by the backtest service (`trading.backtests`)
in the request, then audited with the API user as actor (the CLI's runs record their actor on
the run only; a run asked for over the network is also an event of the audit log)."""

from __future__ import annotations

from audit.services import Actor, actor_label, audit_record
from trading.backtests import BacktestRequest, backtest_run
from trading.models import BacktestRun


def backtest_request_run(*, request: BacktestRequest, actor: Actor) -> BacktestRun:
    """Validate, replay and store (BacktestInputError before anything is stored), then audit
    `trading.backtest.run` with the run's id, rule version and outcome."""
    run, _result = backtest_run(request=request, actor=actor_label(actor))
    audit_record(
        actor=actor,
        action="trading.backtest.run",
        obj=run,
        payload={
            "rule": run.rule_version.config.name,
            "version": run.rule_version.number,
            "checksum": run.rule_checksum,
            "status": run.status,
            "since": request.since.isoformat(),
            "until": request.until.isoformat(),
        },
    )
    return run
