"""Necessary conditions of rules, so the exchange can skip rules that cannot match.

A guard is something a message must have for the rule to possibly be true:

* ``RoutingKeyGuard(keys)`` - the routing key is one of ``keys``
  (from ``routing_key == 'k'`` or ``routing_key in [...]``);
* ``RoutingKeyPatternGuard(pattern)`` - the routing key matches a topic pattern
  (from ``routing_key ~ 'pattern'``; a pattern without wildcards becomes a
  ``RoutingKeyGuard``);
* ``HeaderValueGuard(name, keys)`` - header ``name`` has one of the values ``keys``
  (from ``headers.name == literal`` or ``headers.name in [...]``; keys are
  :func:`~exchanges.rulelang.predicates.value_key` keys);
* ``HeaderGuard(name)`` - the message carries header ``name`` (any condition on
  ``headers.name`` other than under ``not`` is false when the header is missing).

``and`` takes the most selective guard of its operands (value guards with the fewest
values first, a header value before a routing key, which many rules tend to share; then a
routing-key pattern; presence last), ``or`` keeps a routing-key guard only if every
branch has one, ``not`` has none. Guards are an index,
not semantics: the full rule is still evaluated on every candidate.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from mypy_extensions import mypyc_attr

from exchanges.rulelang.predicates import value_key
from exchanges.rulelang.syntax import (
    HEADERS,
    ROUTING_KEY,
    And,
    Compare,
    Exists,
    Expr,
    Glob,
    In,
    Literal,
    Not,
    Or,
)
from exchanges.words import is_wildcard, split_words


@mypyc_attr(native_class=False)  # mypyc: a dataclass with slots=True stays a Python class
@dataclass(frozen=True, slots=True)
class RoutingKeyGuard:
    keys: frozenset[str]


@mypyc_attr(native_class=False)  # mypyc: a dataclass with slots=True stays a Python class
@dataclass(frozen=True, slots=True)
class RoutingKeyPatternGuard:
    pattern: tuple[str, ...]  # split into words


@mypyc_attr(native_class=False)  # mypyc: a dataclass with slots=True stays a Python class
@dataclass(frozen=True, slots=True)
class HeaderValueGuard:
    name: str
    keys: frozenset[Hashable]


@mypyc_attr(native_class=False)  # mypyc: a dataclass with slots=True stays a Python class
@dataclass(frozen=True, slots=True)
class HeaderGuard:
    name: str


AnyGuard = RoutingKeyGuard | RoutingKeyPatternGuard | HeaderValueGuard | HeaderGuard
Guard = AnyGuard | None


def _values_guard(expr: Compare | In) -> tuple[Literal, ...] | None:
    """The literal values an equality test requires, if it is one."""
    if isinstance(expr, In):
        return expr.values
    return (expr.value,) if expr.op == "==" else None


def guard_of(expr: Expr) -> Guard:
    """The most useful necessary condition of ``expr`` that we can index on, if any."""
    if isinstance(expr, Compare | In | Glob | Exists):
        field = expr.field
        values = _values_guard(expr) if isinstance(expr, Compare | In) else None
        if field.source == HEADERS:
            if values is None:
                return HeaderGuard(field.name)
            return HeaderValueGuard(field.name, frozenset(
                key for key in map(value_key, values) if key is not None))
        if field.source == ROUTING_KEY and values is not None:
            return RoutingKeyGuard(frozenset(v for v in values if isinstance(v, str)))
        if field.source == ROUTING_KEY and isinstance(expr, Glob):
            pattern = split_words(expr.pattern)
            if is_wildcard(pattern):
                return RoutingKeyPatternGuard(pattern)
            return RoutingKeyGuard(frozenset((expr.pattern,)))
        return None
    if isinstance(expr, Not):
        return None
    if isinstance(expr, And):
        guards = [g for g in map(guard_of, expr.operands) if g is not None]
        return min(guards, key=_rank, default=None)
    assert isinstance(expr, Or)
    keys: set[str] = set()
    for operand in expr.operands:
        guard = guard_of(operand)
        if not isinstance(guard, RoutingKeyGuard):
            return None
        keys |= guard.keys
    return RoutingKeyGuard(frozenset(keys))


def _rank(guard: AnyGuard) -> tuple[int, int]:
    """Smaller is more selective; min() keeps the first of equals (rule order)."""
    if isinstance(guard, HeaderGuard):
        return (2, 0)
    if isinstance(guard, RoutingKeyPatternGuard):
        return (1, 0)
    if isinstance(guard, HeaderValueGuard):
        return (0, 2 * len(guard.keys))
    return (0, 2 * len(guard.keys) + 1)
