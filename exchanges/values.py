"""AMQP field values as routing sees them.

Decoded tables (pamqp) hold ``str``, ``bytes``/``bytearray``, ``int``, ``float``, ``bool``,
``Decimal``, ``datetime``, ``dict``, ``list`` and ``None`` (void). Python's own equality is
wrong for routing in two ways: ``True == 1 == 1.0`` and dicts/lists are unhashable. This
module gives two hashable views of a value:

* :func:`identity` - exact and type-tagged, for binding identity. RabbitMQ compares binding
  arguments as typed terms, so ``{"a": 1}`` and ``{"a": True}`` are different bindings.
* :func:`match_key` - RabbitMQ's headers-exchange equality, which is Erlang ``==`` on the
  decoded values: integers and floats compare by numeric value (``1 == 1.0``), booleans
  are never numbers, ``longstr`` and byte arrays are both binaries (``"a" == b"a"``),
  timestamps are integer seconds (a timestamp equals the int with the same seconds),
  decimals compare by digits *and* scale (Erlang keeps ``{Scale, Value}``, so
  ``Decimal("1.0") != Decimal("1")`` and a decimal never equals an int), and nested
  tables/arrays compare exactly (Erlang keeps their field types).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Hashable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType

Identity = Hashable


def identity(value: object) -> Identity:
    """A hashable, type-exact stand-in for ``value``."""
    # bool before int: bool is a subclass of int but a different AMQP type.
    if value is None:
        return ("V",)
    if isinstance(value, bool):
        return ("t", value)
    if isinstance(value, int):
        return ("I", value)
    if isinstance(value, float):
        return ("f", value.hex())  # hex() makes NaN equal to itself and keeps -0.0 apart
    if isinstance(value, str):
        return ("S", value)
    if isinstance(value, bytes | bytearray | memoryview):
        return ("x", bytes(value))
    if isinstance(value, Decimal):
        return ("D", str(value))
    if isinstance(value, datetime):
        return ("T", value.isoformat())
    if isinstance(value, Mapping):
        return ("F", arguments_identity(value))
    if isinstance(value, list | tuple):
        return ("A", tuple(identity(item) for item in value))
    try:
        hash(value)
    except TypeError:
        return ("o", type(value).__qualname__, repr(value))
    return ("o", type(value).__qualname__, value)


def arguments_identity(arguments: Mapping[str, object]) -> Identity:
    """A hashable, type-exact, order-independent stand-in for an argument table."""
    return tuple(
        sorted(((str(key), identity(value)) for key, value in arguments.items()),
               key=lambda item: item[0])
    )


NO_ARGUMENTS: Mapping[str, object] = MappingProxyType({})


def readonly_arguments(arguments: Mapping[str, object]) -> Mapping[str, object]:
    """A read-only snapshot of an argument table, so later changes by the caller cannot
    change a stored binding (nested values are deep-copied, the top level is a proxy).
    Most bindings have no arguments; they all share one empty table."""
    if not arguments:
        return NO_ARGUMENTS
    return MappingProxyType({str(k): copy.deepcopy(v) for k, v in arguments.items()})


def epoch_seconds(value: datetime) -> int:
    """AMQP timestamps are whole seconds since the epoch; naive datetimes are taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return math.floor(value.timestamp())


VOID = ("void",)


def match_key(value: object) -> Hashable:
    """A hashable stand-in for ``value`` under RabbitMQ's header equality (see module doc).

    Two values match exactly when their match keys are equal; ``("num", 1)`` and
    ``("num", 1.0)`` are equal and hash alike, which gives ``1 == 1.0`` for free.
    """
    if value is None:
        return VOID
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("num", value)
    if isinstance(value, str):
        return ("bin", value.encode("utf-8", "surrogatepass"))
    if isinstance(value, bytes | bytearray | memoryview):
        return ("bin", bytes(value))
    if isinstance(value, datetime):
        return ("num", epoch_seconds(value))
    if isinstance(value, Decimal):
        return ("dec", value.as_tuple())
    if isinstance(value, Mapping):
        return ("table", arguments_identity(value))
    if isinstance(value, list | tuple):
        return ("array", identity(value))
    return ("other", identity(value))
