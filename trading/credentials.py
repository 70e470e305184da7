"""Exchange API credentials: where they come from, and how they are kept out of every message.

Credentials for exchange `<EXCHANGE>` (the upper-cased exchange name: SIM, BINANCE, BINANCEUS,
COINBASE) come from exactly one of two places:

- `OASIS_<EXCHANGE>_API_KEY` and `OASIS_<EXCHANGE>_API_SECRET`, plus `OASIS_<EXCHANGE>_API_PASSWORD`
  for exchanges that want a passphrase;
- `OASIS_<EXCHANGE>_SECRETS_FILE`: the path of a JSON file
  `{"api_key": "...", "api_secret": "...", "api_password": "..."}` (`api_password` optional) that
  only its owner may read (mode 600 or 400). JSON because some secrets span lines (Coinbase's
  EC private keys), which a `key=value` file cannot hold without an escaping convention of its own.

Nothing set: no credentials (None). Half set, both places set, or a bad file: ValueError naming the
variable, never the value. Like `oasis_site/environment.py`, this reads the mapping it is given,
not `os.environ`.
"""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

MASK = "***"
_SIGNATURE = re.compile(r"(signature=)[0-9A-Za-z%._~+/=-]+", re.IGNORECASE)
_BEARER = re.compile(r"(Bearer\s+)[0-9A-Za-z._~+/=-]+")
_FILE_KEYS = {"api_key", "api_secret", "api_password"}
# Lines of a multi-line secret shorter than this (PEM headers such as "-----END EC PRIVATE
# KEY-----") are public boilerplate; only the longer ones are key material worth masking alone.
_MIN_SECRET_PART = 12


@dataclass(frozen=True)
class ExchangeCredentials:
    api_key: str = field(repr=False)
    secret: str = field(repr=False)
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.api_key or not self.secret:
            raise ValueError("exchange credentials need both an API key and a secret")

    def __repr__(self) -> str:
        tail = self.api_key[-4:] if len(self.api_key) > 8 else ""
        password = ", password=***" if self.password else ""
        return f"ExchangeCredentials(api_key='…{tail}', secret=***{password})"

    __str__ = __repr__

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(value for value in (self.api_key, self.secret, self.password) if value)


def environment_prefix(exchange: str) -> str:
    """`binanceus` → `OASIS_BINANCEUS_`."""
    return "OASIS_" + re.sub(r"[^A-Z0-9]", "_", exchange.upper()) + "_"


def credentials_from_environment(environ: Mapping[str, str], exchange: str) -> ExchangeCredentials | None:
    """The credentials for `exchange` from `environ` (see the module docstring); None when none are
    set. An empty variable counts as unset."""
    prefix = environment_prefix(exchange)
    names = {part: f"{prefix}{part}" for part in ("API_KEY", "API_SECRET", "API_PASSWORD", "SECRETS_FILE")}
    values = {part: (environ.get(name) or "").strip() for part, name in names.items()}
    direct = [names[part] for part in ("API_KEY", "API_SECRET", "API_PASSWORD") if values[part]]
    if values["SECRETS_FILE"]:
        if direct:
            raise ValueError(
                f"{names['SECRETS_FILE']} is set and so is {', '.join(direct)}: "
                "give the credentials in one place only"
            )
        return _credentials_from_file(Path(values["SECRETS_FILE"]), names["SECRETS_FILE"])
    if not direct:
        return None
    for part in ("API_KEY", "API_SECRET"):
        if not values[part]:
            raise ValueError(
                f"{names[part]} is not set but {', '.join(direct)} is: set both "
                f"{names['API_KEY']} and {names['API_SECRET']}, or neither"
            )
    # Surrounding whitespace (say a newline from `$(cat file)`) is never part of a key or secret.
    return ExchangeCredentials(
        api_key=environ[names["API_KEY"]].strip(),
        secret=environ[names["API_SECRET"]].strip(),
        password=environ.get(names["API_PASSWORD"]) or None,
    )


def _credentials_from_file(path: Path, variable: str) -> ExchangeCredentials:
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise ValueError(f"{variable}: cannot read {path}: {error.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"{variable}: {path} is not a regular file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(
            f"{variable}: {path} is readable or writable by group or others "
            f"(mode {stat.S_IMODE(mode):03o}); make it private: chmod 600 {path}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{variable}: cannot read {path}: {type(error).__name__}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        # The position only: the message of a decode error quotes the document.
        raise ValueError(
            f"{variable}: {path} is not JSON (line {error.lineno}, column {error.colno}); expected "
            '{"api_key": "...", "api_secret": "..."}'
        ) from None
    if not isinstance(document, dict):
        raise ValueError(f'{variable}: {path} must hold a JSON object {{"api_key": ..., "api_secret": ...}}')
    unknown = sorted(set(document) - _FILE_KEYS)
    if unknown:
        raise ValueError(f"{variable}: {path} has unknown field(s) {unknown}; valid: {sorted(_FILE_KEYS)}")
    for name in ("api_key", "api_secret"):
        value = document.get(name)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{variable}: {path} needs a non-empty string field {name!r}")
    password = document.get("api_password")
    if password is not None and not isinstance(password, str):
        raise ValueError(f"{variable}: {path} field 'api_password' must be a string")
    return ExchangeCredentials(
        api_key=document["api_key"].strip(), secret=document["api_secret"].strip(), password=password or None
    )


class Redactor:
    """Masks credentials in arbitrary text: the key, the secret and the password (also URL-encoded,
    and each long line of a multi-line secret), any `signature=` query parameter and any bearer
    token. Every message that leaves a broker goes through one."""

    def __init__(self, credentials: ExchangeCredentials | Iterable[str] | None = None) -> None:
        values = credentials.secrets if isinstance(credentials, ExchangeCredentials) else (credentials or ())
        needles: set[str] = set()
        for value in values:
            if not value:
                continue
            needles.update({value, quote(value, safe=""), quote(value)})
            if "\n" in value or "\\n" in value:
                for part in re.split(r"\\n|\n", value):
                    if len(part.strip()) >= _MIN_SECRET_PART:
                        needles.add(part.strip())
        # Longest first, so that a secret containing another is masked whole.
        self._needles = sorted((n for n in needles if n), key=len, reverse=True)

    def __call__(self, text: object) -> str:
        result = str(text)
        for needle in self._needles:
            result = result.replace(needle, MASK)
        result = _SIGNATURE.sub(rf"\g<1>{MASK}", result)
        return _BEARER.sub(rf"\g<1>{MASK}", result)


def redact(text: object, credentials: ExchangeCredentials | None) -> str:
    return Redactor(credentials)(text)
