"""The audit hash chain: payload normalisation and event hashing (no Django).

The hash must come out the same when an event is written and when it is read back years
later from PostgreSQL (jsonb) or SQLite (text). jsonb does not keep a payload's text: it
reorders keys and prints numbers its own way (the float 1e16 comes back as the integer
10000000000000000). So the hash is taken over a canonical form in which keys are sorted
and every number is written as its normalised decimal value, which both sides agree on.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

GENESIS_HASH = "0" * 64

JSONValue = None | bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"]


class PayloadError(ValueError):
    """The payload cannot be stored as JSON exactly; the message names where and why."""


def normalise_payload(payload: Any) -> dict[str, JSONValue]:
    """Check that `payload` is a JSON object that survives storage, and return a copy.

    Refused, naming the path: non-dict payloads, non-string keys (JSON would turn them into
    strings silently), NaN and infinities, NUL characters and lone surrogates (PostgreSQL
    rejects them) and any value that is not JSON (Decimal, datetime, objects: convert them first, e.g.
    Decimal to str, so no precision is lost by accident).
    """
    if not isinstance(payload, dict):
        raise PayloadError(f"payload must be a JSON object (dict), got {type(payload).__name__}")
    return _normalise(payload, "payload")  # type: ignore[return-value]


def _normalise(value: Any, path: str) -> JSONValue:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PayloadError(f"{path} is {value!r}: JSON has no NaN or infinity")
        return value
    if isinstance(value, str):
        _check_text(value, path)
        return value
    if isinstance(value, dict):
        result: dict[str, JSONValue] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise PayloadError(
                    f"{path} has a key {key!r} of type {type(key).__name__}: keys must be strings"
                )
            _check_text(key, f"{path} key {key!r}")
            result[key] = _normalise(item, f"{path}.{key}")
        return result
    if isinstance(value, list | tuple):
        return [_normalise(item, f"{path}[{index}]") for index, item in enumerate(value)]
    raise PayloadError(
        f"{path} is of type {type(value).__name__}, which is not JSON-serialisable "
        f"(convert it first: Decimal and datetime to str)"
    )


def _check_text(text: str, path: str) -> None:
    if "\x00" in text:
        raise PayloadError(f"{path} contains a NUL character, which cannot be stored")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadError(f"{path} is not valid Unicode (it holds a lone surrogate)") from None


def _canonical(value: JSONValue) -> Any:
    """Tag strings and numbers so that no string can pass for a number, and write every
    number as its normalised decimal value: 1, 1.0 and 1e0 are one value, and jsonb may
    hand back any of them."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        return "s:" + value
    if isinstance(value, int | float):
        number = Decimal(repr(value)).normalize()
        return "n:" + ("0" if number.is_zero() else format(number, "E"))
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    return {key: _canonical(item) for key, item in value.items()}


@dataclass(frozen=True)
class EventContent:
    seq: int
    created_at: datetime
    actor: str
    action: str
    object_type: str
    object_id: str
    payload: dict[str, JSONValue]
    prev_hash: str


def event_hash(content: EventContent) -> str:
    """SHA-256 over the canonical JSON of every stored field but the hash itself."""
    created = content.created_at.astimezone(UTC).isoformat(timespec="microseconds")
    document = {
        "seq": content.seq,
        "created_at": created,
        "actor": content.actor,
        "action": content.action,
        "object_type": content.object_type,
        "object_id": content.object_id,
        "payload": _canonical(content.payload),
        "prev_hash": content.prev_hash,
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
