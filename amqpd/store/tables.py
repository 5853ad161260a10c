"""AMQP argument tables <-> the bytes the store keeps.

Tables are stored in the AMQP wire format and read back with ``pamqp.decode.field_table``,
so every AMQP type comes back as the type pamqp gives the broker when it decodes a client's
frame (Decimal, aware UTC datetime, bytearray, nested dict/list, bool, None, int, float).

The encoder is pamqp's ``encode_table_value`` for scalars, with our own handling of the cases
where ``pamqp.encode.field_table`` would not round-trip:

- ``float`` is written as a double (``d``); pamqp writes a 32-bit ``f`` and would turn 0.1
  into 0.10000000149011612 -- a headers-exchange binding on a double would stop matching
  after a restart;
- ``bytes`` as well as ``bytearray`` are byte arrays (``x``);
- keys up to 255 bytes are kept whole (pamqp truncates keys longer than 128 bytes).

Keys are sorted, as pamqp does, so equal tables always encode to the same bytes: the store
uses the encoding as part of a binding's identity.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

from pamqp import decode as pamqp_decode
from pamqp import encode as pamqp_encode

_LONG = struct.Struct(">I")
_DOUBLE = struct.Struct(">d")

EMPTY_TABLE = _LONG.pack(0)


def encode_table(table: Mapping[str, object]) -> bytes:
    """Encode a field table; raises TypeError naming the key of a value AMQP cannot carry."""
    parts = [_encode_key(key) + _encode_field(key, table[key]) for key in sorted(table)]
    return _with_length(b"".join(parts))


def decode_table(data: bytes) -> dict[str, object]:
    """Decode bytes written by :func:`encode_table`; raises ValueError when they are damaged."""
    consumed, table = pamqp_decode.field_table(data)
    if consumed != len(data):
        raise ValueError(f"field table of {consumed} bytes followed by {len(data) - consumed}")
    return dict(table)


def _encode_key(key: str) -> bytes:
    if not isinstance(key, str):
        raise TypeError(f"table key {key!r} is not a str")
    raw = key.encode("utf-8")
    if len(raw) > 255:
        raise TypeError(f"table key {key[:40]!r}... is longer than 255 bytes")
    return bytes((len(raw),)) + raw


def _encode_field(key: str, value: object) -> bytes:
    try:
        return _encode_value(value)
    except TypeError as exc:
        raise TypeError(f"{key}: {exc}") from None


def _encode_value(value: object) -> bytes:
    # bool first: it is an int subclass and must stay a boolean.
    if isinstance(value, bool):
        return b"t" + (b"\x01" if value else b"\x00")
    if isinstance(value, float):
        return b"d" + _DOUBLE.pack(value)
    if isinstance(value, Mapping):
        return b"F" + encode_table(value)
    if isinstance(value, list | tuple):
        return b"A" + _encode_array(value)
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        return b"x" + _LONG.pack(len(raw)) + raw
    encoded: bytes = pamqp_encode.encode_table_value(value)  # type: ignore[arg-type]
    return encoded


def _encode_array(values: Sequence[object]) -> bytes:
    return _with_length(b"".join(_encode_value(value) for value in values))


def _with_length(payload: bytes) -> bytes:
    if len(payload) > 0xFFFFFFFF:
        raise TypeError("field table larger than 4 GiB")
    return _LONG.pack(len(payload)) + payload
