"""Compiled rules: small predicate objects evaluated against one message.

Each syntax node becomes one ``__slots__`` object whose ``test(context)`` returns a bool
and never raises for any message: a missing header, a void value or a value of another
type simply makes the condition false. Literals are classified at compile time (number,
string or boolean comparison; ``in`` lists become hash sets per type), so evaluation does
no parsing beyond splitting a string when ``~`` needs its words.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from exchanges.base import Routable
from exchanges.properties import read_property
from exchanges.rulelang.syntax import (
    HEADERS,
    ROUTING_KEY,
    And,
    Compare,
    Exists,
    Expr,
    Field,
    Glob,
    In,
    Not,
)
from exchanges.values import epoch_seconds
from exchanges.words import match_words, split_words

_EMPTY: Mapping[str, object] = {}

OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt,
    "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}

Number = int | float | Decimal


class Context:
    """One message being routed; caches what several rules may ask for."""

    __slots__ = ("_words", "loaded_headers", "message")

    def __init__(self, message: Routable) -> None:
        self.message = message
        # Read on first use: a message's headers may be decoded lazily by the server, and
        # rules on the routing key alone never need them.
        self.loaded_headers: Mapping[str, object] | None = None
        self._words: tuple[str, ...] | None = None

    @property
    def headers(self) -> Mapping[str, object]:
        headers = self.loaded_headers
        if headers is None:
            headers = self.loaded_headers = self.message.headers or _EMPTY
        return headers

    @property
    def words(self) -> tuple[str, ...]:
        words = self._words
        if words is None:
            words = self._words = split_words(self.message.routing_key)
        return words


def as_number(value: object) -> Number | None:
    """Numbers are int, float, Decimal and timestamps (epoch seconds); never booleans."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, Decimal):
        return None if value.is_nan() else value  # NaN decimals raise on ordering
    if isinstance(value, datetime):
        return epoch_seconds(value)
    return None


