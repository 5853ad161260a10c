"""The rule syntax tree and its canonical printer.

The parser produces these nodes; :func:`to_text` prints them back in a canonical form
(single-quoted strings, one space around operators, parentheses only where needed), which
the ``x-rules`` exchange uses as the key that lets equivalent rules share one compiled
predicate. ``parse(to_text(tree)) == tree`` holds for every tree the parser can produce.
"""

from __future__ import annotations

from dataclasses import dataclass

from mypy_extensions import mypyc_attr

from exchanges.rulelang.lexer import is_name

Literal = str | int | float | bool

ROUTING_KEY, HEADERS, PROPERTIES = "routing_key", "headers", "properties"


@mypyc_attr(native_class=False)  # mypyc: a dataclass with slots=True stays a Python class
@dataclass(frozen=True, slots=True)
class Field:
    """``routing_key`` (name ""), ``headers.NAME`` or ``properties.NAME``."""

    source: str
    name: str = ""


@mypyc_attr(native_class=False)  # mypyc: a dataclass with slots=True stays a Python class
@dataclass(frozen=True, slots=True)
class Compare:
    field: Field
    op: str  # == != < <= > >=
    value: Literal


@mypyc_attr(native_class=False)  # mypyc: a dataclass with slots=True stays a Python class
@dataclass(frozen=True, slots=True)
class In:
    field: Field
    values: tuple[Literal, ...]


@mypyc_attr(native_class=False)  # mypyc: a dataclass with slots=True stays a Python class
@dataclass(frozen=True, slots=True)
class Glob:
    field: Field
    pattern: str


@mypyc_attr(native_class=False)  # mypyc: a dataclass with slots=True stays a Python class
@dataclass(frozen=True, slots=True)
class Exists:
    field: Field


@mypyc_attr(native_class=False)  # mypyc: a dataclass with slots=True stays a Python class
@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr


@mypyc_attr(native_class=False)  # mypyc: a dataclass with slots=True stays a Python class
@dataclass(frozen=True, slots=True)
class And:
    operands: tuple[Expr, ...]  # two or more


@mypyc_attr(native_class=False)  # mypyc: a dataclass with slots=True stays a Python class
@dataclass(frozen=True, slots=True)
class Or:
    operands: tuple[Expr, ...]  # two or more


Expr = Compare | In | Glob | Exists | Not | And | Or


def to_text(expr: Expr) -> str:
    """Canonical source text for ``expr``."""
    if isinstance(expr, Compare):
        return f"{field_text(expr.field)} {expr.op} {literal_text(expr.value)}"
    if isinstance(expr, In):
        items = ", ".join(literal_text(value) for value in expr.values)
        return f"{field_text(expr.field)} in [{items}]"
    if isinstance(expr, Glob):
        return f"{field_text(expr.field)} ~ {literal_text(expr.pattern)}"
    if isinstance(expr, Exists):
        return f"exists {field_text(expr.field)}"
    if isinstance(expr, Not):
        inner = to_text(expr.operand)
        return f"not ({inner})" if isinstance(expr.operand, And | Or) else f"not {inner}"
    # 'and' binds tighter than 'or', so only these nestings need parentheses; a nested
    # node of the same kind is bracketed too so that the tree shape survives a round trip.
    if isinstance(expr, And):
        return " and ".join(
            f"({to_text(o)})" if isinstance(o, And | Or) else to_text(o) for o in expr.operands
        )
    return " or ".join(
        f"({to_text(o)})" if isinstance(o, Or) else to_text(o) for o in expr.operands
    )


def field_text(field: Field) -> str:
    if field.source == ROUTING_KEY:
        return ROUTING_KEY
    if is_name(field.name):
        return f"{field.source}.{field.name}"
    return f"{field.source}[{literal_text(field.name)}]"


def literal_text(value: Literal) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + "".join(_escape(char) for char in value) + "'"


def _escape(char: str) -> str:
    if char in "\\'":
        return "\\" + char
    if char.isprintable():
        return char
    special = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"}.get(char)
    if special:
        return special
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
