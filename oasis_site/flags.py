"""Feature-flag names (django-waffle). Services check flags by these constants only.

Every flag here is created, off, by a migration (``oasis_site/migrations``), so operators
find it in the admin before anyone needs it.
"""

# Off: every order is a dry-run order, whatever else is configured.
LIVE_TRADING = "live_trading"
# Off by default: the initial environment binds to localhost and has no gateway auth.
API_AUTH_REQUIRED = "api_auth_required"

ALL_FLAGS: dict[str, str] = {
    LIVE_TRADING: "Send real orders through the live broker. Off: every order is dry-run.",
    API_AUTH_REQUIRED: "Require a logged-in user for the REST API and WebSockets.",
}


def rule_flag(rule_id: int) -> str:
    """The flag of one rule (created off with the rule): on for everyone, off, or, with
    "everyone" unset, on for a stable share of symbols given by the flag's percent."""
    return f"rule_{rule_id}"
