"""``direct``: a message goes to the destinations bound with exactly its routing key."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from exchanges.base import Binding, D, Routable
from exchanges.registry import register
from exchanges.table import DestinationSet, IndexedExchange


class DirectExchange(IndexedExchange[D]):
    """One dict lookup per message."""

    type_name = "direct"

    def __init__(self, arguments: Mapping[str, object]) -> None:
        super().__init__(arguments)
        self._routes: dict[str, DestinationSet[D]] = {}

    def _attach(self, binding: Binding[D]) -> None:
        routes = self._routes.get(binding.routing_key)
        if routes is None:
            routes = self._routes[binding.routing_key] = DestinationSet()
        routes.add(binding.destination)

    def _detach(self, binding: Binding[D]) -> None:
        routes = self._routes[binding.routing_key]
        routes.remove(binding.destination)
        if not routes:
            del self._routes[binding.routing_key]

    def route(self, message: Routable) -> Collection[D]:
        routes = self._routes.get(message.routing_key)
        return routes.snapshot if routes is not None else ()


# A call, not a class decorator: mypyc compiles only undecorated classes to native ones.
register(DirectExchange)