def as_string(value: object) -> str | None:
    """Strings are str, and bytes that are valid UTF-8."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def value_key(value: object) -> tuple[str, object] | None:
    """A hashable key under which a header value equals a literal exactly when the
    predicates below say so (``5``, ``5.0`` and ``Decimal(5)`` share a key; ``True`` and
    ``1`` do not). Used to index rules by the header values they require."""
    if isinstance(value, bool):
        return ("b", value)
    number = as_number(value)
    if number is not None:
        return ("n", number)
    string = as_string(value)
    if string is not None:
        return ("s", string)
    return None


# -- operands --------------------------------------------------------------------------


class RoutingKeyOperand:
    __slots__ = ()

    def get(self, context: Context) -> object:
        return context.message.routing_key

    def present(self, context: Context) -> bool:
        return True


class HeaderOperand:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def get(self, context: Context) -> object:
        headers = context.loaded_headers  # the attribute first: this is the hottest path
        if headers is None:
            headers = context.headers
        return headers.get(self.name)

    def present(self, context: Context) -> bool:
        return self.name in context.headers  # a void value still counts as present


class PropertyOperand:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def get(self, context: Context) -> object:
        return read_property(context.message, self.name)

    def present(self, context: Context) -> bool:
        return self.get(context) is not None


Operand = RoutingKeyOperand | HeaderOperand | PropertyOperand


def compile_operand(field: Field) -> Operand:
    if field.source == ROUTING_KEY:
        return RoutingKeyOperand()
    if field.source == HEADERS:
        return HeaderOperand(field.name)
    return PropertyOperand(field.name)


# -- predicates ------------------------------------------------------------------------


class NumberCompare:
    __slots__ = ("compare", "operand", "value")

    def __init__(self, operand: Operand, op: str, value: int | float) -> None:
        self.operand = operand
        self.compare = OPERATORS[op]
        self.value = value

    def test(self, context: Context) -> bool:
        value = self.operand.get(context)
        kind = type(value)
        if kind is int or kind is float:  # the common case, without as_number's checks
            return self.compare(value, self.value)
        number = as_number(value)
        return number is not None and self.compare(number, self.value)


class StringCompare:
    __slots__ = ("compare", "operand", "value")

    def __init__(self, operand: Operand, op: str, value: str) -> None:
        self.operand = operand
        self.compare = OPERATORS[op]
        self.value = value

    def test(self, context: Context) -> bool:
        value = self.operand.get(context)
        if type(value) is str:
            return self.compare(value, self.value)
        string = as_string(value)
        return string is not None and self.compare(string, self.value)


class BoolCompare:
    __slots__ = ("expected", "operand")

    def __init__(self, operand: Operand, op: str, value: bool) -> None:
        self.operand = operand
        self.expected = value if op == "==" else not value

    def test(self, context: Context) -> bool:
        value = self.operand.get(context)
        return isinstance(value, bool) and value is self.expected


class InSet:
    __slots__ = ("booleans", "numbers", "operand", "strings")

    def __init__(self, operand: Operand, values: Sequence[object]) -> None:
        self.operand = operand
        self.booleans = frozenset(v for v in values if isinstance(v, bool))
        # int and float hash alike when equal (and so do Decimals), so 5 matches 5.0.
        self.numbers = frozenset(v for v in values if isinstance(v, int | float)
                                 and not isinstance(v, bool))
        self.strings = frozenset(v for v in values if isinstance(v, str))

    def test(self, context: Context) -> bool:
        value = self.operand.get(context)
        if isinstance(value, bool):
            return value in self.booleans
        number = as_number(value)
        if number is not None:
            return number in self.numbers
        string = as_string(value)
        return string is not None and string in self.strings


class GlobMatch:
    """``~``: topic-pattern match on the words of a string (``*`` one word, ``#`` any)."""

    __slots__ = ("on_routing_key", "operand", "pattern")

    def __init__(self, operand: Operand, pattern: str) -> None:
        self.operand = operand
        self.pattern = split_words(pattern)
        # The routing key's words are split once per message and shared by every rule.
        self.on_routing_key = isinstance(operand, RoutingKeyOperand)

    def test(self, context: Context) -> bool:
        if self.on_routing_key:
            return match_words(self.pattern, context.words)
        string = as_string(self.operand.get(context))
        return string is not None and match_words(self.pattern, split_words(string))


class Present:
    __slots__ = ("operand",)

    def __init__(self, operand: Operand) -> None:
        self.operand = operand

    def test(self, context: Context) -> bool:
        return self.operand.present(context)


class Negation:
    __slots__ = ("operand",)

    def __init__(self, operand: Predicate) -> None:
        self.operand = operand

    def test(self, context: Context) -> bool:
        return not self.operand.test(context)


class AllOf:
    __slots__ = ("operands",)

    def __init__(self, operands: Sequence[Predicate]) -> None:
        self.operands = tuple(operands)

    def test(self, context: Context) -> bool:
        # A plain loop: all() over a generator costs a frame per rule on the hot path.
        for operand in self.operands:  # noqa: SIM110
            if not operand.test(context):
                return False
        return True


class AnyOf:
    __slots__ = ("operands",)

    def __init__(self, operands: Sequence[Predicate]) -> None:
        self.operands = tuple(operands)

    def test(self, context: Context) -> bool:
        for operand in self.operands:  # noqa: SIM110 - see AllOf.test
            if operand.test(context):
                return True
        return False


Predicate = (NumberCompare | StringCompare | BoolCompare | InSet | GlobMatch | Present
             | Negation | AllOf | AnyOf)


def compile_expr(expr: Expr) -> Predicate:
    """The predicate for a syntax tree."""
    if isinstance(expr, Compare):
        operand = compile_operand(expr.field)
        value = expr.value
        if isinstance(value, bool):
            return BoolCompare(operand, expr.op, value)
        if isinstance(value, str):
            return StringCompare(operand, expr.op, value)
        return NumberCompare(operand, expr.op, value)
    if isinstance(expr, In):
        return InSet(compile_operand(expr.field), expr.values)
    if isinstance(expr, Glob):
        return GlobMatch(compile_operand(expr.field), expr.pattern)
    if isinstance(expr, Exists):
        return Present(compile_operand(expr.field))
    if isinstance(expr, Not):
        return Negation(compile_expr(expr.operand))
    if isinstance(expr, And):
        return AllOf([compile_expr(operand) for operand in expr.operands])
    return AnyOf([compile_expr(operand) for operand in expr.operands])
