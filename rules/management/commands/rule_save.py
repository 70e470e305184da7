"""`manage.py rule_save`: create a rule, or save a new version of one, from a spec file; with
`--activate` make that version the running one. Bad input is a CommandError naming each field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from rules.models import RuleConfig
from rules.services import RuleInputError, rule_config_create, rule_version_activate, rule_version_create


class Command(BaseCommand):
    help = "Create a rule or save a new version of it from a JSON spec file (docs/rules.md)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="the rule's name (created when it does not exist)")
        parser.add_argument("--spec", required=True, type=Path, help="JSON file with the spec")
        parser.add_argument("--symbols", required=True, help="comma-separated symbol names")
        parser.add_argument("--description", default="")
        parser.add_argument("--comment", default="", help="why this version")
        parser.add_argument("--activate", action="store_true", help="make the saved version the active one")
        parser.add_argument("--actor", default="system:manage.py", help="who is recorded in the audit log")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            spec = json.loads(options["spec"].read_text())
        except OSError as exc:
            raise CommandError(f"--spec: cannot read {options['spec']}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise CommandError(
                f"--spec: not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from None
        symbols = [name.strip().upper() for name in options["symbols"].split(",") if name.strip()]
        actor = options["actor"]
        try:
            config = RuleConfig.objects.filter(name=options["name"]).first()
            if config is None:
                config = rule_config_create(
                    name=options["name"],
                    description=options["description"],
                    symbols=symbols,
                    spec=spec,
                    author=actor,
                    comment=options["comment"],
                )
                version = config.versions.get()
            else:
                version = rule_version_create(
                    config=config, spec=spec, symbols=symbols, author=actor, comment=options["comment"]
                )
        except RuleInputError as exc:
            raise CommandError("invalid rule:\n" + "\n".join(f"  {f}: {m}" for f, m in exc.errors)) from None
        if options["activate"]:
            rule_version_activate(version=version, actor=actor)
        state = "active" if options["activate"] else "saved"
        self.stdout.write(
            f"{config.name}: version {version.number} {state} (checksum {version.checksum[:12]})"
        )
