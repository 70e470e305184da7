"""The API's documentation page: every operation of the OpenAPI schema, its parameters and
responses, rendered on the server from the same schema `/api/v1/schema/` serves.

Swagger UI and Redoc load their scripts from a CDN unless drf-spectacular-sidecar is installed,
and it is not: this page loads nothing from anywhere (docs/decisions/0021-rest-api.md). Scripts
use the schema itself (`/api/v1/schema/?format=json`) with any OpenAPI tool.
"""

from __future__ import annotations

from typing import Any

from django.utils.html import format_html, format_html_join
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.utils import extend_schema
from rest_framework.renderers import StaticHTMLRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

_METHODS = ("get", "post", "put", "patch", "delete")


class ApiDocs(APIView):
    """The page; throttled and behind the auth flag like every other route of the API."""

    renderer_classes = [StaticHTMLRenderer]

    @extend_schema(exclude=True)
    def get(self, request: Request) -> Response:
        return Response(docs_page())


def docs_page() -> str:
    generator = SchemaGenerator()  # type: ignore[no-untyped-call]
    schema: dict[str, Any] = generator.get_schema(request=None, public=True)  # type: ignore[no-untyped-call]
    sections = []
    for path, operations in schema.get("paths", {}).items():
        for method in _METHODS:
            operation = operations.get(method)
            if operation is not None:
                sections.append(_operation(path, method, operation))
    info = schema.get("info", {})
    page = format_html(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
        "<style>body{{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}"
        "code{{background:#f3f3f3;padding:0 .2em}}section{{border-top:1px solid #ddd;padding:.5rem 0}}"
        "h2{{font-size:1.05rem;margin:.4rem 0}}table{{border-collapse:collapse}}"
        "td,th{{text-align:left;padding:.1rem .6rem .1rem 0;vertical-align:top}}</style></head><body>"
        "<h1>{title} {version}</h1><p>{description}</p>"
        "<p>The OpenAPI schema: <a href='schema/'>schema/</a> (YAML; "
        "<a href='schema/?format=json'>JSON</a>).</p>"
        "{sections}</body></html>",
        title=info.get("title", "API"),
        version=info.get("version", ""),
        description=info.get("description", ""),
        sections=format_html_join("", "{}", ((section,) for section in sections)),
    )
    return str(page)


def _operation(path: str, method: str, operation: dict[str, Any]) -> str:
    parameters = operation.get("parameters", [])
    rows = format_html_join(
        "",
        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}{}</td></tr>",
        (
            (
                parameter["name"],
                parameter.get("in", ""),
                "required" if parameter.get("required") else "",
                "" if parameter.get("schema", {}).get("enum") else parameter.get("description", ""),
                _choices(parameter),
            )
            for parameter in parameters
        ),
    )
    body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    body_ref = body.get("$ref", "").rsplit("/", 1)[-1]
    statuses = ", ".join(sorted(operation.get("responses", {})))
    return str(
        format_html(
            "<section id='{anchor}'><h2><code>{method} {path}</code></h2><p>{description}</p>"
            "{table}{body}<p>Responses: {statuses}</p>{form}</section>",
            anchor=operation.get("operationId", ""),
            method=method.upper(),
            path=path,
            description=operation.get("description", ""),
            table=format_html(
                "<table><tr><th>parameter</th><th>in</th><th></th><th></th></tr>{}</table>", rows
            )
            if parameters
            else "",
            body=format_html("<p>Body: JSON, <code>{}</code> in the schema.</p>", body_ref)
            if body_ref
            else "",
            statuses=statuses,
            form=_try_form(path, method, parameters),
        )
    )


def _choices(parameter: dict[str, Any]) -> str:
    values = parameter.get("schema", {}).get("enum")
    if not values:
        return ""
    return str(format_html("one of {}", ", ".join(str(value) for value in values)))


def _try_form(path: str, method: str, parameters: list[dict[str, Any]]) -> str:
    """A plain HTML form that sends the GET (no script): the browser shows the JSON answer.
    Left-empty inputs are not parameters (DRF skips empty optional query parameters)."""
    if method != "get" or any(parameter.get("in") == "path" for parameter in parameters):
        return ""
    inputs = format_html_join(
        "",
        "<label><code>{}</code> <input name='{}' placeholder='{}'></label> ",
        (
            (
                parameter["name"],
                parameter["name"],
                ", ".join(str(value) for value in parameter.get("schema", {}).get("enum", []))
                or parameter.get("schema", {}).get("example", ""),
            )
            for parameter in parameters
            if parameter.get("in") == "query"
        ),
    )
    return str(format_html("<form method='get' action='{}'>{}<button>Send</button></form>", path, inputs))
