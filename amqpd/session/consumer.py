"""A consumer: one basic.consume subscription of a channel to a queue, with its credit.

It implements the broker's :class:`~amqpd.broker.consumer.QueueConsumer`: the queue asks
``can_take`` and calls ``deliver``; both end in the channel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from amqpd.broker.message import QueueEntry
    from amqpd.broker.queue import Queue
    from amqpd.session.channel import Channel


class Consumer:
    """A subscription; ``can_take`` is the single place where credit is decided."""

    __slots__ = (
        "arguments",
        "channel",
        "deliver",
        "exclusive",
        "no_ack",
        "prefetch_count",
        "queue",
        "tag",
        "tag_bytes",
        "unacked",
    )

    def __init__(
        self,
        tag: str,
        channel: Channel,
        queue: Queue,
        no_ack: bool,
        exclusive: bool,
        prefetch_count: int,
        arguments: Mapping[str, object],
    ):
        self.tag = tag
        self.tag_bytes = tag.encode("utf-8")
        self.channel = channel
        self.queue = queue
        self.no_ack = no_ack
        self.exclusive = exclusive
        # RabbitMQ-compat: basic.qos global=false sets the prefetch of consumers created after it.
        self.prefetch_count = prefetch_count
        self.arguments = arguments
        self.unacked = 0
        # The queue's dispatch loop calls this once per message: a partial goes straight to
        # the channel without a Python frame of its own.
        self.deliver: Callable[[QueueEntry], None] = partial(channel.deliver, self)

    @property
    def member(self) -> Channel:
        """The channel: the group member of a stream consumer group (broker.consumer)."""
        return self.channel

    def can_take(self) -> bool:
        """Whether one more delivery may go to this consumer now.

        Both the consumer's and the channel's (global) credit are checked before either is
        taken, so a refusal never leaves one of them half-charged.
        """
        channel = self.channel
        connection = channel.connection
        if connection.congested and channel.active:
            connection.held_back = True  # the shell calls on_drained once output drains
            return False
        return self.has_credit()

    def has_credit(self) -> bool:
        """Whether a delivery could go to this consumer now, without side effects (the
        management API and the dashboard read it; ``can_take`` also notes a congested
        connection so that its deliveries resume once the output drains)."""
        channel = self.channel
        if not channel.active or channel.connection.congested:
            return False
        if self.no_ack:
            return True
        if self.prefetch_count and self.unacked >= self.prefetch_count:
            return False
        limit = channel.global_prefetch_count
        return not (limit and channel.unacked_count >= limit)

    def cancel_by_server(self) -> None:
        """The queue went away: the channel sends basic.cancel if the client wants it."""
        self.channel.cancel_by_server(self)
