r"""The ``x-rule`` expression language (used by the ``x-rules`` exchange type).

Grammar (keywords are lowercase; whitespace is free)::

    rule       := or
    or         := and ("or" and)*
    and        := unary ("and" unary)*
    unary      := "not" unary | "(" or ")" | "exists" field | field test
    test       := ("==" | "!=" | "<" | "<=" | ">" | ">=") value
                | "in" "[" value ("," value)* "]"
                | "~" string
    field      := "routing_key" | "headers" "." NAME | "headers" "[" string "]"
                | "properties" "." PROPERTY
    value      := string | number | "true" | "false"
    string     := '...' | "..."   (escapes \\ \' \" \n \t \r \0 \uXXXX \UXXXXXXXX)
    number     := -?digits(.digits)?([eE][+-]?digits)?
    NAME       := [A-Za-z_][A-Za-z0-9_-]*

Semantics in brief (README "x-rules" has the full text):

* A condition on a missing or void header, or on a value of another type than the
  literal, is false - ``!=`` included (``not headers.x == 'a'`` is true when x is missing).
* Numbers: int, float, decimal and timestamp (epoch seconds) values compare numerically;
  booleans are not numbers. Strings: str, and bytes that are UTF-8; compared by code point.
* ``~`` matches a string against a topic pattern: words split on ``.``, ``*`` is one word,
  ``#`` is zero or more words.
* ``exists headers.x`` is true when the header is present, even with a void value.

Limits: 4096 characters, nesting depth 32, 256 conditions/operators, 256 values per list.
"""

from __future__ import annotations

from dataclasses import dataclass

from exchanges.rulelang.errors import RuleError
from exchanges.rulelang.guards import (
    Guard,
    HeaderGuard,
    HeaderValueGuard,
    RoutingKeyGuard,
    RoutingKeyPatternGuard,
    guard_of,
)
from exchanges.rulelang.parser import (
    MAX_DEPTH,
    MAX_LIST_ITEMS,
    MAX_NODES,
    MAX_RULE_LENGTH,
    parse,
)
from exchanges.rulelang.predicates import Context, Predicate, compile_expr
from exchanges.rulelang.syntax import Expr, to_text


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A parsed rule: its canonical text, predicate and index guard."""

    text: str
    predicate: Predicate
    guard: Guard


def compile_rule(rule: str) -> CompiledRule:
    """Parse and compile rule text; raises RuleError (a PreconditionFailed) if invalid."""
    tree = parse(rule)
    return CompiledRule(to_text(tree), compile_expr(tree), guard_of(tree))


__all__ = [
    "MAX_DEPTH",
    "MAX_LIST_ITEMS",
    "MAX_NODES",
    "MAX_RULE_LENGTH",
    "CompiledRule",
    "Context",
    "Expr",
    "Guard",
    "HeaderGuard",
    "HeaderValueGuard",
    "RoutingKeyGuard",
    "RoutingKeyPatternGuard",
    "RuleError",
    "compile_rule",
    "parse",
    "to_text",
]
