"""Direct reply-to: RPC replies that go straight to the requesting channel, without a queue.

RabbitMQ's extension, with its names and answers (checked against RabbitMQ 3.10):

- A client consumes from the pseudo-queue ``amq.rabbitmq.reply-to`` with no-ack (manual
  acks are 406 ``reply consumer cannot acknowledge``; one such consumer per channel, a second
  is 406 ``reply consumer already set``).
- A request published on that channel with ``reply_to=amq.rabbitmq.reply-to`` leaves with
  ``reply_to`` rewritten to ``amq.rabbitmq.reply-to.<token>``; without the consumer the
  publish is 406 ``fast reply consumer does not exist``.
- A reply published to the default exchange with that name as routing key is delivered to
  the consumer at once (no queue, no store, no prefetch: the consumer is no-ack). A mandatory
  reply to a gone or unknown token comes back as basic.return 312 NO_ROUTE.

The token is 144 random bits, fresh for every basic.consume, and looked up exactly in this
registry: it says nothing about the channel it leads to, so it can be neither guessed nor
edited into another channel's (RabbitMQ encodes the channel's process id next to a random
key). A reply reaches only a consumer in the publisher's own virtual host.

The registry lives here, in the session layer, because a token leads to a channel; the
broker never sees replies. The channel calls this module from a handful of hooks.
"""

from __future__ import annotations

import base64
import os
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from pamqp import commands

from amqpd.broker.message import Message, QueueEntry
from amqpd.broker.vhost import generate_name
from amqpd.protocol import codec
from amqpd.protocol.errors import ChannelError, ConnectionLevelError

if TYPE_CHECKING:
    from amqpd.broker.broker import Broker
    from amqpd.session.channel import Channel

QUEUE = "amq.rabbitmq.reply-to"
PREFIX = QUEUE + "."

# The reply-to bit of the first property-flags word (AMQP 0-9-1 basic properties).
FLAG_REPLY_TO = 0x0200


class ReplyConsumer:
    """The one direct reply-to consumer of a channel."""

    __slots__ = ("channel", "name", "tag", "tag_bytes")

    def __init__(self, channel: Channel, tag: str, name: str):
        self.channel = channel
        self.tag = tag
        self.tag_bytes = tag.encode("utf-8")
        self.name = name  # amq.rabbitmq.reply-to.<token>


class _Registry:
    __slots__ = ("by_channel", "by_name")

    def __init__(self) -> None:
        self.by_name: dict[str, ReplyConsumer] = {}
        self.by_channel: dict[Channel, ReplyConsumer] = {}


# One registry per broker (tests run several brokers in one process).
_REGISTRIES: WeakKeyDictionary[Broker, _Registry] = WeakKeyDictionary()


def _registry(broker: Broker) -> _Registry:
    registry = _REGISTRIES.get(broker)
    if registry is None:
        registry = _REGISTRIES[broker] = _Registry()
    return registry


def consumer_of(channel: Channel) -> ReplyConsumer | None:
    """The channel's direct reply-to consumer, if it has one."""
    registry = _REGISTRIES.get(channel.connection.broker)
    return registry.by_channel.get(channel) if registry is not None else None


def consume(channel: Channel, method: commands.Basic.Consume) -> None:
    """basic.consume of ``amq.rabbitmq.reply-to``."""
    if not method.no_ack:
        raise ChannelError(406, "reply consumer cannot acknowledge", 60, 20)
    registry = _registry(channel.connection.broker)
    if channel in registry.by_channel:
        raise ChannelError(406, "reply consumer already set", 60, 20)
    tag = method.consumer_tag or generate_name("amq.ctag-")
    if tag in channel.consumers:
        raise ConnectionLevelError(530, f"attempt to reuse consumer tag '{tag}'", 60, 20)
    token = base64.urlsafe_b64encode(os.urandom(18)).decode()  # 24 chars, no padding
    consumer = ReplyConsumer(channel, tag, PREFIX + token)
    registry.by_name[consumer.name] = consumer
    registry.by_channel[channel] = consumer
    if not method.nowait:
        channel.connection.write_method(channel.id, commands.Basic.ConsumeOk(tag))


def cancel(channel: Channel, tag: str | None) -> None:
    """basic.cancel of a tag that is no queue consumer: maybe the reply consumer."""
    consumer = consumer_of(channel)
    if consumer is not None and consumer.tag == tag:
        release(channel)


def release(channel: Channel) -> None:
    """The channel closed or cancelled: its token leads nowhere from now on."""
    registry = _REGISTRIES.get(channel.connection.broker)
    if registry is None:
        return
    consumer = registry.by_channel.pop(channel, None)
    if consumer is not None:
        registry.by_name.pop(consumer.name, None)


def rewrite(channel: Channel, message: Message) -> Message:
    """A request with ``reply_to=amq.rabbitmq.reply-to`` leaves with the channel's token
    (other reply_to values pass unchanged)."""
    if message.properties.reply_to != QUEUE:
        return message
    consumer = consumer_of(channel)
    if consumer is None:
        raise ChannelError(406, "fast reply consumer does not exist", 60, 40)
    properties = codec.decode_properties(message.header_payload)
    properties.reply_to = consumer.name
    return message.with_properties(properties)


def route(channel: Channel, mandatory: bool, message: Message) -> bool:
    """A publish to the default exchange with a routing key under ``amq.rabbitmq.reply-to.``:
    deliver it to the consumer the token names, or return / drop it. Always accepted
    (a publisher confirm acks it, as RabbitMQ)."""
    registry = _REGISTRIES.get(channel.connection.broker)
    consumer = registry.by_name.get(message.routing_key) if registry is not None else None
    target = consumer.channel if consumer is not None else None
    if target is None or not _reachable(target, channel):
        if mandatory:
            channel.stats.return_unroutable += 1
            channel.connection.write_return(channel.id, 312, "NO_ROUTE", message)
        else:
            channel.stats.drop_unroutable += 1
        return True
    assert consumer is not None
    # A no-ack delivery: nothing to track, so the channel's own deliver path (credit,
    # unacked map, queue) is not involved; only its delivery tags are shared.
    tag = target._next_delivery_tag
    target._next_delivery_tag = tag + 1
    target.connection.write_deliver(target.id, consumer.tag_bytes, tag, QueueEntry(message, 0))
    target.stats.deliver_no_ack += 1
    return True


def _reachable(target: Channel, publisher: Channel) -> bool:
    target_vhost = target.connection.vhost
    return (target_vhost is not None and target_vhost is publisher.connection.vhost
            and target.connection.channels.get(target.id) is target)


def declare(channel: Channel, method: commands.Queue.Declare) -> None:
    """queue.declare of the pseudo-queue (declare-ok with one consumer and no messages, as
    RabbitMQ, passive or not) or, passively, of a live ``amq.rabbitmq.reply-to.<token>``."""
    name = method.queue
    if name != QUEUE:
        registry = _REGISTRIES.get(channel.connection.broker)
        consumer = registry.by_name.get(name) if registry is not None else None
        if consumer is None or not _reachable(consumer.channel, channel):
            raise ChannelError(404, f"no queue '{name}' in vhost '{channel.vhost.name}'")
    if not method.nowait:
        channel.connection.write_method(channel.id, codec.queue_declare_ok(name, 0, 1))


def is_reply_queue(name: str, passive: bool) -> bool:
    """Whether a queue.declare is one :func:`declare` answers."""
    return name == QUEUE or (passive and name.startswith(PREFIX))
