"""Binding bookkeeping shared by the built-in exchange types.

:class:`IndexedExchange` stores bindings by identity and by destination, so bind, unbind,
``len()`` and "drop every binding of a deleted queue" cost O(1) per binding touched. A
subclass only compiles a binding into its routing structure (:meth:`_attach`) and takes it
out again (:meth:`_detach`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Hashable, Iterator, Mapping
from typing import Generic

from exchanges.base import Binding, D, ExchangeType


class IndexedExchange(ExchangeType[D]):
    """An exchange type whose bindings are indexed by identity and by destination."""

    def __init__(self, arguments: Mapping[str, object]) -> None:
        super().__init__(arguments)
        self._bindings: dict[Hashable, Binding[D]] = {}
        self._by_destination: dict[D, dict[Hashable, Binding[D]]] = {}

    @abstractmethod
    def _attach(self, binding: Binding[D]) -> None:
        """Compile a new binding into the routing structure. Raise PreconditionFailed
        before changing anything if the binding is invalid."""

    @abstractmethod
    def _detach(self, binding: Binding[D]) -> None:
        """Take a binding that :meth:`_attach` accepted out of the routing structure."""

    def bind(self, destination: D, routing_key: str, arguments: Mapping[str, object]) -> bool:
        binding = Binding(destination, routing_key, arguments)
        key = binding._identity
        if key in self._bindings:
            return False
        self._attach(binding)
        self._bindings[key] = binding
        self._by_destination.setdefault(destination, {})[key] = binding
        return True

    def unbind(self, destination: D, routing_key: str, arguments: Mapping[str, object]) -> bool:
        binding = self._bindings.get(Binding(destination, routing_key, arguments)._identity)
        if binding is None:
            return False
        self._forget(binding)
        return True

    def _forget(self, binding: Binding[D]) -> None:
        self._detach(binding)
        key = binding._identity
        del self._bindings[key]
        of_destination = self._by_destination[binding.destination]
        del of_destination[key]
        if not of_destination:
            del self._by_destination[binding.destination]

    def bindings(self) -> Iterator[Binding[D]]:
        # A snapshot, so callers may unbind while iterating.
        return iter(list(self._bindings.values()))

    def unbind_destination(self, destination: D) -> int:
        of_destination = self._by_destination.get(destination)
        if not of_destination:
            return 0
        doomed = list(of_destination.values())
        for binding in doomed:
            self._forget(binding)
        return len(doomed)

    def __len__(self) -> int:
        return len(self._bindings)


class DestinationSet(Generic[D]):
    """Destinations with a binding count each, plus a cached immutable snapshot for route().

    Several bindings can lead to the same destination through the same compiled route
    (same key, different arguments); the destination stays until the last one goes.
    """

    __slots__ = ("_snapshot", "counts")

    def __init__(self) -> None:
        self.counts: dict[D, int] = {}
        self._snapshot: tuple[D, ...] | None = ()

    def add(self, destination: D) -> None:
        count = self.counts.get(destination, 0)
        self.counts[destination] = count + 1
        if not count:
            self._snapshot = None

    def remove(self, destination: D) -> None:
        count = self.counts[destination] - 1
        if count:
            self.counts[destination] = count
        else:
            del self.counts[destination]
            self._snapshot = None

    @property
    def snapshot(self) -> tuple[D, ...]:
        """The destinations as a tuple; rebuilt only after a change, so route() returns
        shared immutable data instead of copying."""
        snapshot = self._snapshot
        if snapshot is None:
            snapshot = self._snapshot = tuple(self.counts)
        return snapshot

    def __bool__(self) -> bool:
        return bool(self.counts)
