"""``headers``: route on message header values, as RabbitMQ does.

Binding arguments are the expected headers plus ``x-match``:

* ``all`` (default): every expected header must be present and equal;
* ``any``: at least one must be;
* ``all-with-x`` / ``any-with-x``: the same, but expected headers whose names start with
  ``x-`` count too (with plain ``all``/``any`` they are ignored). ``x-match`` itself never
  counts.

An expected value of void (``None``) only requires the header to be present. Values compare
with RabbitMQ's equality (:func:`exchanges.values.match_key`): ``1 == 1.0``, ``True != 1``,
``"a" == b"a"``, timestamp == its integer seconds. ``all`` with nothing to compare matches
every message; ``any`` with nothing to compare matches none. The routing key is ignored.

Compilation: a binding becomes a *matcher* (mode + required (header, value) pairs);
bindings with equivalent arguments share one. Matchers are indexed by the (header, value)
pairs they need, so routing looks up each message header once and counts hits per
matcher: the cost follows the headers a message carries, not the number of bindings.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping
from typing import Generic

from exchanges.base import Binding, D, PreconditionFailed, Routable
from exchanges.registry import register
from exchanges.table import DestinationSet, IndexedExchange
from exchanges.values import match_key

MATCH_MODES = {"all": (True, False), "any": (False, False),
               "all-with-x": (True, True), "any-with-x": (False, True)}

_PRESENT = ("present",)  # the requirement of a void expected value


class Matcher(Generic[D]):
    """Compiled binding arguments shared by every binding with equivalent arguments."""

    __slots__ = ("destinations", "match_all", "requirements", "users")

    def __init__(self, match_all: bool, requirements: Requirements) -> None:
        self.match_all = match_all
        self.requirements = requirements
        self.destinations: DestinationSet[D] = DestinationSet()
        self.users = 0  # bindings compiled to this matcher


def parse_x_match(arguments: Mapping[str, object]) -> tuple[bool, bool]:
    """(match_all, with_x) from a binding's ``x-match``, validated like RabbitMQ does."""
    mode = arguments.get("x-match", "all")
    if not isinstance(mode, str):
        raise PreconditionFailed(
            f"Invalid x-match field type {type(mode).__name__} (value {mode!r}); "
            "expected a string: all, any, all-with-x, or any-with-x"
        )
    parsed = MATCH_MODES.get(mode)
    if parsed is None:
        raise PreconditionFailed(
            f"Invalid x-match field value '{mode}'; expected all, any, all-with-x, or any-with-x"
        )
    return parsed


Requirements = tuple[tuple[str, Hashable], ...]


def compile_arguments(arguments: Mapping[str, object]) -> tuple[bool, Requirements]:
    """(match_all, requirements) where a requirement is (header name, match key or
    ``_PRESENT``); requirements are sorted so equivalent argument sets compile equal."""
    match_all, with_x = parse_x_match(arguments)
    requirements = sorted(
        (name, _PRESENT if value is None else match_key(value))
        for name, value in arguments.items()
        if name != "x-match" and (with_x or not name.startswith("x-"))
    )
    return match_all, tuple(requirements)


class HeadersExchange(IndexedExchange[D]):
    """Headers matching through an inverted index of (header, value) -> matchers."""

    type_name = "headers"

    def __init__(self, arguments: Mapping[str, object]) -> None:
        super().__init__(arguments)
        self._matchers: dict[Hashable, Matcher[D]] = {}
        # header name -> {match key or _PRESENT: matchers requiring it}
        # (dicts used as insertion-ordered sets: O(1) removal when bindings go)
        self._index: dict[str, dict[Hashable, dict[Matcher[D], None]]] = {}
        # 'all' matchers with no requirements: they match every message
        self._always: dict[Matcher[D], None] = {}

    def _attach(self, binding: Binding[D]) -> None:
        match_all, requirements = compile_arguments(binding.arguments)
        signature = (match_all, requirements)
        matcher = self._matchers.get(signature)
        if matcher is None:
            matcher = self._matchers[signature] = Matcher(match_all, requirements)
            self._index_matcher(matcher)
        matcher.users += 1
        matcher.destinations.add(binding.destination)

    def _detach(self, binding: Binding[D]) -> None:
        signature = compile_arguments(binding.arguments)
        matcher = self._matchers[signature]
        matcher.users -= 1
        matcher.destinations.remove(binding.destination)
        if not matcher.users:
            del self._matchers[signature]
            self._unindex_matcher(matcher)

    def _index_matcher(self, matcher: Matcher[D]) -> None:
        if not matcher.requirements:
            if matcher.match_all:
                self._always[matcher] = None
            return  # 'any' with nothing to compare never matches: not indexed at all
        for name, wanted in matcher.requirements:
            self._index.setdefault(name, {}).setdefault(wanted, {})[matcher] = None

    def _unindex_matcher(self, matcher: Matcher[D]) -> None:
        if not matcher.requirements:
            if matcher.match_all:
                del self._always[matcher]
            return
        for name, wanted in matcher.requirements:
            by_value = self._index[name]
            users = by_value[wanted]
            del users[matcher]
            if not users:
                del by_value[wanted]
                if not by_value:
                    del self._index[name]

    def route(self, message: Routable) -> Collection[D]:
        found: dict[D, None] = {}
        for matcher in self._always:
            found.update(dict.fromkeys(matcher.destinations.snapshot))
        headers = message.headers
        if not headers or not self._index:
            return found.keys()
        hits: dict[Matcher[D], int] = {}
        index = self._index
        for name, value in headers.items():
            by_value = index.get(name)
            if by_value is None:
                continue
            for key in (_PRESENT, match_key(value)):
                for matcher in by_value.get(key, ()):
                    hits[matcher] = hits.get(matcher, 0) + 1
        for matcher, count in hits.items():
            if not matcher.match_all or count == len(matcher.requirements):
                found.update(dict.fromkeys(matcher.destinations.snapshot))
        return found.keys()


# A call, not a class decorator: mypyc compiles only undecorated classes to native ones.
register(HeadersExchange)
