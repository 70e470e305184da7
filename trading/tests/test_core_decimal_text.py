"""Plain decimal text read as floats (`trading.core.decimal_text`): every number is the float
`float()` gives for its text, bit for bit, whatever its digits and places; each line's bounds are
where its text is; text that is not a table of plain decimals is refused, naming what is wrong."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trading.core.decimal_text import read_table

# What numeric_out writes for a price or volume as an exchange sends it: plain digits, up to 18
# places (SHIB-like prices), integers up to 10**22 (more than 15 digits goes the slow way).
decimals = st.decimals(min_value=0, max_value=Decimal(10) ** 22, allow_nan=False, allow_infinity=False)
plain = decimals.map(lambda value: format(value, "f"))
scaled = st.builds(
    lambda digits, places: format(Decimal(digits).scaleb(-places), "f"),
    st.integers(0, 10**20),
    st.integers(0, 20),
)
number = st.one_of(
    plain,
    scaled,
    st.sampled_from(["0", "0.00000000", "27450.12000000", "1e-8"]).map(
        lambda text: format(Decimal(text), "f")
    ),
)


def table_text(rows: list[list[str]]) -> bytes:
    return "\n".join("\t".join(row) for row in rows).encode()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(number, min_size=5, max_size=5), min_size=1, max_size=40))
def test_each_number_is_float_of_its_text(rows: list[list[str]]) -> None:
    text = table_text(rows)
    table = read_table(text, 5)
    expected = np.array([[float(v) for v in row] for row in rows]).T
    assert table.values.shape == (5, len(rows))
    assert table.values.tobytes() == expected.tobytes()  # bit for bit, not close
    for row, (start, end) in enumerate(zip(table.starts.tolist(), table.ends.tolist(), strict=True)):
        assert text[start:end].decode() == "\t".join(rows[row])


def test_long_numbers_and_many_places() -> None:
    rows = [
        ["12345678901234567.5", "0.000000000000000001", "9007199254740993", "1", "0.1"],
        ["1234567890123456789012", "0.30000000000000004", "43251.23", "0", "100000000000000000000"],
    ]
    table = read_table(table_text(rows), 5)
    expected = np.array([[float(v) for v in row] for row in rows]).T
    assert table.values.tobytes() == expected.tobytes()


def test_real_candles_read_as_float_reads_them() -> None:
    rows = [
        ["23140.48000000", "23150.77000000", "23128.52000000", "23142.31000000", "2.13177700"],
        ["0.00001234", "0.00001240", "0.00001200", "0.00001236", "912345678.00"],
    ]
    table = read_table(table_text(rows), 5)
    assert table.values[3].tolist() == [23142.31, 0.00001236]
    assert table.values[4].tolist() == [2.131777, 912345678.0]


def test_negative_numbers_read_too() -> None:
    rows = [["-1.5", "2", "-0.25", "3.125", "4"], ["5", "-6", "7.5", "8", "9"]]
    text = table_text(rows)
    table = read_table(text, 5)
    assert table.values.T.tolist() == [[float(v) for v in row] for row in rows]
    assert [text[s:e] for s, e in zip(table.starts, table.ends, strict=True)] == text.split(b"\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"1\t2\t3\t4", "read 4 numbers, not lines of 5"),
        (b"1\t2\t3\t4\t5\n6\t7\t8\t9\t10\t11\t12\t13\t14", "not lines of 5"),
        (b"1\t2\t3\t4\n5\t6\t7\t8\t9\t10", "tab-separated"),
        (b"1\t2.5.1\t3\t4\t5", "two points"),
        (b"1\t2\tx\t4\t5", "not a decimal number"),
    ],
)
def test_what_is_not_a_table_is_refused(text: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_table(text, 5)
