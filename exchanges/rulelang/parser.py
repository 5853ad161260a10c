"""Recursive-descent parser for ``x-rule`` text (grammar in :mod:`exchanges.rulelang`).

Precedence, loosest first: ``or``, ``and``, ``not``, then one condition. Every limit is
checked before the work it bounds, so hostile input fails fast with a RuleError.
"""

from __future__ import annotations

from exchanges.properties import PROPERTY_NAMES
from exchanges.rulelang.errors import RuleError
from exchanges.rulelang.lexer import END, NAME, NUMBER, OP, PUNCT, STRING, Token, tokenize
from exchanges.rulelang.syntax import (
    HEADERS,
    PROPERTIES,
    ROUTING_KEY,
    And,
    Compare,
    Exists,
    Expr,
    Field,
    Glob,
    In,
    Literal,
    Not,
    Or,
)

MAX_RULE_LENGTH = 4096  # characters
MAX_DEPTH = 32  # nested parentheses and 'not'
MAX_NODES = 256  # conditions plus and/or/not nodes
MAX_LIST_ITEMS = 256  # values in one 'in [...]' list

COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")
FIELD_HINT = "routing_key, headers.NAME, headers['NAME'] or properties.NAME"


def parse(rule: str) -> Expr:
    """The syntax tree of ``rule``; raises RuleError (a PreconditionFailed) if invalid."""
    if not isinstance(rule, str):
        raise RuleError("", 0, f"x-rule must be a string, not {type(rule).__name__}")
    if len(rule) > MAX_RULE_LENGTH:
        raise RuleError(rule, 0, f"rule is {len(rule)} characters long; "
                                 f"the limit is {MAX_RULE_LENGTH}")
    if not rule.strip():
        raise RuleError(rule, 0, "rule is empty")
    return _Parser(rule, tokenize(rule)).parse_rule()


def _shown(token: Token) -> str:
    if token.kind == END:
        return "the end of the rule"
    text = token.text if len(token.text) <= 20 else token.text[:17] + "..."
    return f"'{text}'"


