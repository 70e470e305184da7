"""The kill switch service and command: engage and release by hand need a reason; a trip only
makes the switch stricter; every change is one row, one audit event and, after commit, one
broadcast; the state is the row, so it survives a restart."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.management import CommandError, call_command
from prometheus_client import REGISTRY

from audit.models import AuditEvent
from audit.selectors import audit_chain_verify
from trading.core.tripwires import DRAWDOWN, ERROR_BURST, LATENCY, Trip
from trading.core.types import KillSwitchState
from trading.killswitch import (
    BROADCAST_GROUP,
    KillSwitchError,
    killswitch_engage,
    killswitch_release,
    killswitch_trip,
    killswitch_view,
)
from trading.models import KillSwitch
from trading.selectors import killswitch_state

pytestmark = pytest.mark.django_db

ACTIVE, REDUCING, HALTED = KillSwitchState.ACTIVE, KillSwitchState.REDUCING, KillSwitchState.HALTED


def events() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action="trading.killswitch").order_by("seq"))


def drawdown(reason: str = "drawdown 12% (limit 10%)") -> Trip:
    return Trip(DRAWDOWN, REDUCING, reason)


def error_burst(reason: str = "5 execution errors in 60 s") -> Trip:
    return Trip(ERROR_BURST, HALTED, reason)


# By hand.


def test_before_any_change_the_switch_is_active():
    assert not KillSwitch.objects.exists()
    view = killswitch_view()
    assert (view.state, view.reason, view.tripwire, view.since, view.changed_by) == (ACTIVE, "", "", None, "")
    assert killswitch_state() is ACTIVE


def test_engage_and_release_write_the_row_and_audit_from_to_and_reason():
    row = killswitch_engage(state=HALTED, reason="  exchange incident  ", actor="cli:ops")
    assert (row.pk, row.state, row.reason, row.tripwire, row.changed_by) == (
        1,
        "halted",
        "exchange incident",
        "",
        "cli:ops",
    )
    assert row.since is not None
    killswitch_engage(state=REDUCING, reason="calmer now", actor="cli:ops")
    killswitch_release(reason="all clear", actor="cli:ops")

    assert KillSwitch.objects.count() == 1
    assert killswitch_view().state is ACTIVE
    assert [(e.actor, e.object_type, e.object_id, e.payload) for e in events()] == [
        (
            "cli:ops",
            "trading.killswitch",
            "1",
            {"from": "active", "to": "halted", "reason": "exchange incident", "tripwire": ""},
        ),
        (
            "cli:ops",
            "trading.killswitch",
            "1",
            {"from": "halted", "to": "reducing", "reason": "calmer now", "tripwire": ""},
        ),
        (
            "cli:ops",
            "trading.killswitch",
            "1",
            {"from": "reducing", "to": "active", "reason": "all clear", "tripwire": ""},
        ),
    ]
    assert audit_chain_verify().intact


@pytest.mark.parametrize("reason", ["", "   ", "x" * 1001])
def test_engage_and_release_need_a_reason(reason):
    killswitch_engage(state=HALTED, reason="first", actor="cli:ops")
    before = KillSwitch.objects.values().get()
    with pytest.raises(KillSwitchError, match="reason"):
        killswitch_engage(state=REDUCING, reason=reason, actor="cli:ops")
    with pytest.raises(KillSwitchError, match="reason"):
        killswitch_release(reason=reason, actor="cli:ops")
    assert KillSwitch.objects.values().get() == before
    assert len(events()) == 1


def test_engage_refuses_active_and_anything_that_is_not_a_state():
    with pytest.raises(KillSwitchError, match="use release"):
        killswitch_engage(state=ACTIVE, reason="x", actor="cli:ops")
    with pytest.raises(KillSwitchError, match="state must be one of"):
        killswitch_engage(state="halted", reason="x", actor="cli:ops")  # type: ignore[arg-type]
    assert not KillSwitch.objects.exists()
    assert events() == []


def test_a_user_is_recorded_as_user_name(django_user_model):
    user = django_user_model.objects.create_user("alice")
    killswitch_engage(state=HALTED, reason="x", actor=user)
    assert killswitch_view().changed_by == "user:alice"
    assert events()[0].actor == "user:alice"


def test_the_state_survives_a_restart():
    killswitch_engage(state=REDUCING, reason="before the restart", actor="cli:ops")
    # A restarted process has nothing but the database: the row is the state.
    stored = KillSwitch.objects.get(pk=1)
    view = killswitch_view()
    assert (view.state, view.reason, view.since, view.changed_by) == (
        REDUCING,
        "before the restart",
        stored.since,
        "cli:ops",
    )
    assert killswitch_state() is REDUCING


# Tripped by the tripwires.


def test_a_trip_makes_it_stricter_and_says_which_tripwire():
    assert killswitch_trip([]) is None
    row = killswitch_trip([drawdown()])
    assert row is not None
    assert (row.state, row.tripwire, row.reason, row.changed_by) == (
        "reducing",
        DRAWDOWN,
        "drawdown 12% (limit 10%)",
        "system:killswitch",
    )
    row = killswitch_trip([error_burst()])
    assert row is not None
    assert (row.state, row.tripwire) == ("halted", ERROR_BURST)
    assert [(e.actor, e.payload["from"], e.payload["to"], e.payload["tripwire"]) for e in events()] == [
        ("system:killswitch", "active", "reducing", DRAWDOWN),
        ("system:killswitch", "reducing", "halted", ERROR_BURST),
    ]


@pytest.mark.parametrize(
    ("engaged", "trip"),
    [(HALTED, drawdown()), (HALTED, error_burst()), (REDUCING, drawdown())],
)
def test_a_trip_never_loosens_the_switch_or_repeats_its_state(engaged, trip):
    killswitch_engage(state=engaged, reason="by hand", actor="cli:ops")
    before = KillSwitch.objects.values().get()
    assert killswitch_trip([trip]) is None
    assert KillSwitch.objects.values().get() == before
    assert len(events()) == 1


def test_the_strictest_trip_wins_and_every_reason_is_kept():
    row = killswitch_trip([drawdown("dd"), Trip(LATENCY, HALTED, "slow"), error_burst("errors")])
    assert row is not None
    assert (row.state, row.tripwire, row.reason) == ("halted", LATENCY, "dd; slow; errors")
    assert events()[0].payload == {
        "from": "active",
        "to": "halted",
        "reason": "dd; slow; errors",
        "tripwire": LATENCY,
    }


def test_only_a_person_releases_a_trip_and_then_it_can_trip_again():
    killswitch_trip([error_burst()])
    killswitch_release(reason="looked at the errors", actor="cli:ops")
    view = killswitch_view()
    assert (view.state, view.tripwire, view.changed_by) == (ACTIVE, "", "cli:ops")
    assert killswitch_trip([drawdown()]) is not None
    assert killswitch_view().state is REDUCING


def test_trips_are_counted_by_tripwire(django_capture_on_commit_callbacks):
    def trips() -> float:
        return REGISTRY.get_sample_value("oasis_killswitch_trips_total", {"tripwire": DRAWDOWN}) or 0.0

    before = trips()
    with django_capture_on_commit_callbacks(execute=True):
        killswitch_trip([drawdown()])
        killswitch_trip([drawdown()])  # already reducing: not a trip
    assert trips() == before + 1


def test_a_trip_racing_a_stricter_engage_does_not_loosen_it(monkeypatch):
    from trading import killswitch as module

    killswitch_engage(state=HALTED, reason="operator", actor="cli:ops")
    # What the tripwire check saw just before the operator's engage committed.
    stale = module.KillSwitchView(ACTIVE, "", "", None, "")
    monkeypatch.setattr(module, "killswitch_view", lambda: stale)
    killswitch_trip([drawdown()])
    assert KillSwitch.objects.get().state == "halted"


# After commit: the broadcast and the metric.


def _receive(layer: Any, channel: str, timeout: float) -> dict[str, Any]:
    async def receive() -> dict[str, Any]:
        message: dict[str, Any] = await asyncio.wait_for(layer.receive(channel), timeout)
        return message

    return async_to_sync(receive)()


@pytest.fixture
def listener():
    """A channel in the "trading" group; yields a function returning the next kill switch event
    (other trading events on the group are skipped), or None when none comes."""
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(BROADCAST_GROUP, channel)

    def next_update(timeout: float = 3.0) -> dict[str, Any] | None:
        while True:
            try:
                message = _receive(layer, channel, timeout)
            except TimeoutError:
                return None
            if message.get("type") == "killswitch.update":
                return message

    yield next_update
    async_to_sync(layer.group_discard)(BROADCAST_GROUP, channel)


def test_each_change_is_broadcast_after_commit(listener, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        row = killswitch_engage(state=HALTED, reason="incident", actor="cli:ops")
    message = listener()
    assert message is not None
    message = {key: value for key, value in message.items() if not key.startswith("__")}
    assert message == {
        "type": "killswitch.update",
        "state": "halted",
        "previous": "active",
        "reason": "incident",
        "tripwire": "",
        "since": row.since.isoformat(),
        "by": "cli:ops",
    }
    assert REGISTRY.get_sample_value("oasis_killswitch_state", {"state": "halted"}) == 1
    assert REGISTRY.get_sample_value("oasis_killswitch_state", {"state": "active"}) == 0

    with django_capture_on_commit_callbacks(execute=True):
        killswitch_trip([error_burst()])  # already halted: nothing
        killswitch_release(reason="resolved", actor="cli:ops")
    message = listener()
    assert message is not None
    assert (message["state"], message["previous"], message["by"]) == ("active", "halted", "cli:ops")
    assert listener(timeout=0.3) is None  # one change, one event
    assert REGISTRY.get_sample_value("oasis_killswitch_state", {"state": "active"}) == 1


def test_nothing_is_broadcast_before_commit(listener, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        killswitch_engage(state=REDUCING, reason="held back", actor="cli:ops")
    assert callbacks  # queued for the commit, which a test's transaction never reaches
    assert listener(timeout=0.3) is None


def test_a_refused_change_broadcasts_nothing(listener, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks, pytest.raises(KillSwitchError):
        killswitch_release(reason="", actor="cli:ops")
    assert callbacks == []
    assert listener(timeout=0.3) is None


# The command.


def run(*args: str) -> str:
    from io import StringIO

    out = StringIO()
    call_command("killswitch", *args, stdout=out)
    return out.getvalue()


def test_status_before_any_change():
    assert run("status") == "kill switch: ACTIVE (never changed)\n"
    assert not KillSwitch.objects.exists()


def test_engage_release_and_status_from_the_command():
    output = run("engage", "--state", "reducing", "--reason", "x", "--by", "bob")
    since = KillSwitch.objects.get().since.isoformat()
    assert output == f"kill switch: REDUCING since {since}\nreason: x\nby: cli:bob\n"
    assert killswitch_view().state is REDUCING
    assert events()[0].actor == "cli:bob"
    assert events()[0].payload == {"from": "active", "to": "reducing", "reason": "x", "tripwire": ""}

    assert run("status") == output  # status reads the same row

    output = run("release", "--reason", "done", "--by", "bob")
    assert output.startswith("kill switch: ACTIVE since ")
    assert "reason: done\nby: cli:bob\n" in output
    assert killswitch_view().state is ACTIVE


def test_engage_defaults_to_halted_and_to_the_os_user(monkeypatch):
    monkeypatch.setattr("getpass.getuser", lambda: "oncall")
    run("engage", "--reason", "x")
    view = killswitch_view()
    assert (view.state, view.changed_by) == (HALTED, "cli:oncall")


def test_status_shows_the_tripwire():
    killswitch_trip([drawdown("dd 12%")])
    output = run("status")
    assert output.startswith("kill switch: REDUCING since ")
    assert "reason: dd 12%\nby: system:killswitch (tripwire drawdown)\n" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("engage",), "a reason is required"),
        (("engage", "--reason", "  "), "a reason is required"),
        (("release",), "a reason is required"),
        (("engage", "--state", "active", "--reason", "x"), "invalid choice"),
        (("pause", "--reason", "x"), "invalid choice"),
    ],
)
def test_the_command_refuses_bad_input(args, message):
    with pytest.raises(CommandError, match=message):
        run(*args)
    assert not KillSwitch.objects.exists()
    assert events() == []
