"""Exact decimal storage for exchange prices and quantities.

Exchanges send decimal strings ("27450.12000000"); we must give them back exactly. PostgreSQL's
unconstrained NUMERIC keeps the digits and the scale, and psycopg hands it back as a Decimal
with the same exponent. SQLite has no decimal type (its NUMERIC affinity turns values into
floats), so there the value is stored as its fixed-point text. See
docs/decisions/0010-exact-decimal-storage.md.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from django.core.exceptions import ValidationError
from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.expressions import Func
from django.db.models.sql.compiler import SQLCompiler

_SetT = TypeVar("_SetT")
_GetT = TypeVar("_GetT")


class _ExactDecimal(models.Field[_SetT, _GetT]):
    """A Decimal stored without rounding or padding: what goes in comes out, digit for digit."""

    description = "Exact decimal (unconstrained NUMERIC on PostgreSQL, text on SQLite)"

    def db_type(self, connection: BaseDatabaseWrapper) -> str:
        return "numeric" if connection.vendor == "postgresql" else "text"

    def from_db_value(self, value: Any, expression: Any, connection: BaseDatabaseWrapper) -> Decimal | None:
        if value is None or isinstance(value, Decimal):
            return value
        return Decimal(str(value))

    def to_python(self, value: Any) -> Decimal | None:
        if value is None or isinstance(value, Decimal):
            return value
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            raise ValidationError(f"{value!r} is not a decimal number", code="invalid") from None
        if not number.is_finite():
            raise ValidationError(f"{value!r} is not a finite number", code="invalid")
        return number

    def get_db_prep_value(self, value: Any, connection: BaseDatabaseWrapper, prepared: bool = False) -> Any:
        number = self.to_python(value)
        if number is None or connection.vendor == "postgresql":
            return number
        return format(number, "f")


class ExactDecimalField(_ExactDecimal[Decimal | str | int, Decimal]):
    """A Decimal stored without rounding or padding: what goes in comes out, digit for digit."""


class NullableExactDecimalField(_ExactDecimal[Decimal | str | int | None, Decimal | None]):
    """An ExactDecimalField that may be NULL (declare it with null=True)."""


class AsNumber(Func):
    """An ExactDecimalField column as a number in SQL, for constraints and comparisons.

    On PostgreSQL the column already is NUMERIC. On SQLite the text is cast to REAL, which is
    exact enough to order prices in a CHECK constraint (the stored text stays exact).
    """

    arity = 1
    template = "%(expressions)s"
    output_field = models.FloatField()

    def as_sqlite(self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra_context: Any) -> Any:
        return super().as_sql(compiler, connection, template="CAST(%(expressions)s AS REAL)", **extra_context)
