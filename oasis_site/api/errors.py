"""The API's error bodies. Bad input is a 400 whose body names each parameter or field at fault:

    {"detail": "invalid input", "errors": {"start": ["must not be after end"]}}

Every other error keeps DRF's {"detail": "..."} (401, 403, 404, 405, 429 …).
"""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions, status
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView, exception_handler


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    response = exception_handler(exc, context)
    request = context.get("request")
    if response is not None and request is not None:
        # Errors are JSON whatever format the rows were asked in (a CSV of an error helps no one).
        request.accepted_renderer = JSONRenderer()
        request.accepted_media_type = JSONRenderer.media_type
    if response is not None and isinstance(exc, exceptions.ParseError):  # a body that is not JSON
        response.data = {"detail": "invalid input", "errors": {"body": [str(exc.detail)]}}
        return response
    if response is None or not isinstance(exc, exceptions.ValidationError):
        return response
    detail = exc.detail
    if isinstance(detail, dict):
        errors = {str(name): _messages(value) for name, value in detail.items()}
    else:
        errors = {"non_field_errors": _messages(detail)}
    response.data = {"detail": "invalid input", "errors": errors}
    response.status_code = status.HTTP_400_BAD_REQUEST
    return response


def _messages(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [f"{key}: {message}" for key, inner in value.items() for message in _messages(inner)]
    if isinstance(value, list):
        return [message for item in value for message in _messages(item)]
    return [str(value)]


def invalid(parameter: str, message: str) -> exceptions.ValidationError:
    """A 400 naming `parameter`."""
    return exceptions.ValidationError({parameter: [message]})


class ApiNotFound(APIView):
    """Every method of a path the API does not have: 404 {"detail": ...}."""

    schema = None  # not an operation of the schema

    def _not_found(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        raise exceptions.NotFound(f"no such endpoint: {request.path}")

    get = post = put = patch = delete = head = options = _not_found
