"""What the broker sees of the sessions above it: consumers, and queue owners.

A queue hands its messages to a :class:`QueueConsumer`; the session layer's
``amqpd.session.consumer.Consumer`` implements it (credit, the channel's write). Keeping
the protocol here is what lets the broker stay ignorant of frames and channels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol, TypeAlias

if TYPE_CHECKING:
    from amqpd.broker.message import QueueEntry

#: The connection that declared an exclusive queue. The broker only compares owners by
#: identity, so any object will do; the session layer passes its Connection.
QueueOwner: TypeAlias = object


class ConsumerMember(Protocol):
    """What receives a consumer's deliveries in order and holds their unacked ones (the
    session layer's channel). Stream consumer groups divide their work between members."""

    def shares_credit(self) -> bool:
        """Whether its consumers take from one credit (a channel-wide prefetch, basic.qos
        with global=true): then a settle by one of them may let another one take."""


class QueueConsumer(Protocol):
    """One subscription to a queue, as the queue's dispatch loop uses it."""

    @property
    def tag(self) -> str:
        """The consumer tag (unique per channel)."""

    @property
    def exclusive(self) -> bool:
        """True for an exclusive consumer (no other consumer may join the queue)."""

    @property
    def arguments(self) -> Mapping[str, object]:
        """The basic.consume arguments (x-priority, x-stream-offset, ...)."""

    @property
    def member(self) -> ConsumerMember:
        """Its channel, as a member of a stream consumer group."""

    def can_take(self) -> bool:
        """Whether one more delivery may go to this consumer now (credit, flow, output)."""

    def has_credit(self) -> bool:
        """The same answer as ``can_take`` without its side effects (monitoring reads it)."""

    def deliver(self, entry: QueueEntry) -> None:
        """Send ``entry`` to the client; the queue has already marked it delivered."""

    def cancel_by_server(self) -> None:
        """The queue is gone: tell the client its subscription ended (basic.cancel)."""
