"""Tokens of the rule language.

Kinds: ``name`` (identifiers and keywords: a letter or ``_``, then letters, digits, ``_``
or ``-``), ``string`` (single or double quoted, with escapes), ``number`` (``-``? digits,
optional fraction and exponent), ``op`` (``== != < <= > >= ~``), the punctuation ``( ) [ ]
, .`` and a final ``end``. Keywords are recognised by the parser, so ``headers.in`` is fine.
"""

from __future__ import annotations

from dataclasses import dataclass

from mypy_extensions import mypyc_attr

from exchanges.rulelang.errors import RuleError

NAME, STRING, NUMBER, OP, PUNCT, END = "name", "string", "number", "op", "punct", "end"

_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r", "0": "\0"}
_HEX_ESCAPES = {"u": 4, "U": 8}
_TWO_CHAR_OPS = ("==", "!=", "<=", ">=")
_ONE_CHAR_OPS = "<>~"
_PUNCTUATION = "()[],."
_WHITESPACE = " \t\r\n"


@mypyc_attr(native_class=False)  # mypyc: a dataclass with slots=True stays a Python class
@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    value: str | int | float  # names and ops: their text; strings: decoded; numbers: value
    column: int  # 1-based column of the first character
    text: str  # the source text, for error messages


def is_name_start(char: str) -> bool:
    return char.isascii() and (char.isalpha() or char == "_")


def is_name_char(char: str) -> bool:
    return char.isascii() and (char.isalnum() or char in "_-")


def is_name(text: str) -> bool:
    """Can ``text`` be written as a bare name (``headers.text``)?"""
    return bool(text) and is_name_start(text[0]) and all(is_name_char(c) for c in text)


def tokenize(rule: str) -> list[Token]:
    """Split rule text into tokens; raises RuleError at the first bad character."""
    tokens: list[Token] = []
    position, length = 0, len(rule)
    while position < length:
        char = rule[position]
        if char in _WHITESPACE:
            position += 1
            continue
        start = position
        if is_name_start(char):
            while position < length and is_name_char(rule[position]):
                position += 1
            text = rule[start:position]
            tokens.append(Token(NAME, text, start + 1, text))
        elif _is_digit(char) or (char == "-" and _is_digit(rule[position + 1 : position + 2])):
            position = _number_end(rule, position)
            text = rule[start:position]
            tokens.append(Token(NUMBER, _number_value(rule, text, start), start + 1, text))
        elif char in "'\"":
            value, position = _string(rule, position)
            tokens.append(Token(STRING, value, start + 1, rule[start:position]))
        elif rule.startswith(_TWO_CHAR_OPS, position):
            position += 2
            tokens.append(Token(OP, rule[start:position], start + 1, rule[start:position]))
        elif char in _ONE_CHAR_OPS:
            position += 1
            tokens.append(Token(OP, char, start + 1, char))
        elif char in _PUNCTUATION:
            position += 1
            tokens.append(Token(PUNCT, char, start + 1, char))
        else:
            hint = " (use == for equality)" if char == "=" else ""
            raise RuleError(rule, start + 1, f"unexpected character {char!r}{hint}")
    tokens.append(Token(END, "", length + 1, "end of rule"))
    return tokens


def _is_digit(char: str) -> bool:
    return len(char) == 1 and "0" <= char <= "9"


def _digits_end(rule: str, position: int) -> int:
    while position < len(rule) and _is_digit(rule[position]):
        position += 1
    return position


def _number_end(rule: str, position: int) -> int:
    if rule[position] == "-":
        position += 1
    position = _digits_end(rule, position)
    if rule.startswith(".", position) and _digits_end(rule, position + 1) > position + 1:
        position = _digits_end(rule, position + 1)
    if rule.startswith(("e", "E"), position):
        exponent = position + 1
        if rule.startswith(("+", "-"), exponent):
            exponent += 1
        if _digits_end(rule, exponent) > exponent:
            position = _digits_end(rule, exponent)
    if position < len(rule) and is_name_char(rule[position]):
        raise RuleError(rule, position + 1, f"unexpected {rule[position]!r} in a number")
    return position


def _number_value(rule: str, text: str, start: int) -> int | float:
    if "." not in text and "e" not in text and "E" not in text:
        return int(text)
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise RuleError(rule, start + 1, f"number {text} is out of range")
    return value


def _string(rule: str, position: int) -> tuple[str, int]:
    """Decode the string literal starting at ``position``; returns (value, end)."""
    quote = rule[position]
    start = position
    position += 1
    parts: list[str] = []
    while True:
        if position >= len(rule):
            raise RuleError(rule, start + 1, f"unterminated string (missing closing {quote})")
        char = rule[position]
        if char == quote:
            return "".join(parts), position + 1
        if char != "\\":
            parts.append(char)
            position += 1
            continue
        escape = rule[position + 1 : position + 2]
        if escape in _ESCAPES:
            parts.append(_ESCAPES[escape])
            position += 2
        elif escape in _HEX_ESCAPES:
            width = _HEX_ESCAPES[escape]
            digits = rule[position + 2 : position + 2 + width]
            if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise RuleError(rule, position + 1,
                                f"\\{escape} needs {width} hex digits")
            code = int(digits, 16)
            if code > 0x10FFFF:
                raise RuleError(rule, position + 1, f"\\{escape}{digits} is not a character")
            parts.append(chr(code))
            position += 2 + width
        else:
            shown = escape or "end of rule"
            raise RuleError(rule, position + 1,
                            f"unknown escape \\{shown} (known: \\\\ \\' \\\" \\n \\t \\r "
                            "\\0 \\uXXXX \\UXXXXXXXX)")
