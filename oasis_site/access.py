"""Who may use the API and the live WebSockets: the `api_auth_required` flag, read in one place.

Off (the initial environment, bound to localhost): open to anyone who can reach the port.
On (waffle flag set to "everyone: yes"): a logged-in user or an API token is required.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from waffle import get_waffle_flag_model

from oasis_site.flags import API_AUTH_REQUIRED


def api_auth_required() -> bool:
    flag = get_waffle_flag_model().get(API_AUTH_REQUIRED)  # waffle caches flags
    return flag.pk is not None and flag.everyone is True


api_auth_required_async = sync_to_async(api_auth_required, thread_sensitive=True)
