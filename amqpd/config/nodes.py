"""YAML nodes with positions: every error names ``FILE:LINE:COLUMN``, what is wrong and
what is expected.

Values are read from :func:`yaml.compose` nodes (not from :func:`yaml.safe_load`), so each
value keeps the position it was written at. Values from an environment variable or a
command-line flag are composed from their text the same way and report the variable or the
flag instead of a position.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

STR = "tag:yaml.org,2002:str"
INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"
BOOL = "tag:yaml.org,2002:bool"
NULL = "tag:yaml.org,2002:null"


class ConfigError(ValueError):
    """An invalid configuration or topology; ``str()`` is ``WHERE: what is wrong, expected``."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where values come from: a file (positions), an environment variable or a flag."""

    label: str
    is_file: bool = True

    def at(self, node: Node | None) -> str:
        """``FILE:LINE:COLUMN`` of a node (1-based), or the label for env/command line."""
        if self.is_file and node is not None:
            mark = node.start_mark
            return f"{self.label}:{mark.line + 1}:{mark.column + 1}"
        return self.label

    def error(self, node: Node | None, message: str) -> ConfigError:
        """A :class:`ConfigError` located at ``node``."""
        return ConfigError(f"{self.at(node)}: {message}")


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")


def join(path: str, key: str | int) -> str:
    """Extend a dotted path: ``a.b``, ``a[0]``, ``vhosts['/']``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not _IDENTIFIER.match(key):
        return f"{path}[{key!r}]"
    return f"{path}.{key}" if path else key


def lead(path: str) -> str:
    """``'path: '`` to start a message, or nothing for a value without a path."""
    return f"{path}: " if path else ""


def describe(node: Node) -> str:
    """A short description of a node's value for 'got ...' messages."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    assert isinstance(node, ScalarNode)
    text = node.value if len(node.value) <= 40 else node.value[:37] + "..."
    return {
        STR: f"the string {text!r}",
        INT: f"the integer {text}",
        FLOAT: f"the number {text}",
        BOOL: f"the boolean {text}",
        NULL: "null",
    }.get(node.tag, f"the value {text!r}")


def construct(node: Node) -> Any:
    """The Python value of a node (as :func:`yaml.safe_load` would build it)."""
    return SafeConstructor().construct_object(node, deep=True)


def _check_duplicates(node: Node | None, origin: Origin) -> None:
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, MappingNode):
            seen: dict[object, Node] = {}
            for key_node, value_node in current.value:
                if isinstance(key_node, ScalarNode):
                    key = (key_node.tag, key_node.value)
                    first = seen.get(key)
                    if first is not None:
                        raise origin.error(
                            key_node,
                            f"duplicate key {key_node.value!r} (first at line "
                            f"{first.start_mark.line + 1}), expected each key once",
                        )
                    seen[key] = key_node
                stack.append(key_node)
                stack.append(value_node)
        elif isinstance(current, SequenceNode):
            stack.extend(current.value)


def compose_text(text: str, origin: Origin) -> Node | None:
    """Compose YAML text into a node tree; None for an empty document."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = origin.label
        if origin.is_file and mark is not None:
            where = f"{origin.label}:{mark.line + 1}:{mark.column + 1}"
        problem = exc.problem or exc.context or "syntax error"
        if "expected" not in problem:
            problem += ", expected valid YAML"
        raise ConfigError(f"{where}: not valid YAML: {problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin.label}: not valid YAML: {exc}") from exc
    _check_duplicates(node, origin)
    return node


def compose_file(path: str | Path) -> tuple[Node | None, Origin]:
    """Read and compose a YAML file; errors name the file."""
    origin = Origin(str(path))
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason}), expected a YAML file") \
            from exc
    return compose_text(text, origin), origin


def scalar_node(text: str) -> ScalarNode:
    """A string node, for values that are strings whatever they look like (env, flags)."""
    mark = yaml.Mark("<value>", 0, 0, 0, None, None)  # type: ignore[arg-type]
    return ScalarNode(STR, text, mark, mark)


def mapping(node: Node, origin: Origin, path: str, what: str = "a mapping") -> list[
    tuple[str, Node, Node]
]:
    """The (key, key node, value node) items of a mapping node with string keys."""
    if not isinstance(node, MappingNode):
        raise origin.error(node, f"{lead(path)}got {describe(node)}, "
                                 f"expected {what}")
    items: list[tuple[str, Node, Node]] = []
    for key_node, value_node in node.value:
        if not isinstance(key_node, ScalarNode) or key_node.tag not in (STR, INT, FLOAT, BOOL):
            raise origin.error(key_node, f"{lead(path)}got {describe(key_node)} as a key, "
                                         "expected a name")
        items.append((str(key_node.value), key_node, value_node))
    return items


def sequence(node: Node, origin: Origin, path: str, what: str) -> list[Node]:
    """The items of a list node."""
    if not isinstance(node, SequenceNode):
        raise origin.error(node, f"{lead(path)}got {describe(node)}, expected {what}")
    return list(node.value)


def unknown_key(
    key: str, key_node: Node, allowed: Iterable[str], origin: Origin, path: str,
    what: str = "setting",
    suggestion: str | None = None,
) -> ConfigError:
    """The error for a key that the schema does not know (with a suggestion)."""
    names = sorted(allowed)
    where = f" in {path}" if path else ""
    hint = ""
    close = [suggestion] if suggestion else difflib.get_close_matches(key, names, n=1)
    if suggestion and "." not in suggestion:
        # The key exists, one level up: "did you mean 'users'" about 'users' would puzzle.
        hint = f" ({suggestion!r} belongs at the top level of the file)"
    elif close:
        hint = f" (did you mean {close[0]!r}?)"
    return origin.error(
        key_node, f"unknown {what} {key!r}{where}{hint}, expected one of: {', '.join(names)}"
    )


def require_keys(
    present: Sequence[str], required: Sequence[str], node: Node, origin: Origin, path: str
) -> None:
    """Error naming the first missing required key."""
    for key in required:
        if key not in present:
            raise origin.error(node, f"{lead(path)}missing {key!r}, expected a value for it")


def string(node: Node, origin: Origin, path: str, *, allow_empty: bool = True) -> str:
    """A scalar that must be a YAML string (names, patterns, hashes)."""
    if not isinstance(node, ScalarNode) or node.tag != STR:
        hint = ""
        if isinstance(node, ScalarNode) and node.tag != NULL:
            hint = f" (quote it: \"{node.value}\")"
        raise origin.error(node, f"{lead(path)}got {describe(node)}, expected a string{hint}")
    if not allow_empty and not node.value:
        raise origin.error(node, f"{lead(path)}got an empty string, expected a non-empty string")
    return str(node.value)


def boolean(node: Node, origin: Origin, path: str) -> bool:
    """A YAML boolean."""
    if not isinstance(node, ScalarNode) or node.tag != BOOL:
        raise origin.error(node, f"{lead(path)}got {describe(node)}, expected true or false")
    return bool(construct(node))


def string_list(node: Node, origin: Origin, path: str) -> list[str]:
    """A list of strings."""
    return [
        string(item, origin, join(path, index))
        for index, item in enumerate(sequence(node, origin, path, "a list of strings"))
    ]


def is_null(node: Node | None) -> bool:
    """True for a missing value or an explicit null."""
    return node is None or (isinstance(node, ScalarNode) and node.tag == NULL)
