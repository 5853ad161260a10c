"""``fanout``: a message goes to every bound destination; routing keys are ignored."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from exchanges.base import Binding, D, Routable
from exchanges.registry import register
from exchanges.table import DestinationSet, IndexedExchange


class FanoutExchange(IndexedExchange[D]):
    """Routing returns a cached tuple of all destinations."""

    type_name = "fanout"

    def __init__(self, arguments: Mapping[str, object]) -> None:
        super().__init__(arguments)
        self._all: DestinationSet[D] = DestinationSet()

    def _attach(self, binding: Binding[D]) -> None:
        self._all.add(binding.destination)

    def _detach(self, binding: Binding[D]) -> None:
        self._all.remove(binding.destination)

    def route(self, message: Routable) -> Collection[D]:
        return self._all.snapshot


# A call, not a class decorator: mypyc compiles only undecorated classes to native ones.
register(FanoutExchange)