class _Parser:
    __slots__ = ("depth", "nodes", "position", "rule", "tokens")

    def __init__(self, rule: str, tokens: list[Token]) -> None:
        self.rule = rule
        self.tokens = tokens
        self.position = 0
        self.depth = 0
        self.nodes = 0

    # -- token helpers ------------------------------------------------------------------

    def peek(self) -> Token:
        return self.tokens[self.position]

    def advance(self) -> Token:
        token = self.tokens[self.position]
        if token.kind != END:
            self.position += 1
        return token

    def at(self, kind: str, value: str | None = None) -> bool:
        token = self.tokens[self.position]
        return token.kind == kind and (value is None or token.value == value)

    def at_keyword(self, word: str) -> bool:
        return self.at(NAME, word)

    def fail(self, token: Token, problem: str) -> RuleError:
        return RuleError(self.rule, token.column, problem)

    def expect_punct(self, char: str, problem: str) -> Token:
        if not self.at(PUNCT, char):
            token = self.peek()
            raise self.fail(token, f"{problem}, found {_shown(token)}")
        return self.advance()

    def count_node(self, token: Token) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fail(token, f"rule has more than {MAX_NODES} conditions and operators")

    def enter(self, token: Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(token, f"rule nests deeper than {MAX_DEPTH} levels")

    # -- grammar ------------------------------------------------------------------------

    def parse_rule(self) -> Expr:
        expr = self.parse_or()
        token = self.peek()
        if token.kind != END:
            if self.at(PUNCT, ")"):
                raise self.fail(token, "unbalanced ')' with no matching '('")
            raise self.fail(token, f"expected 'and', 'or' or the end of the rule, "
                                   f"found {_shown(token)}")
        return expr

    def parse_or(self) -> Expr:
        first = self.peek()
        operands = [self.parse_and()]
        while self.at_keyword("or"):
            self.advance()
            operands.append(self.parse_and())
        if len(operands) == 1:
            return operands[0]
        self.count_node(first)
        return Or(tuple(operands))

    def parse_and(self) -> Expr:
        first = self.peek()
        operands = [self.parse_not()]
        while self.at_keyword("and"):
            self.advance()
            operands.append(self.parse_not())
        if len(operands) == 1:
            return operands[0]
        self.count_node(first)
        return And(tuple(operands))

    def parse_not(self) -> Expr:
        if not self.at_keyword("not"):
            return self.parse_condition()
        token = self.advance()
        self.enter(token)
        self.count_node(token)
        operand = self.parse_not()
        self.depth -= 1
        return Not(operand)

    def parse_condition(self) -> Expr:
        token = self.peek()
        if self.at(PUNCT, "("):
            self.advance()
            self.enter(token)
            expr = self.parse_or()
            self.expect_punct(")", f"expected ')' to close the '(' at column {token.column}")
            self.depth -= 1
            return expr
        self.count_node(token)
        if self.at_keyword("exists"):
            self.advance()
            return Exists(self.parse_field())
        field = self.parse_field()
        return self.parse_test(field)

    def parse_field(self) -> Field:
        token = self.advance()
        if token.kind != NAME or token.value not in (ROUTING_KEY, HEADERS, PROPERTIES):
            raise self.fail(token, f"expected a field ({FIELD_HINT}), found {_shown(token)}")
        if token.value == ROUTING_KEY:
            return Field(ROUTING_KEY)
        source = str(token.value)
        if source == HEADERS and self.at(PUNCT, "["):
            self.advance()
            name_token = self.advance()
            if name_token.kind != STRING:
                raise self.fail(name_token, "expected a quoted header name after 'headers['")
            self.expect_punct("]", "expected ']' after the header name")
            return Field(HEADERS, str(name_token.value))
        self.expect_punct(".", f"expected '.' and a name after '{source}'")
        name_token = self.advance()
        if name_token.kind != NAME:
            raise self.fail(name_token, f"expected a name after '{source}.', "
                                        f"found {_shown(name_token)}")
        name = str(name_token.value)
        if source == PROPERTIES and name not in PROPERTY_NAMES:
            raise self.fail(name_token, f"unknown property '{name}'; known: "
                                        + ", ".join(sorted(PROPERTY_NAMES)))
        return Field(source, name)

    def parse_test(self, field: Field) -> Expr:
        token = self.advance()
        if token.kind == OP and token.value in COMPARISONS:
            op = str(token.value)
            value = self.parse_value(f"expected a value after '{op}'")
            if isinstance(value, bool) and op not in ("==", "!="):
                raise self.fail(token, f"'{op}' compares numbers or strings, not booleans")
            return Compare(field, op, value)
        if token.kind == OP and token.value == "~":
            pattern = self.advance()
            if pattern.kind != STRING:
                raise self.fail(pattern, f"expected a quoted pattern after '~', "
                                         f"found {_shown(pattern)}")
            return Glob(field, str(pattern.value))
        if token.kind == NAME and token.value == "in":
            return In(field, self.parse_list())
        hint = ""
        if token.kind == NAME and token.value == "not":
            hint = " (write 'not FIELD in [...]')"
        elif token.kind == NAME and token.value == "exists":
            hint = " (write 'exists FIELD')"
        raise self.fail(token, "expected ==, !=, <, <=, >, >=, in or ~ after the field, "
                               f"found {_shown(token)}{hint}")

    def parse_list(self) -> tuple[Literal, ...]:
        self.expect_punct("[", "expected '[' after 'in'")
        values = [self.parse_value("expected a value in the list")]
        while self.at(PUNCT, ","):
            comma = self.advance()
            if len(values) >= MAX_LIST_ITEMS:
                raise self.fail(comma, f"list has more than {MAX_LIST_ITEMS} values")
            values.append(self.parse_value("expected a value after ','"))
        self.expect_punct("]", "expected ',' or ']' in the list")
        return tuple(values)

    def parse_value(self, problem: str) -> Literal:
        token = self.advance()
        if token.kind in (STRING, NUMBER):
            return token.value
        if token.kind == NAME and token.value in ("true", "false"):
            return token.value == "true"
        raise self.fail(token, f"{problem}, found {_shown(token)}")
