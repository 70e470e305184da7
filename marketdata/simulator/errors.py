"""Binance's error answers: HTTP status plus `{"code": <negative int>, "msg": "…"}`."""

from __future__ import annotations

import re
from collections.abc import Mapping

DECIMAL_RANGE = r"^([0-9]{1,20})(\.[0-9]{1,20})?$"
INTEGER_RANGE = "^[0-9]{1,20}$"


class BinanceError(Exception):
    def __init__(self, code: int, msg: str, *, status: int = 400) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status


def mandatory(name: str) -> BinanceError:
    return BinanceError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")


def illegal_characters(name: str, legal_range: str) -> BinanceError:
    return BinanceError(
        -1100, f"Illegal characters found in parameter '{name}'; legal range is '{legal_range}'."
    )


def invalid_symbol() -> BinanceError:
    return BinanceError(-1121, "Invalid symbol.")


def invalid_interval() -> BinanceError:
    return BinanceError(-1120, "Invalid interval.")


def invalid_limit() -> BinanceError:
    return BinanceError(-1130, "Data sent for parameter 'limit' is not valid.")


def filter_failure(name: str) -> BinanceError:
    return BinanceError(-1013, f"Filter failure: {name}")


_INTEGER = re.compile(INTEGER_RANGE)


def integer_param(params: Mapping[str, str], name: str) -> int | None:
    """An integer request parameter: None when absent or empty, Binance's -1100 when not digits."""
    value = params.get(name)
    if value is None or value == "":
        return None
    if not _INTEGER.match(value):
        raise illegal_characters(name, INTEGER_RANGE)
    return int(value)
