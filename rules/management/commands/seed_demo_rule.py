"""`manage.py seed_demo_rule`: the example rule `make run` starts with (an EMA cross with an
RSI filter on the demo symbols, 1m and 5m), active and switched on. Does nothing when a rule of
that name exists already (an operator may have changed or retired it)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from waffle.models import Flag

from rules.models import RuleConfig
from rules.services import RuleInputError, rule_config_create, rule_version_activate

NAME = "Demo: EMA cross with an RSI filter"
SPEC = {
    "timeframes": ["1m", "5m"],
    "indicators": {
        "fast": {"kind": "ema", "period": 9},
        "slow": {"kind": "ema", "period": 21},
        "rsi": {"kind": "rsi", "period": 14},
    },
    "entry": "fast crosses_above slow and rsi < 70",
    "exit": "fast crosses_below slow or rsi > 80",
    "sizing": {"quote_amount": "100"},
    "limits": {"max_position_per_symbol": "500", "max_position_total": "2500"},
    "stop_loss_pct": "2",
    "take_profit_pct": "4",
    "cooldowns": {"after_trade_s": 60, "after_loss_s": 300, "per_symbol_s": 120},
}


class Command(BaseCommand):
    help = "Create the demo rule (EMA cross + RSI filter), active, unless it exists."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--symbols", required=True, help="comma-separated symbol names")

    def handle(self, *args: Any, **options: Any) -> None:
        if RuleConfig.objects.filter(name=NAME).exists():
            self.stdout.write(f"{NAME!r} exists: left as it is")
            return
        symbols = [name.strip().upper() for name in options["symbols"].split(",") if name.strip()]
        try:
            config = rule_config_create(
                name=NAME,
                description="Example rule seeded by make run; edit it in the admin.",
                symbols=symbols,
                spec=SPEC,
                author="system:seed",
                comment="seeded",
            )
        except RuleInputError as exc:
            raise CommandError(str(exc)) from None
        rule_version_activate(version=config.versions.get(), actor="system:seed")
        flag = Flag.objects.get(name=config.flag_name)
        flag.everyone = True
        flag.save()
        self.stdout.write(f"{NAME!r}: version 1 active on {', '.join(symbols)}")
