"""The kill switch: engaged and released by hand (admin, `manage.py killswitch`, later the API),
tripped by the execution loop's tripwires. Every change is one transaction: the row, the audit
event and, after commit, a broadcast on the channel layer (group "trading", event
"killswitch.update")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from audit.services import Actor, actor_label, audit_record
from oasis_site.broadcast import broadcast_after_commit
from trading import metrics
from trading.core.tripwires import Trip, is_stricter
from trading.core.types import KillSwitchState
from trading.models import KillSwitch

BROADCAST_GROUP = "killswitch"


class KillSwitchError(ValueError):
    pass


@dataclass(frozen=True)
class KillSwitchView:
    state: KillSwitchState
    reason: str
    tripwire: str
    since: datetime | None
    changed_by: str


def killswitch_view() -> KillSwitchView:
    row = KillSwitch.objects.filter(pk=1).first()
    if row is None:
        return KillSwitchView(KillSwitchState.ACTIVE, "", "", None, "")
    return KillSwitchView(KillSwitchState(row.state), row.reason, row.tripwire, row.since, row.changed_by)


def killswitch_set(
    *, state: KillSwitchState, reason: str, actor: Actor, tripwire: str = "", only_if_stricter: bool = False
) -> KillSwitch | None:
    """Put the kill switch in `state` for `reason`. A state change by hand needs a reason.
    With `only_if_stricter` (automatic trips), nothing changes unless `state` is stricter than
    the state found under the row lock, and None is returned."""
    if not isinstance(state, KillSwitchState):
        raise KillSwitchError(
            f"state must be one of {', '.join(s.value for s in KillSwitchState)}; got {state!r}"
        )
    reason = (reason or "").strip()
    if not reason:
        raise KillSwitchError("a reason is required (it goes into the audit log)")
    if len(reason) > 1000:
        raise KillSwitchError("the reason is longer than 1000 characters")
    label = actor_label(actor)
    with transaction.atomic():
        row = KillSwitch.objects.select_for_update().filter(pk=1).first()
        previous = KillSwitchState(row.state) if row else KillSwitchState.ACTIVE
        if only_if_stricter and not is_stricter(state, previous):
            return None
        now = timezone.now()
        if row is None:
            row = KillSwitch(pk=1)
        row.state = state.value
        row.reason = reason
        row.tripwire = tripwire
        row.since = now
        row.changed_by = label
        row.save()
        audit_record(
            actor=actor,
            action="trading.killswitch",
            obj=row,
            payload={"from": previous.value, "to": state.value, "reason": reason, "tripwire": tripwire},
        )
        broadcast_after_commit(
            BROADCAST_GROUP,
            {
                "type": "killswitch.update",
                "state": state.value,
                "previous": previous.value,
                "reason": reason,
                "tripwire": tripwire,
                "since": now.isoformat(),
                "by": label,
            },
        )
        transaction.on_commit(lambda: metrics.set_killswitch_state(state))
    return row


def killswitch_engage(*, state: KillSwitchState, reason: str, actor: Actor) -> KillSwitch:
    if state is KillSwitchState.ACTIVE:
        raise KillSwitchError("engage to 'halted' or 'reducing'; use release to go back to active")
    row = killswitch_set(state=state, reason=reason, actor=actor)
    assert row is not None
    return row


def killswitch_release(*, reason: str, actor: Actor) -> KillSwitch:
    row = killswitch_set(state=KillSwitchState.ACTIVE, reason=reason, actor=actor)
    assert row is not None
    return row


def killswitch_trip(trips: list[Trip]) -> KillSwitch | None:
    """Trip to the strictest state the tripwires ask for, if that is stricter than now. A trip
    never loosens the switch: only a person releases it."""
    if not trips:
        return None
    strongest = trips[0]
    for trip in trips[1:]:
        if is_stricter(trip.state, strongest.state):
            strongest = trip
    current = killswitch_view().state
    if not is_stricter(strongest.state, current):
        return None
    reason = "; ".join(trip.reason for trip in trips)
    row = killswitch_set(
        state=strongest.state,
        reason=reason,
        actor="system:killswitch",
        tripwire=strongest.tripwire,
        only_if_stricter=True,
    )
    if row is not None:
        tripwire = strongest.tripwire
        transaction.on_commit(lambda: metrics.KILLSWITCH_TRIPS.labels(tripwire=tripwire).inc())
    return row
