"""``topic``: routing keys are ``.``-separated words, binding keys are word patterns.

Semantics are RabbitMQ's (see :mod:`exchanges.words`): ``*`` matches exactly one word, ``#``
zero or more, empty words are words, and the empty routing key has zero words (so ``#``
matches it, ``*`` does not, and the binding key ``""`` matches only ``""``).

Binding keys without wildcards are kept apart in a dict keyed by the whole key (two keys
have the same words exactly when they are the same string), so they cost one lookup and
no split. Wildcard patterns go to a :class:`~exchanges.topic_trie.TopicTrie`. When the only
pattern is ``#`` the exchange behaves as a fanout and skips matching altogether.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from exchanges.base import Binding, D, Routable
from exchanges.registry import register
from exchanges.table import DestinationSet, IndexedExchange
from exchanges.topic_trie import TopicTrie
from exchanges.words import is_wildcard, split_words


class TopicExchange(IndexedExchange[D]):
    """Exact keys in a dict, wildcard patterns in a trie."""

    type_name = "topic"

    def __init__(self, arguments: Mapping[str, object]) -> None:
        super().__init__(arguments)
        self._exact: dict[str, DestinationSet[D]] = {}
        self._trie: TopicTrie[D] = TopicTrie()
        self._fanout: DestinationSet[D] | None = None  # set while '#' is the only pattern

    def _attach(self, binding: Binding[D]) -> None:
        pattern = split_words(binding.routing_key)
        if is_wildcard(pattern):
            self._trie.add(pattern, binding.destination)
        else:
            exact = self._exact.get(binding.routing_key)
            if exact is None:
                exact = self._exact[binding.routing_key] = DestinationSet()
            exact.add(binding.destination)
        self._refresh_fanout()

    def _detach(self, binding: Binding[D]) -> None:
        pattern = split_words(binding.routing_key)
        if is_wildcard(pattern):
            self._trie.remove(pattern, binding.destination)
        else:
            exact = self._exact[binding.routing_key]
            exact.remove(binding.destination)
            if not exact:
                del self._exact[binding.routing_key]
        self._refresh_fanout()

    def _refresh_fanout(self) -> None:
        self._fanout = None if self._exact else self._trie.fanout_destinations()

    def route(self, message: Routable) -> Collection[D]:
        if self._fanout is not None:
            return self._fanout.snapshot
        key = message.routing_key
        exact = self._exact.get(key)
        if not self._trie.size:
            return exact.snapshot if exact is not None else ()
        found = self._trie.match(split_words(key))
        if exact is not None:
            for destination in exact.snapshot:
                found[destination] = None
        return found.keys()


# A call, not a class decorator: mypyc compiles only undecorated classes to native ones.
register(TopicExchange)
