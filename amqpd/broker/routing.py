"""Route a message from an exchange to queues.

Walks exchange-to-exchange bindings with a visited set, so every queue gets a message at
most once even when bindings form a cycle or a diamond; tries an exchange's alternate
exchange when it routes nowhere; adds the sender-selected routing keys from the ``CC``
and ``BCC`` headers (RabbitMQ extension); and offers a message that reaches an
``x-delayed-message`` exchange through an exchange-to-exchange binding or as an alternate
exchange to ``hold`` (the delayed-message plugin delays in the exchange type's route
callback, so such arrivals are delayed too; a held message goes no further now).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from amqpd.broker.exchange import Exchange
from amqpd.broker.message import Message
from amqpd.broker.queue import Queue
from exchanges import Routable
from exchanges.delayed import TYPE_NAME as DELAYED_TYPE

ExchangeLookup = Callable[[str], Exchange | None]
# Holds a message at a delayed exchange; False when its x-delay asks for no delay.
HoldHook = Callable[[Exchange, Message], bool]


class _Rerouted:
    """A view of a message with another routing key, for CC/BCC routing."""

    __slots__ = ("_message", "routing_key")

    def __init__(self, message: Message, routing_key: str):
        self._message = message
        self.routing_key = routing_key

    @property
    def headers(self) -> Mapping[str, object] | None:
        return self._message.headers


def sender_selected_keys(message: Message) -> list[str]:
    """Routing keys from the CC and BCC headers (both arrays of strings)."""
    headers = message.headers
    if not headers:
        return []
    keys: list[str] = []
    for name in ("CC", "BCC"):
        value = headers.get(name)
        if isinstance(value, list):
            # pamqp gives a long string as bytes only when it is not UTF-8: no binding key
            # (UTF-8 shortstrs) can match it, so it is skipped, not decoded (that raised).
            keys.extend(item for item in value if isinstance(item, str))
    return keys


def has_sender_selected(message: Message) -> bool:
    """Cheap checks before decoding the headers table: most messages carry no headers, and
    most headers no CC/BCC."""
    payload = message.header_payload
    if not payload[12] & 0x20:  # the headers bit of the first property-flags word
        return False
    return b"\x02CC" in payload or b"\x03BCC" in payload


def _held(hold: HoldHook | None, exchange: Exchange, message: Message) -> bool:
    """Whether the delayed exchange ``exchange``, reached on the way, holds the message."""
    return hold is not None and exchange.type_name == DELAYED_TYPE and hold(exchange, message)


def route(
    exchange: Exchange,
    message: Message,
    queues_by_name: dict[str, Queue],
    lookup: ExchangeLookup,
    hold: HoldHook | None = None,
) -> Sequence[Queue]:
    """Every queue the message goes to, each once, in a stable order."""
    if exchange.kind is None:
        queue = queues_by_name.get(message.routing_key)
        return (queue,) if queue is not None else ()
    if has_sender_selected(message):
        # RabbitMQ routes on every key (the routing key, then CC, then BCC) at every exchange.
        routables: list[Routable] = [message]
        routables += [_Rerouted(message, key) for key in sender_selected_keys(message)]
    else:
        routables = [message]
    found: dict[Queue, None] = {}
    visited = {exchange}
    pending = [exchange]
    while pending:
        current = pending.pop()
        kind = current.kind
        if kind is None:  # the default exchange cannot be a binding destination
            continue
        destinations: list[object] = []
        for routable in routables:
            destinations.extend(kind.route(routable))
        if not destinations and current.alternate is not None:
            alternate = lookup(current.alternate)
            if alternate is not None and alternate not in visited:
                visited.add(alternate)
                if not _held(hold, alternate, message):
                    pending.append(alternate)
            continue
        for destination in destinations:
            if type(destination) is Queue:
                found[destination] = None
            elif isinstance(destination, Exchange):
                if destination not in visited:
                    visited.add(destination)
                    if not _held(hold, destination, message):
                        pending.append(destination)
            elif isinstance(destination, Queue):  # a subclass (PriorityQueue): checked last,
                found[destination] = None  # so plain queues keep the exact-type fast test
    return list(found)
