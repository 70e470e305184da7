"""CSV for list endpoints that offer it (`?format=csv` or `Accept: text/csv`): a header row,
then one row per result, values exactly as in the JSON. The next page is in the `Link` header."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from typing import Any

from rest_framework.renderers import BaseRenderer


class CsvRenderer(BaseRenderer):
    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Mapping[str, Any] | None = None,
    ) -> bytes:
        view = (renderer_context or {}).get("view")
        columns: list[str] = list(getattr(view, "csv_columns", ()))
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if isinstance(data, dict) and isinstance(data.get("results"), list):
            rows = data["results"]
        else:
            rows = list(data or [])
        if not columns and rows:
            columns = list(rows[0])
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(name) is None else row.get(name) for name in columns])
        return buffer.getvalue().encode(self.charset)
