"""``x-delayed-message``: the routing of RabbitMQ's delayed-message plugin.

The exchange routes with another type, named by the declare argument ``x-delayed-type``
(``direct``, ``fanout``, ``topic``, ``headers``, any registered type): bindings and routing
are delegated to an instance of that type. What makes it "delayed" -- holding a message
whose ``x-delay`` header asks for it and routing it when the delay ends -- is the server's
job; this module only answers "how long?" (:func:`delay_of`) and "where to?" (``route``).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Mapping
from decimal import Decimal
from typing import Any

from exchanges.base import Binding, D, ExchangeType, PreconditionFailed, Routable
from exchanges.registry import get_exchange_type, register

TYPE_NAME = "x-delayed-message"
ARGUMENT = "x-delayed-type"
HEADER = "x-delay"

# The plugin's limit (Erlang's largest timer, about 49.7 days); a longer delay is no delay.
MAX_DELAY_MS = 4_294_967_295


def delay_of(headers: Mapping[str, object] | None) -> int | None:
    """The delay in ms the ``x-delay`` header asks for, or None for "route now".

    As the plugin: integers are taken as they are, strings are parsed as integers, floats
    and decimals are truncated; anything else (booleans, tables...), a value of 0 or less,
    or one above :data:`MAX_DELAY_MS` means no delay.
    """
    if not headers:
        return None
    value = headers.get(HEADER)
    delay: int | None = None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        delay = value
    elif isinstance(value, str | bytes):
        try:
            delay = int(value)
        except ValueError:
            return None
    elif isinstance(value, float | Decimal):
        if not math.isfinite(value):
            return None
        delay = int(value)
    if delay is None or delay <= 0 or delay > MAX_DELAY_MS:
        return None
    return delay


@register
class DelayedMessageExchange(ExchangeType[D]):
    """Routes with the type named by ``x-delayed-type``."""

    type_name = TYPE_NAME

    def __init__(self, arguments: Mapping[str, object]) -> None:
        inner_name = arguments.get(ARGUMENT)
        if isinstance(inner_name, bytes):
            inner_name = inner_name.decode("utf-8", "replace")
        inner = get_exchange_type(inner_name) if isinstance(inner_name, str) else None
        if inner is None or inner is DelayedMessageExchange:
            raise PreconditionFailed(
                f"Invalid argument, '{ARGUMENT}' must be an existing exchange type")
        self.inner_type_name: str = inner_name  # type: ignore[assignment]  # checked above
        self.inner: ExchangeType[Any] = inner(arguments)
        # Messages the server holds for this exchange until they are due (kept up to date by
        # the server; the management API shows it as RabbitMQ's plugin does).
        self.messages_delayed = 0

    def bind(self, destination: D, routing_key: str, arguments: Mapping[str, object]) -> bool:
        return self.inner.bind(destination, routing_key, arguments)

    def unbind(self, destination: D, routing_key: str, arguments: Mapping[str, object]) -> bool:
        return self.inner.unbind(destination, routing_key, arguments)

    def route(self, message: Routable) -> Collection[D]:
        routed: Collection[D] = self.inner.route(message)
        return routed

    def bindings(self) -> Iterator[Binding[D]]:
        return self.inner.bindings()

    def unbind_destination(self, destination: D) -> int:
        return self.inner.unbind_destination(destination)

    def __len__(self) -> int:
        return len(self.inner)
