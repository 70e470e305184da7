"""Reading a request's input through its input serializer: query parameters for reads, the JSON
body for writes. Invalid input raises the serializer's ValidationError (a 400 naming each field)."""

from __future__ import annotations

from typing import Any, TypeVar

from rest_framework import serializers
from rest_framework.request import Request

SerializerT = TypeVar("SerializerT", bound=serializers.Serializer)  # type: ignore[type-arg]


def query_input(request: Request, serializer_class: type[SerializerT]) -> SerializerT:
    serializer = serializer_class(data=request.query_params)
    serializer.is_valid(raise_exception=True)
    return serializer


def body_input(request: Request, serializer_class: type[SerializerT]) -> SerializerT:
    data: Any = request.data
    if not isinstance(data, dict):
        raise serializers.ValidationError({"body": ["must be a JSON object"]})
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer
