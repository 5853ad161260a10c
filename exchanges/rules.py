"""``x-rules``: each binding carries a boolean rule over the routing key, headers and
properties, in its ``x-rule`` argument; a message goes to every destination whose rule is
true. The binding's routing key is not used for matching (it only distinguishes bindings).

Example binding arguments::

    {"x-rule": "routing_key ~ 'video.uploaded' and headers.duration > 600"}

The language is described in :mod:`exchanges.rulelang` (grammar, semantics, limits).

Rules are compiled once at bind time; bindings whose rules have the same canonical text
(``a==1`` and ``a == 1`` alike) share one compiled rule, evaluated once per message. Each
rule is indexed by a necessary condition when it has one (the routing key or a header
must have one of a few values, the routing key must match a topic pattern - looked up in
a topic trie -, or a header must be present; see
:mod:`exchanges.rulelang.guards`), so routing evaluates only rules that can still match;
rules without such a guard are evaluated for every message.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping
from typing import Generic, TypeVar

from exchanges.base import Binding, D, PreconditionFailed, Routable
from exchanges.registry import register
from exchanges.rulelang import (
    CompiledRule,
    Context,
    HeaderGuard,
    HeaderValueGuard,
    RoutingKeyGuard,
    RoutingKeyPatternGuard,
    compile_rule,
)
from exchanges.rulelang.predicates import value_key
from exchanges.table import DestinationSet, IndexedExchange
from exchanges.topic_trie import TopicTrie

RULE_ARGUMENT = "x-rule"

K = TypeVar("K", bound=Hashable)


class RuleGroup(Generic[D]):
    """One compiled rule and the destinations of every binding that uses it."""

    __slots__ = ("destinations", "rule", "spellings", "users")

    def __init__(self, rule: CompiledRule) -> None:
        self.rule = rule
        self.destinations: DestinationSet[D] = DestinationSet()
        self.users = 0  # bindings using this rule
        self.spellings: set[str] = set()  # source texts that compiled to it


def rule_text(arguments: Mapping[str, object]) -> str:
    """The ``x-rule`` argument of a binding, which must be a string."""
    text = arguments.get(RULE_ARGUMENT)
    if text is None:
        raise PreconditionFailed(
            "x-rules bindings need an 'x-rule' argument with the rule as a string, e.g. "
            "x-rule = \"headers.region == 'eu'\""
        )
    if not isinstance(text, str):
        raise PreconditionFailed(
            f"x-rule must be a string (the rule text), not {type(text).__name__}"
        )
    return text


class RulesExchange(IndexedExchange[D]):
    """Rule groups, indexed by their guards (see the module docstring)."""

    type_name = "x-rules"

    def __init__(self, arguments: Mapping[str, object]) -> None:
        super().__init__(arguments)
        self._groups: dict[str, RuleGroup[D]] = {}  # by canonical rule text
        self._compiled: dict[str, CompiledRule] = {}  # by source text, to skip re-parsing
        # Group collections are dicts used as insertion-ordered sets (O(1) removal).
        self._by_routing_key: dict[str, dict[RuleGroup[D], None]] = {}
        self._by_routing_pattern: TopicTrie[RuleGroup[D]] = TopicTrie()
        self._by_header: dict[str, dict[RuleGroup[D], None]] = {}
        self._by_header_value: dict[str, dict[Hashable, dict[RuleGroup[D], None]]] = {}
        self._unguarded: dict[RuleGroup[D], None] = {}

    def _compile(self, text: str) -> CompiledRule:
        compiled = self._compiled.get(text)
        if compiled is None:
            compiled = compile_rule(text)
        return compiled

    def _attach(self, binding: Binding[D]) -> None:
        text = rule_text(binding.arguments)
        compiled = self._compile(text)
        group = self._groups.get(compiled.text)
        if group is None:
            group = self._groups[compiled.text] = RuleGroup(compiled)
            self._index(group)
        self._compiled[text] = group.rule
        group.spellings.add(text)
        group.users += 1
        group.destinations.add(binding.destination)

    def _detach(self, binding: Binding[D]) -> None:
        text = rule_text(binding.arguments)
        canonical = self._compiled[text].text
        group = self._groups[canonical]
        group.users -= 1
        group.destinations.remove(binding.destination)
        if not group.users:
            del self._groups[canonical]
            self._unindex(group)
            for spelling in group.spellings:
                del self._compiled[spelling]

    def _index(self, group: RuleGroup[D]) -> None:
        guard = group.rule.guard
        if isinstance(guard, RoutingKeyGuard):
            for key in guard.keys:
                self._by_routing_key.setdefault(key, {})[group] = None
        elif isinstance(guard, RoutingKeyPatternGuard):
            self._by_routing_pattern.add(guard.pattern, group)
        elif isinstance(guard, HeaderValueGuard):
            by_value = self._by_header_value.setdefault(guard.name, {})
            for value in guard.keys:
                by_value.setdefault(value, {})[group] = None
        elif isinstance(guard, HeaderGuard):
            self._by_header.setdefault(guard.name, {})[group] = None
        else:
            self._unguarded[group] = None

    def _unindex(self, group: RuleGroup[D]) -> None:
        guard = group.rule.guard
        if isinstance(guard, RoutingKeyGuard):
            for key in guard.keys:
                _remove_from(self._by_routing_key, key, group)
        elif isinstance(guard, RoutingKeyPatternGuard):
            self._by_routing_pattern.remove(guard.pattern, group)
        elif isinstance(guard, HeaderValueGuard):
            by_value = self._by_header_value[guard.name]
            for value in guard.keys:
                _remove_from(by_value, value, group)
            if not by_value:
                del self._by_header_value[guard.name]
        elif isinstance(guard, HeaderGuard):
            _remove_from(self._by_header, guard.name, group)
        else:
            del self._unguarded[group]

    def route(self, message: Routable) -> Collection[D]:
        context = Context(message)
        found: dict[D, None] = {}
        for group in self._candidates(message, context):
            if group.rule.predicate.test(context):
                for destination in group.destinations.snapshot:
                    found[destination] = None
        return found.keys()

    def _candidates(self, message: Routable, context: Context) -> list[RuleGroup[D]]:
        """Every rule group that might match: each appears once, under its single guard.

        Header indexes are probed from whichever side is smaller, the message's headers or
        the index, so neither many headers nor many indexed names cost more than needed.
        """
        candidates = list(self._unguarded)
        if self._by_routing_key:
            by_key = self._by_routing_key.get(message.routing_key)
            if by_key:
                candidates += by_key
        if self._by_routing_pattern.size:
            candidates += self._by_routing_pattern.match(context.words)
        by_header, by_header_value = self._by_header, self._by_header_value
        if not (by_header or by_header_value):
            return candidates
        headers = context.headers
        if not headers:
            return candidates
        if len(headers) <= len(by_header):
            for name in headers:
                groups = by_header.get(name)
                if groups:
                    candidates += groups
        else:
            for name, groups in by_header.items():
                if name in headers:
                    candidates += groups
        if len(headers) <= len(by_header_value):
            for name, value in headers.items():
                by_value = by_header_value.get(name)
                if by_value:
                    groups = by_value.get(value_key(value))
                    if groups:
                        candidates += groups
        else:
            for name, by_value in by_header_value.items():
                if name in headers:
                    groups = by_value.get(value_key(headers[name]))
                    if groups:
                        candidates += groups
        return candidates


def _remove_from(
    index: dict[K, dict[RuleGroup[D], None]], key: K, group: RuleGroup[D]
) -> None:
    groups = index[key]
    del groups[group]
    if not groups:
        del index[key]


# A call, not a class decorator: mypyc compiles only undecorated classes to native ones.
register(RulesExchange)
