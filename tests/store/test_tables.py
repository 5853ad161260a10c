"""Argument tables round-trip through the store's encoding with their AMQP types."""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from pamqp import decode as pamqp_decode
from pamqp import encode as pamqp_encode

from amqpd.store.tables import decode_table, encode_table
from tests.store import amqp_tables, typed

UTC = datetime.UTC

EVERY_TYPE: dict[str, object] = {
    "bool-true": True,
    "bool-false": False,
    "byte": -128,
    "short": -32768,
    "ushort": 65535,
    "int": -(2**31),
    "uint": 2**32 - 1,
    "long": -(2**63),
    "long-max": 2**63 - 1,
    "float": 0.1,  # needs a double: a 32-bit float would come back as 0.10000000149011612
    "float-neg": -1.5e300,
    "decimal": Decimal("3.14"),
    "decimal-neg": Decimal("-1.50"),
    "decimal-int": Decimal("7"),
    "string": "héllo ✓",
    "empty-string": "",
    "bytes": b"\x00\xff\x01",
    "bytearray": bytearray(b"raw"),
    "timestamp": datetime.datetime(2024, 2, 29, 12, 30, 5, tzinfo=UTC),
    "void": None,
    "table": {"nested": {"deeper": [1, "two", None, {"x": False}]}},
    "empty-table": {},
    "array": [1, -1, "s", 2.5, Decimal("0.5"), [], [[]], b"b"],
    "empty-array": [],
    "k" * 255: "the longest key AMQP allows",
}


def test_every_amqp_type_round_trips() -> None:
    decoded = decode_table(encode_table(EVERY_TYPE))
    assert typed(decoded) == typed(EVERY_TYPE)
    assert type(decoded["bool-true"]) is bool
    assert type(decoded["byte"]) is int
    assert decoded["float"] == 0.1
    assert isinstance(decoded["bytes"], bytearray)  # what pamqp gives for a wire byte array


def test_encoding_is_standard_amqp_that_pamqp_reads() -> None:
    data = encode_table(EVERY_TYPE)
    consumed, table = pamqp_decode.field_table(data)
    assert consumed == len(data)
    assert typed(table) == typed(EVERY_TYPE)


def test_tables_pamqp_encodes_exactly_encode_the_same() -> None:
    # Where pamqp's own encoder is lossless we produce its bytes: sorted keys, narrowest int.
    table: dict[str, Any] = {
        "b": 1,
        "a": "x",
        "c": {"z": True, "y": Decimal("1.2")},
        "d": [300, None],
    }
    assert encode_table(table) == pamqp_encode.field_table(table)


def test_equal_tables_encode_equally_whatever_the_key_order() -> None:
    assert encode_table({"a": 1, "b": {"x": 1, "y": 2}}) == encode_table(
        {"b": {"y": 2, "x": 1}, "a": 1}
    )


def test_empty_table() -> None:
    assert encode_table({}) == b"\x00\x00\x00\x00"
    assert decode_table(b"\x00\x00\x00\x00") == {}


@pytest.mark.parametrize(
    "bad",
    [{"x": object()}, {"x": 2**63}, {"x": -(2**63) - 1}, {"k" * 256: 1}, {"x": [set()]}],
)
def test_values_amqp_cannot_carry_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        encode_table(bad)


def test_damaged_bytes_are_a_value_error() -> None:
    data = encode_table({"a": "long enough"})
    with pytest.raises(ValueError):
        decode_table(data[:-3])
    with pytest.raises(ValueError):
        decode_table(data + b"junk")


@settings(max_examples=150, deadline=None)
@given(amqp_tables)
def test_any_table_round_trips(table: dict[str, object]) -> None:
    assert typed(decode_table(encode_table(table))) == typed(table)
