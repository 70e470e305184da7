"""Reads of rules: which active rule versions cover a pair, and whether a rule's flag lets it
run for a symbol."""

from __future__ import annotations

import zlib

from waffle.models import Flag

from rules.models import RuleConfig, RuleConfigVersion


def active_versions() -> list[RuleConfigVersion]:
    """The active version of every active rule, with its rule."""
    return list(
        RuleConfigVersion.objects.filter(
            pk__in=RuleConfig.objects.filter(status=RuleConfig.Status.ACTIVE).values("active_version")
        ).select_related("config")
    )


def rule_flag_allows(flag: Flag, *, config_id: int, symbol: str) -> bool:
    """Whether a rule's flag (`Flag.get(config.flag_name)`, read once per batch) lets it run for
    `symbol`: everyone on → on; everyone off → off; unset → on for the symbols whose stable hash
    falls within the flag's percent (the same symbols every time, across processes)."""
    if flag.pk is None or flag.everyone is False:
        return False
    if flag.everyone:
        return True
    share = float(flag.percent or 0)
    return zlib.crc32(f"{config_id}:{symbol}".encode()) % 1000 < share * 10
