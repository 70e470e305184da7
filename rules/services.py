"""Writes of rules: configs, their versions, activation and roll-back. Every one audited.

A spec is validated (`rules.engine.spec.parse_spec`) before anything is written; an invalid
one raises `RuleInputError` naming each bad field, and nothing is saved.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, cast

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from waffle.models import Flag

from audit.mirror import mirror_enqueue
from audit.services import Actor, actor_label, audit_record
from marketdata.models import Symbol
from rules.engine.spec import RuleSpec, SpecError, parse_spec
from rules.models import RuleConfig, RuleConfigVersion


class RuleInputError(ValueError):
    """Bad input for a rule: `errors` lists (field, message) pairs, all of them at once."""

    def __init__(self, errors: Sequence[tuple[str, str]]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(f"{field}: {message}" for field, message in self.errors))


def rule_input_validate(*, spec: Any, symbols: Any, exchange: str | None = None) -> RuleSpec:
    """The parsed spec, or RuleInputError naming every bad field of the spec and the symbols."""
    errors: list[tuple[str, str]] = []
    parsed: RuleSpec | None = None
    try:
        parsed = parse_spec(spec)
    except SpecError as exc:
        errors.extend((f"spec.{field}" if field else "spec", message) for field, message in exc.errors)
    if not isinstance(symbols, list) or not all(isinstance(name, str) and name for name in symbols):
        errors.append(("symbols", "must be a list of symbol names"))
    elif not symbols:
        errors.append(("symbols", "name at least one symbol"))
    else:
        known = Symbol.objects.filter(symbol__in=symbols)
        if exchange is not None:
            known = known.filter(exchange=exchange)
        missing = sorted(set(symbols) - set(known.values_list("symbol", flat=True)))
        if missing:
            errors.append(("symbols", f"unknown symbol(s) {', '.join(missing)}; run sync_symbols first"))
        if len(set(symbols)) != len(symbols):
            errors.append(("symbols", "a symbol is listed twice"))
    if errors:
        raise RuleInputError(errors)
    assert parsed is not None
    return parsed


def version_checksum(*, spec: RuleSpec, symbols: Sequence[str]) -> str:
    body = json.dumps({"spec": json.loads(spec.canonical_json()), "symbols": sorted(symbols)}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


@transaction.atomic
def rule_config_create(
    *, name: str, description: str, symbols: list[str], spec: Any, author: Actor, comment: str = ""
) -> RuleConfig:
    """A new rule (draft) with its version 1 and its feature flag (off)."""
    if not name or not name.strip():
        raise RuleInputError([("name", "must not be empty")])
    if RuleConfig.objects.filter(name=name.strip()).exists():
        raise RuleInputError([("name", f"a rule called {name.strip()!r} exists already")])
    parsed = rule_input_validate(spec=spec, symbols=symbols)
    config = RuleConfig.objects.create(name=name.strip(), description=description, symbols=list(symbols))
    Flag.objects.get_or_create(
        name=config.flag_name,
        defaults={
            "everyone": False,
            "note": f"Rule {config.name!r}: on for everyone, or for a share of symbols.",
        },
    )
    audit_record(actor=author, action="rules.config.create", obj=config, payload={"name": config.name})
    _version_create(config=config, parsed=parsed, spec=spec, symbols=symbols, author=author, comment=comment)
    return config


@transaction.atomic
def rule_version_create(
    *, config: RuleConfig, spec: Any, symbols: list[str], author: Actor, comment: str = ""
) -> RuleConfigVersion:
    """Version n+1 of `config` (its parent: the newest version). An unchanged spec and symbol
    list make no new version: the newest is returned."""
    parsed = rule_input_validate(spec=spec, symbols=symbols)
    locked = RuleConfig.objects.select_for_update().get(pk=config.pk)
    newest = locked.versions.order_by("-number").first()
    if newest is not None and newest.checksum == version_checksum(spec=parsed, symbols=symbols):
        return newest
    return _version_create(
        config=locked, parsed=parsed, spec=spec, symbols=symbols, author=author, comment=comment
    )


def _version_create(
    *, config: RuleConfig, parsed: RuleSpec, spec: Any, symbols: Sequence[str], author: Actor, comment: str
) -> RuleConfigVersion:
    newest = config.versions.order_by("-number").first()
    version = RuleConfigVersion.objects.create(
        config=config,
        number=1 if newest is None else newest.number + 1,
        spec=json.loads(parsed.canonical_json()),
        symbols=list(symbols),
        checksum=version_checksum(spec=parsed, symbols=symbols),
        parent=newest,
        author=cast(Any, author) if isinstance(author, AbstractBaseUser) else None,
        comment=comment,
    )
    audit_record(
        actor=author,
        action="rules.version.create",
        obj=version,
        payload={
            "rule": config.name,
            "number": version.number,
            "checksum": version.checksum,
            "parent": None if newest is None else newest.number,
            "comment": comment,
        },
    )
    mirror_enqueue(
        kind="rule_version",
        key=f"{config.pk}:{version.number}",
        document={
            "config": config.pk,
            "rule": config.name,
            "number": version.number,
            "spec": version.spec,
            "symbols": version.symbols,
            "checksum": version.checksum,
            "parent": None if newest is None else newest.number,
            "author": actor_label(author),
            "comment": comment,
            "created_at": version.created_at.isoformat(),
        },
    )
    return version


@transaction.atomic
def rule_version_activate(
    *, version: RuleConfigVersion, actor: Actor, action: str = "activate"
) -> RuleConfig:
    """Make `version` the one its rule runs, and the rule active."""
    config = RuleConfig.objects.select_for_update().get(pk=version.config_id)
    previous = config.active_version
    parsed = parse_spec(version.spec)
    config.active_version = version
    config.status = RuleConfig.Status.ACTIVE
    config.symbols = list(version.symbols)
    config.timeframes = [str(tf) for tf in parsed.timeframes]
    config.save(update_fields=["active_version", "status", "symbols", "timeframes", "updated_at"])
    audit_record(
        actor=actor,
        action=f"rules.version.{action}",
        obj=config,
        payload={
            "rule": config.name,
            "from": None if previous is None else previous.number,
            "to": version.number,
            "checksum": version.checksum,
        },
    )
    return config


def rule_rollback(*, config: RuleConfig, actor: Actor) -> RuleConfig:
    """Run the version the active one was made from again (its parent)."""
    active = config.active_version
    if active is None or active.parent is None:
        raise RuleInputError([("active_version", "there is no earlier version to roll back to")])
    return rule_version_activate(version=active.parent, actor=actor, action="rollback")


@transaction.atomic
def rule_retire(*, config: RuleConfig, actor: Actor) -> RuleConfig:
    """Stop running the rule; its versions and signals stay."""
    locked = RuleConfig.objects.select_for_update().get(pk=config.pk)
    locked.status = RuleConfig.Status.RETIRED
    locked.save(update_fields=["status", "updated_at"])
    audit_record(actor=actor, action="rules.config.retire", obj=locked, payload={"rule": locked.name})
    return locked


@transaction.atomic
def rule_config_update(*, config: RuleConfig, name: str, description: str, actor: Actor) -> RuleConfig:
    """Rename or re-describe a rule (not versioned: neither changes what it does)."""
    locked = RuleConfig.objects.select_for_update().get(pk=config.pk)
    name = name.strip()
    if not name:
        raise RuleInputError([("name", "must not be empty")])
    if RuleConfig.objects.filter(name=name).exclude(pk=locked.pk).exists():
        raise RuleInputError([("name", f"a rule called {name!r} exists already")])
    changes = {
        field: [getattr(locked, field), value]
        for field, value in (("name", name), ("description", description))
        if getattr(locked, field) != value
    }
    if changes:
        locked.name, locked.description = name, description
        locked.save(update_fields=["name", "description", "updated_at"])
        audit_record(actor=actor, action="rules.config.update", obj=locked, payload={"changes": changes})
    return locked
