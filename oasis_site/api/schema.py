"""Pieces of the OpenAPI schema every app's API declares: the error body and which error
statuses an operation may answer."""

from __future__ import annotations

from rest_framework import serializers


class ErrorOutput(serializers.Serializer):  # type: ignore[type-arg]
    detail = serializers.CharField()
    errors = serializers.DictField(  # type: ignore[assignment]  # a field, not Serializer.errors
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="400 only: the messages of each parameter or field at fault, by its name.",
    )


# 401/403: api_auth_required is on and the request has no (staff) user; 429: throttled.
ACCESS = {401: ErrorOutput, 403: ErrorOutput, 429: ErrorOutput}
BAD_INPUT = {400: ErrorOutput, **ACCESS}
ERRORS = BAD_INPUT
NOT_FOUND = {404: ErrorOutput, **ACCESS}
BAD_INPUT_OR_NOT_FOUND = {400: ErrorOutput, 404: ErrorOutput, **ACCESS}
