"""The message as the broker holds it: routing data, the raw content header and the body.

One :class:`Message` is shared by every queue it is routed to; per-queue state (redelivered,
delivery count, position) lives in :class:`QueueEntry`. The content header is kept as the
exact bytes the publisher sent, so properties and headers round-trip byte for byte and are
decoded only when routing or a policy needs them.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from pamqp import commands

from amqpd.protocol import codec

# Rough per-entry overhead of a queued message beyond its body (objects, deque slot):
# what the memory account (journal, pager) charges for each entry on top of the body.
ENTRY_OVERHEAD = 400


class Route:
    """Where a message was published: exchange and routing key, as text and as the UTF-8
    bytes basic.deliver needs. Shared by every message published the same way (see
    :func:`route_for`), so a million queued messages do not hold a million copies."""

    __slots__ = ("exchange", "exchange_bytes", "routing_key", "routing_key_bytes")

    def __init__(self, exchange: str, routing_key: str):
        self.exchange = exchange
        self.routing_key = routing_key
        self.exchange_bytes = exchange.encode("utf-8")
        self.routing_key_bytes = routing_key.encode("utf-8")


_ROUTES: dict[tuple[str, str], Route] = {}
_ROUTES_MAX = 4096


def route_for(exchange: str, routing_key: str) -> Route:
    """The shared :class:`Route` for an exchange and routing key (a bounded cache)."""
    key = (exchange, routing_key)
    route = _ROUTES.get(key)
    if route is None:
        if len(_ROUTES) >= _ROUTES_MAX:
            _ROUTES.clear()  # unbounded key spaces (ids in keys) just stop sharing
        route = _ROUTES[key] = Route(exchange, routing_key)
    return route


class Message:
    """An immutable published message (header payload and body are never copied again)."""

    __slots__ = ("_properties", "body", "header_payload", "message_id", "route", "ttl_ms")

    def __init__(
        self,
        route: Route,
        header_payload: bytes,
        body: bytes,
        ttl_ms: int | None = None,
    ):
        self.route = route
        self.header_payload = header_payload
        self.body = body
        # Per-message TTL from the expiration property, parsed once at publish.
        self.ttl_ms = ttl_ms
        # Assigned by the store when the message is first persisted (0 = never stored).
        self.message_id = 0
        self._properties: commands.Basic.Properties | None = None

    @property
    def exchange(self) -> str:
        """The exchange it was published to."""
        return self.route.exchange

    @property
    def routing_key(self) -> str:
        """The routing key it was published with."""
        return self.route.routing_key

    @property
    def properties(self) -> commands.Basic.Properties:
        """The decoded basic properties (decoded once, on first use)."""
        if self._properties is None:
            self._properties = codec.decode_properties(self.header_payload)
        return self._properties

    @property
    def headers(self) -> Mapping[str, object] | None:
        """The decoded headers table, or None when the publisher sent none."""
        if not codec.header_flags(self.header_payload) & codec.FLAG_HEADERS:
            return None
        headers: dict[str, Any] | None = self.properties.headers
        return headers

    @property
    def persistent(self) -> bool:
        """True when delivery-mode is 2."""
        return codec.delivery_mode(self.header_payload) == 2

    @property
    def size(self) -> int:
        """The body size in bytes."""
        return len(self.body)

    def with_properties(self, properties: commands.Basic.Properties) -> Message:
        """A copy carrying other properties (dead-lettering, BCC stripping); the body is shared."""
        copy = Message(
            self.route,
            codec.encode_header_payload(len(self.body), properties),
            self.body,
            self.ttl_ms,
        )
        copy._properties = properties
        return copy


class CoarseClock:
    """Monotonic seconds, advanced by the broker's ticker (every 0.1 s) instead of read per
    message: stamping an entry then costs one attribute read and no system call, and all the
    entries of one tick share one float object. Readers get ages good to about a tick."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = time.monotonic()


#: The broker's coarse clock (:meth:`amqpd.broker.broker.Broker.tick` advances it).
CLOCK = CoarseClock()


class EntryState(enum.Enum):
    """Where a queue entry is."""

    READY = "ready"
    DELIVERED = "delivered"  # sent to a consumer, not yet settled
    GONE = "gone"  # acked, dropped, expired or dead-lettered


class QueueEntry:
    """A message's place in one queue: its position and its delivery history there.

    ``delivery_count`` counts failed deliveries (returns to the queue); it is what
    ``x-delivery-limit`` is compared with and what ``x-delivery-count`` reports.
    """

    # ClassVar: class attributes (mypyc would take a bare assignment for an instance default).
    READY: ClassVar[EntryState] = EntryState.READY
    DELIVERED: ClassVar[EntryState] = EntryState.DELIVERED
    GONE: ClassVar[EntryState] = EntryState.GONE

    __slots__ = ("delivered_at", "delivery_count", "enqueued_at", "expires_at", "message",
                 "redelivered", "seq", "state")

    def __init__(self, message: Message, seq: int):
        self.message = message
        self.seq = seq
        self.state = EntryState.READY
        self.redelivered = False
        self.delivery_count = 0
        self.expires_at: float | None = None
        # Coarse monotonic times for monitoring (amqpd.metrics: the age of the oldest ready
        # message and of the oldest unacked delivery). An entry read back from the paging
        # file or the store is stamped when it is read back.
        self.enqueued_at = CLOCK.now
        self.delivered_at = 0.0  # set when it goes to a consumer (Queue.dispatch / take)
