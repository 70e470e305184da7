"""Who may use the REST API, and who an API request acts as.

The `api_auth_required` flag is read by `oasis_site.access.api_auth_required` (the one place,
shared with the live WebSockets). Off (the initial environment: bound to localhost, no gateway
auth), the API is open. On, reads need an authenticated user (a token, or an admin session) and
writes a staff user, as the admin asks of the same writes.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from oasis_site.access import api_auth_required

ANONYMOUS_ACTOR = "api:anonymous"


class ApiAccess(BasePermission):
    message = "authentication required: send 'Authorization: Token <key>' (api_auth_required is on)"

    def has_permission(self, request: Request, view: Any) -> bool:
        if not api_auth_required():
            return True
        user = request.user
        if user is None or not user.is_authenticated:
            return False
        if request.method in SAFE_METHODS:
            return True
        self.message = "writes through the API need a staff user (api_auth_required is on)"
        return bool(getattr(user, "is_staff", False))


def api_actor(request: Request) -> str | AbstractBaseUser:
    """The actor an API write is audited as: the user, or `api:anonymous` while the API is open."""
    user = request.user
    if user is not None and user.is_authenticated and isinstance(user, AbstractBaseUser):
        return user
    return ANONYMOUS_ACTOR
