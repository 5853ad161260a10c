"""A trie of topic patterns with ``*`` and ``#`` edges.

Each node has literal children (a dict), at most one ``*`` child and at most one ``#``
child, and the destinations of the patterns that end there. Matching walks only edges the
key can take, so the cost depends on the key and on the patterns that share its prefixes,
not on how many other patterns exist.

``#`` matches any number of words, so the walk may reach the same (node, position) along
different paths (``#.#``, ``*.#.*.#`` ...). States below a ``#`` edge are memoised, which
bounds a match by (nodes below ``#``) x (words + 1) however the patterns are nested.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Generic

from exchanges.base import D
from exchanges.table import DestinationSet
from exchanges.words import HASH, STAR


class Node(Generic[D]):
    """One trie node; ``below_hash`` is True when the path from the root has a ``#``.

    ``children`` and ``destinations`` stay None until needed: most nodes are inner nodes
    with one child, and 100,000 bindings make a lot of nodes.
    """

    __slots__ = ("below_hash", "children", "destinations", "hash", "star")

    def __init__(self, below_hash: bool) -> None:
        self.children: dict[str, Node[D]] | None = None
        self.star: Node[D] | None = None
        self.hash: Node[D] | None = None
        self.destinations: DestinationSet[D] | None = None
        self.below_hash = below_hash

    def is_leaf(self) -> bool:
        return not self.children and self.star is None and self.hash is None

    def is_empty(self) -> bool:
        return self.is_leaf() and not self.destinations


class TopicTrie(Generic[D]):
    """Topic patterns (already split into words) to destinations."""

    __slots__ = ("root", "size")

    def __init__(self) -> None:
        self.root: Node[D] = Node(below_hash=False)
        self.size = 0  # bindings stored (a destination counts once per binding)

    def add(self, pattern: Sequence[str], destination: D) -> None:
        node = self.root
        for word in pattern:
            node = self._child_or_new(node, word)
        if node.destinations is None:
            node.destinations = DestinationSet()
        node.destinations.add(destination)
        self.size += 1

    def remove(self, pattern: Sequence[str], destination: D) -> None:
        path: list[tuple[Node[D], str]] = []
        node = self.root
        for word in pattern:
            child = self._child(node, word)
            assert child is not None, "removing a pattern that was never added"
            path.append((node, word))
            node = child
        assert node.destinations is not None
        node.destinations.remove(destination)
        if not node.destinations:
            node.destinations = None
        self.size -= 1
        # Prune nodes left without patterns so dead prefixes cost nothing when matching.
        for parent, word in reversed(path):
            child = self._child(parent, word)
            if child is None or not child.is_empty():
                break
            if word == STAR:
                parent.star = None
            elif word == HASH:
                parent.hash = None
            else:
                assert parent.children is not None
                del parent.children[word]
                if not parent.children:
                    parent.children = None

    def fanout_destinations(self) -> DestinationSet[D] | None:
        """The destinations when every pattern is ``#`` (so every key matches), else None."""
        root = self.root
        everything = root.hash
        if root.children or root.star is not None or root.destinations:
            return None
        if everything is None or not everything.is_leaf():
            return None
        return everything.destinations

    def match(self, words: Sequence[str]) -> dict[D, None]:
        """Destinations of every pattern matching ``words``, each once, in walk order."""
        found: dict[D, None] = {}
        end = len(words)
        stack: list[tuple[Node[D], int]] = [(self.root, 0)]
        seen: set[tuple[Hashable, int]] | None = None  # made on the first state below '#'
        push = stack.append
        pop = stack.pop
        while stack:
            state = pop()
            node, position = state
            if node.below_hash:
                if seen is None:
                    seen = set()
                elif state in seen:
                    continue
                seen.add(state)
            if position == end:
                if node.destinations:
                    for destination in node.destinations.snapshot:
                        found[destination] = None
                if node.hash is not None:
                    push((node.hash, end))  # '#' also matches zero words
                continue
            if node.children:
                child = node.children.get(words[position])
                if child is not None:
                    push((child, position + 1))
            if node.star is not None:
                push((node.star, position + 1))
            rest = node.hash
            if rest is not None:
                if rest.is_leaf():
                    push((rest, end))  # a trailing '#' swallows the rest: one state, not n
                else:
                    for absorbed_to in range(position, end + 1):
                        push((rest, absorbed_to))
        return found

    @staticmethod
    def _child(node: Node[D], word: str) -> Node[D] | None:
        if word == STAR:
            return node.star
        if word == HASH:
            return node.hash
        return node.children.get(word) if node.children else None

    @staticmethod
    def _child_or_new(node: Node[D], word: str) -> Node[D]:
        if word == STAR:
            if node.star is None:
                node.star = Node(node.below_hash)
            return node.star
        if word == HASH:
            if node.hash is None:
                node.hash = Node(below_hash=True)
            return node.hash
        if node.children is None:
            node.children = {}
        child = node.children.get(word)
        if child is None:
            child = node.children[word] = Node(node.below_hash)
        return child
