"""The one error a rule can raise: a PreconditionFailed that points at a column."""

from __future__ import annotations

from exchanges.base import PreconditionFailed

_CONTEXT = 30  # characters of rule text shown on each side of the error
_MAX_TEXT = 255  # the reply text travels as an AMQP shortstr


class RuleError(PreconditionFailed):
    """An invalid ``x-rule``; ``column`` is 1-based (0 when the whole rule is at fault)."""

    def __init__(self, rule: str, column: int, problem: str) -> None:
        self.column = column
        self.problem = problem
        if column:
            start = max(0, column - 1 - _CONTEXT)
            end = column - 1 + _CONTEXT
            # Line breaks and tabs would garble a one-line reply text.
            snippet = rule[start:end].translate(_FLATTEN)
            if start:
                snippet = "..." + snippet
            if end < len(rule):
                snippet += " ..."
            text = f'invalid x-rule at column {column}: {problem} in "{snippet}"'
            if len(text.encode("utf-8")) > _MAX_TEXT:
                text = f"invalid x-rule at column {column}: {problem}"
        else:
            text = f"invalid x-rule: {problem}"
        while len(text.encode("utf-8")) > _MAX_TEXT:
            text = text[: len(text) - 4] + "..."
        super().__init__(text)


_FLATTEN = str.maketrans({"\n": " ", "\r": " ", "\t": " "})
