"""One AMQP channel: content assembly, the method handlers, deliveries and acknowledgements.

Theory of operation:
- Handlers are ``on_<class>_<method>`` methods found once through :data:`HANDLERS`.
- A publish arrives as three steps (method, header, body frames); ``_publish``,
  ``_header`` and ``_body_parts`` hold the message being assembled. Any other frame on the
  channel in between is 505 UNEXPECTED_FRAME (checked by the connection).
- ``unacked`` maps delivery tags to deliveries in tag order (tags only grow, and dicts keep
  insertion order), so ``multiple`` acks walk from the front.
- A closed channel returns every unacked delivery to its queue at the original position,
  marked redelivered.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pamqp import commands
from pamqp.base import Frame as Method

from amqpd.broker import routing
from amqpd.broker.delayed import is_delayed
from amqpd.broker.lease import LEASE_EXCHANGE, parse_lease
from amqpd.broker.message import Message, QueueEntry, route_for
from amqpd.broker.priority import consumer_priority
from amqpd.broker.queue import Queue
from amqpd.broker.transaction import PendingPublish, PendingSettle, Transaction
from amqpd.broker.vhost import generate_name
from amqpd.protocol import codec
from amqpd.protocol.errors import ChannelError, ConnectionLevelError
from amqpd.session import reply_to, trace
from amqpd.session.consumer import Consumer
from amqpd.session.declarations import DeclarationMethods
from amqpd.session.trace import TRACING

if TYPE_CHECKING:
    from amqpd.session.connection import Connection


# Ready messages in a consumed queue above which its publishers yield to its consumers.
FLOW_BACKLOG = 1000


class ChannelState(enum.Enum):
    """Lifecycle of a channel."""

    OPEN = "open"
    #: We sent channel.close and wait for close-ok; everything else is dropped.
    CLOSING = "closing"


class Delivery:
    """An unacknowledged delivery: what was sent, from which queue, to whom, and until when
    the consumer may take to acknowledge it (``deadline``, monotonic seconds, or None)."""

    __slots__ = ("consumer", "deadline", "entry", "queue")

    def __init__(
        self, entry: QueueEntry, queue: Queue, consumer: Consumer | None,
        deadline: float | None,
    ):
        self.entry = entry
        self.queue = queue
        self.consumer = consumer
        self.deadline = deadline


def parse_expiration(value: object) -> int:
    """The expiration property: a string of a non-negative integer of milliseconds.

    Raises:
        ChannelError: 406 as RabbitMQ does for anything else.
    """
    text = value.decode() if isinstance(value, bytes) else value
    if isinstance(text, str) and text.isdigit() and text.isascii():
        return int(text)
    raise ChannelError(406, f"invalid expiration '{value}': expected milliseconds as digits",
                       60, 40)


class Channel(DeclarationMethods):  # and TransactionMethods, its base
    """State and handlers of one channel of a connection."""

    def __init__(self, connection: Connection, channel_id: int):
        self.connection = connection
        self.id = channel_id
        self.state = ChannelState.OPEN
        self.active = True  # channel.flow
        self.consumers: dict[str, Consumer] = {}
        self.unacked: dict[int, Delivery] = {}
        self.unacked_count = 0
        self.prefetch_count = 0
        self.global_prefetch_count = 0
        self._next_delivery_tag = 1
        self.confirm_mode = False
        self._publish_seq = 0
        # (publish seq, ack?, batch that must be durable first or 0), in publish order.
        self._confirms: list[tuple[int, bool, int]] = []
        self._durable_callback_batch = 0
        self._publish: codec.PublishFields | None = None
        self._header: bytes | None = None
        self._body_size = 0
        self._body_received = 0
        self._body_parts: list[bytes | memoryview] = []
        self.transaction: Transaction | None = None
        # Deliveries have ack deadlines only when some queue asks for a consumer timeout.
        self.has_deadlines = False
        # The broker's event counters (management API rates): one increment per event.
        self.stats = connection.broker.stats
        self.stats.channel_created += 1

    @property
    def expecting_content(self) -> bool:
        """True between basic.publish and the last body frame."""
        return self._publish is not None

    # -- dispatch ----------------------------------------------------------------------

    def handle_method(self, method: Method) -> None:
        """Run the handler of a decoded method."""
        handler = HANDLERS.get(type(method))
        if handler is None:
            raise ConnectionLevelError(
                540, f"{codec.method_name(method)} is not implemented",
                *_ids(method),
            )
        try:
            handler(self, method)
        except ChannelError as exc:
            if not exc.class_id:
                exc.class_id, exc.method_id = _ids(method)
            raise
        except ConnectionLevelError as exc:
            if not exc.class_id:
                exc.class_id, exc.method_id = _ids(method)
            raise

    # -- publishing (hot path) ---------------------------------------------------------

    def begin_publish(self, fields: codec.PublishFields) -> None:
        """basic.publish: remember the routing data until the content is complete."""
        if fields.immediate:
            raise ConnectionLevelError(540, "immediate=true", 60, 40)
        self._publish = fields
        connection = self.connection
        if not connection.is_publisher:
            connection.is_publisher = True
            if connection.broker.alarms:
                connection.set_blocked(connection.broker.alarms)

    def on_content_header(self, payload: bytes) -> None:
        """Content header of the message being published."""
        if self._publish is None or self._header is not None:
            raise ConnectionLevelError(
                505, f"content header on channel {self.id} without a basic.publish before it"
            )
        if len(payload) < 14:
            raise ConnectionLevelError(502, "content header frame is truncated")
        if codec.header_class_id(payload) != 60:
            raise ConnectionLevelError(
                505, f"content header for class {codec.header_class_id(payload)}, expected 60"
            )
        codec.check_properties(payload)  # decoded lazily later, on any connection: check now
        size = codec.header_body_size(payload)
        limit = self.connection.settings.max_message_size
        if size > limit:
            self._reset_content()
            raise ChannelError(
                406, f"message size {size} is larger than configured max size {limit}", 60, 40
            )
        self._header = payload
        self._body_size = size
        if size == 0:
            self._finish_publish(b"")

    def on_content_body(self, payload: bytes | memoryview) -> None:
        """One body frame (or piece of one) of the message being published: a view into an
        immutable read for large ones (protocol/framing.py), joined once into the body."""
        if self._header is None:
            raise ConnectionLevelError(
                505, f"content body on channel {self.id} without a content header before it"
            )
        received = self._body_received + len(payload)
        if received > self._body_size:
            raise ConnectionLevelError(
                505,
                f"content body of {received} bytes exceeds the {self._body_size} bytes "
                "announced in the content header",
            )
        if received == self._body_size and not self._body_parts:
            self._finish_publish(payload if isinstance(payload, bytes) else bytes(payload))
            return
        self._body_parts.append(payload)
        self._body_received = received
        if received == self._body_size:
            self._finish_publish(b"".join(self._body_parts))

    def _reset_content(self) -> None:
        self._publish = None
        self._header = None
        self._body_size = 0
        self._body_received = 0
        self._body_parts = []

    def _finish_publish(self, body: bytes) -> None:
        fields = self._publish
        header = self._header
        assert fields is not None and header is not None
        self._reset_content()
        flags = codec.header_flags(header)
        route = fields.route
        if route is None:
            route = fields.route = route_for(fields.exchange, fields.routing_key)
        message = Message(route, header, body)  # type: ignore[arg-type]
        if flags & codec.FLAG_EXPIRATION:
            expiration = message.properties.expiration
            if expiration is not None:
                message.ttl_ms = parse_expiration(expiration)
        if flags & reply_to.FLAG_REPLY_TO:  # direct reply-to: amqpd.session.reply_to
            message = reply_to.rewrite(self, message)
        if flags & 0x0010:  # user-id set: RabbitMQ checks it names the authenticated user
            user_id = message.properties.user_id
            if user_id is not None and user_id != self.connection.user_name:
                raise ChannelError(
                    406,
                    f"user_id property set to '{user_id}' but authenticated user was "
                    f"'{self.connection.user_name}'",
                    60, 40,
                )
        if TRACING:
            trace.published(message, self.connection.last_received)
        stats = self.stats
        stats.publish += 1
        stats.size_counts[(len(body) - 1).bit_length()] += 1  # rabbitmq_message_size_bytes
        stats.size_sum += len(body)
        if self.confirm_mode:
            self._publish_seq += 1
        if fields.exchange == LEASE_EXCHANGE:
            self._extend_lease(message)
            accepted = True
        elif self.transaction is not None:
            self._check_exchange(fields.exchange)
            self.transaction.actions.append(PendingPublish(fields, message))
            return
        else:
            journal = self.connection.broker.journal
            writes = journal.writes
            accepted = self._route(fields, message)
            if self.confirm_mode and journal.writes != writes:
                # A persistent message reached a durable queue: confirm it once it is on disk.
                batch = journal.batch_number
                self._confirms.append((self._publish_seq, accepted, batch))
                if self._durable_callback_batch != batch:
                    self._durable_callback_batch = batch
                    journal.after_commit(self._durable_confirms_ready)
                return
        if self.confirm_mode:
            self._confirms.append((self._publish_seq, accepted, 0))
            self.connection.confirms_pending.add(self)

    def _durable_confirms_ready(self) -> None:
        if self.state is ChannelState.OPEN and self.connection.channels.get(self.id) is self:
            self.flush_confirms()

    def _check_exchange(self, name: str) -> Any:
        vhost = self.connection.vhost
        self._allow("write", "exchange", name)
        exchange = vhost.exchanges.get(name)
        if exchange is None:
            raise ChannelError(404, f"no exchange '{name}' in vhost '{vhost.name}'", 60, 40)
        if exchange.internal:
            raise ChannelError(403, f"cannot publish to internal {exchange.describe()}", 60, 40)
        return exchange

    def _route(self, fields: codec.PublishFields, message: Message) -> bool:
        """Route and enqueue; False when a queue refused the message (reject-publish)."""
        vhost = self.connection.vhost
        exchange = self._check_exchange(fields.exchange)
        if not fields.exchange and fields.routing_key.startswith(reply_to.PREFIX):
            return reply_to.route(self, fields.mandatory, message)
        if is_delayed(exchange) and vhost.delayed.hold(exchange, message):
            if fields.mandatory:  # as the plugin: nothing is routed now, so it comes back
                self.connection.write_return(self.id, 312, "NO_ROUTE", message)
            return True
        queues = routing.route(exchange, message, vhost.queues, vhost.get_exchange,
                               vhost.delayed.hold)
        if TRACING:
            trace.routed(message)
        accepted = True
        if queues:
            if self.connection.broker.store_failure and message.persistent and \
                    any(queue.durable for queue in queues):
                return False  # the store failed: refused as by reject-publish (README)
            if routing.has_sender_selected(message) and message.headers and \
                    "BCC" in message.headers:
                message = _without_bcc(message)
            for queue in queues:
                if not queue.push(message):
                    accepted = False
                if queue.consumers and len(queue.ready) > FLOW_BACKLOG:
                    # Consumers are falling behind this publisher: the shell lets them
                    # catch up before reading more from it (RabbitMQ's flow control).
                    self.connection.flow_queues.add(queue)
        elif fields.mandatory:
            self.stats.return_unroutable += 1
            self.connection.write_return(self.id, 312, "NO_ROUTE", message)
        else:
            self.stats.drop_unroutable += 1
        return accepted

    def _extend_lease(self, message: Message) -> None:
        request = parse_lease(message.headers)
        delivery = self.unacked.get(request.delivery_tag)
        if delivery is None:
            raise ChannelError(
                406, f"cannot extend the lease of unknown delivery tag {request.delivery_tag}",
                60, 40,
            )
        delivery.deadline = delivery.queue.extend_lease(self.connection.clock(), request.extend_ms)
        self.has_deadlines = True

    def flush_confirms(self) -> None:
        """Send the confirms that are ready, coalescing runs of acks into one
        ``multiple=true`` ack. A confirm waiting for the disk holds back the ones after it,
        so a multiple ack never covers a message that is not yet durable."""
        pending = self._confirms
        if not pending:
            return
        journal = self.connection.broker.journal
        committed, lost = journal.committed, journal.lost_from  # lost: see batch_lost
        ready = 0
        for _, _, batch in pending:
            if batch > committed and not (lost and batch >= lost):
                break
            ready += 1
        if not ready:
            return
        sending, self._confirms = pending[:ready], pending[ready:]
        if lost:  # batches from lost_from on never reached the disk: nacked, never acked
            sending = [(seq, ok and not (b and b >= lost), b) for seq, ok, b in sending]
        self.stats.confirm += ready
        write = self.connection.write_method
        run_start = 0
        for index in range(ready + 1):
            boundary = index == ready or not sending[index][1]
            if boundary and index > run_start:
                last = sending[index - 1][0]
                write(self.id, commands.Basic.Ack(last, multiple=index - run_start > 1))
            if index < ready and not sending[index][1]:
                write(self.id, commands.Basic.Nack(sending[index][0], False, False))
                run_start = index + 1

    # -- delivering --------------------------------------------------------------------

    def shares_credit(self) -> bool:
        """A channel-wide prefetch (basic.qos global=true): one credit for all consumers."""
        return self.global_prefetch_count > 0

    def deliver(self, consumer: Consumer, entry: QueueEntry) -> None:
        """Send one message to a consumer of this channel."""
        tag = self._next_delivery_tag
        self._next_delivery_tag = tag + 1
        queue = consumer.queue
        self.connection.write_deliver(self.id, consumer.tag_bytes, tag, entry)
        if consumer.no_ack:
            self.stats.deliver_no_ack += 1
            queue.acknowledge(entry)
            return
        self.stats.deliver += 1
        self.unacked[tag] = Delivery(entry, queue, consumer, self._deadline(queue))
        consumer.unacked += 1
        self.unacked_count += 1

    def _deadline(self, queue: Queue) -> float | None:
        timeout = queue.policy.consumer_timeout
        if timeout is None:
            return None
        self.has_deadlines = True
        return self.connection.clock() + timeout / 1000.0

    def cancel_by_server(self, consumer: Consumer) -> None:
        """The queue went away: forget the consumer and tell the client if it listens."""
        self.consumers.pop(consumer.tag, None)
        if self.connection.client_capability("consumer_cancel_notify"):
            self.send_server_cancel(consumer.tag)  # after delete-ok if this channel deletes

    # -- acknowledgements --------------------------------------------------------------

    def _take_deliveries(self, delivery_tag: int, multiple: bool) -> list[Delivery]:
        unacked = self.unacked
        if multiple:
            if delivery_tag and delivery_tag not in unacked:
                raise ChannelError(406, f"unknown delivery tag {delivery_tag}")
            taken = []
            for tag in list(unacked):
                if delivery_tag and tag > delivery_tag:
                    break
                taken.append(unacked.pop(tag))
            return taken
        delivery = unacked.pop(delivery_tag, None)
        if delivery is None:
            raise ChannelError(406, f"unknown delivery tag {delivery_tag}")
        return [delivery]

    def _settle(self, deliveries: list[Delivery], requeue: bool | None) -> None:
        """Ack (requeue None), reject/nack (False: drop or dead-letter) or requeue (True)."""
        if requeue is None:
            self.stats.ack += len(deliveries)
        touched: dict[Queue, list[QueueEntry]] = {}
        for delivery in deliveries:
            consumer = delivery.consumer
            if consumer is not None:
                consumer.unacked -= 1
            self.unacked_count -= 1
            queue = delivery.queue
            entries = touched.get(queue)
            if entries is None:
                entries = touched[queue] = []
            if requeue:
                entries.append(delivery.entry)
            elif requeue is None:
                queue.acknowledge(delivery.entry)
            else:
                queue.reject(delivery.entry)
        for queue, entries in touched.items():
            if entries:
                queue.requeue(entries)
            elif queue.consumers and queue.has_ready:
                queue.dispatch()
        # Credit freed on this channel may unblock consumers of other queues (global qos).
        if self.global_prefetch_count:
            for consumer in list(self.consumers.values()):
                if consumer.queue not in touched and consumer.queue.has_ready:
                    consumer.queue.dispatch()

    def _settle_or_hold(self, delivery_tag: int, multiple: bool, requeue: bool | None) -> None:
        transaction = self.transaction
        if transaction is None:
            self._settle(self._take_deliveries(delivery_tag, multiple), requeue)
            return
        # In a transaction the tags are checked now and settled at commit.
        tags = self._pending_tags(delivery_tag, multiple, transaction.settled_tags)
        transaction.settled_tags.update(tags)
        transaction.actions.append(PendingSettle(tags, requeue))

    def _pending_tags(self, delivery_tag: int, multiple: bool, held: set[int]) -> list[int]:
        unacked = self.unacked
        if multiple:
            if delivery_tag and (delivery_tag not in unacked or delivery_tag in held):
                raise ChannelError(406, f"unknown delivery tag {delivery_tag}")
            return [t for t in unacked if (not delivery_tag or t <= delivery_tag)
                    and t not in held]
        if delivery_tag not in unacked or delivery_tag in held:
            raise ChannelError(406, f"unknown delivery tag {delivery_tag}")
        return [delivery_tag]

    def on_basic_ack(self, method: commands.Basic.Ack) -> None:
        """basic.ack: the deliveries are done."""
        self._settle_or_hold(method.delivery_tag or 0, bool(method.multiple), None)

    def acknowledge(self, delivery_tag: int, multiple: bool) -> None:
        """basic.ack from the connection's fast path (same checks and errors)."""
        try:
            self._settle_or_hold(delivery_tag, multiple, None)
        except ChannelError as exc:
            if not exc.class_id:  # as handle_method does for the decoded path
                exc.class_id, exc.method_id = 60, 80
            raise

    def on_basic_nack(self, method: commands.Basic.Nack) -> None:
        """basic.nack: requeue, or drop / dead-letter."""
        self._settle_or_hold(method.delivery_tag or 0, bool(method.multiple),
                             bool(method.requeue))

    def on_basic_reject(self, method: commands.Basic.Reject) -> None:
        """basic.reject: one delivery, requeue, or drop / dead-letter."""
        self._settle_or_hold(method.delivery_tag or 0, False, bool(method.requeue))

    # -- ack deadlines -----------------------------------------------------------------

    def check_deadlines(self, now: float) -> None:
        """Cancel consumers whose deliveries passed their ack deadline (consumer timeout).

        RabbitMQ closes the channel with 406; amqpd does that only for clients that cannot
        hear a server-sent basic.cancel. Otherwise it cancels just the late consumer and
        requeues its unacked messages, so the channel's other consumers carry on.
        """
        if not self.has_deadlines:
            return
        late: dict[Consumer | None, Delivery] = {}
        any_deadline = False
        for delivery in self.unacked.values():
            deadline = delivery.deadline
            if deadline is None:
                continue
            any_deadline = True
            if deadline <= now and delivery.consumer not in late:
                late[delivery.consumer] = delivery
        self.has_deadlines = any_deadline
        if not late:
            return
        notify = self.connection.client_capability("consumer_cancel_notify")
        if None in late or not notify:
            delivery = next(iter(late.values()))
            timeout = delivery.queue.policy.consumer_timeout
            raise ChannelError(
                406,
                f"delivery acknowledgement on channel {self.id} timed out. Timeout value "
                f"used: {timeout} ms. This timeout value can be configured, see consumers "
                "doc guide to learn more",
            )
        for consumer in late:
            assert consumer is not None
            self._expire_consumer(consumer)

    def _expire_consumer(self, consumer: Consumer) -> None:
        self.consumers.pop(consumer.tag, None)
        self.connection.write_method(self.id, commands.Basic.Cancel(consumer.tag, True))
        deliveries = [d for d in self.unacked.values() if d.consumer is consumer]
        for tag in [t for t, d in self.unacked.items() if d.consumer is consumer]:
            del self.unacked[tag]
        consumer.queue.remove_consumer(consumer)
        self._settle(deliveries, True)

    def on_basic_recover(self, method: commands.Basic.Recover) -> None:
        """basic.recover: redeliver every unacked message (requeue=false is treated the same,
        since redelivering to the same consumer gives no guarantee a requeue does not)."""
        self.requeue_all()
        self.connection.write_method(self.id, commands.Basic.RecoverOk())

    def requeue_all(self) -> None:
        """Return every unacked delivery of this channel to its queue."""
        deliveries = list(self.unacked.values())
        self.unacked.clear()
        if self.transaction is not None:
            self.transaction.clear()
        self._settle(deliveries, True)

    # -- closing -----------------------------------------------------------------------

    def release(self) -> None:
        """The channel is gone: cancel its consumers and return its unacked messages."""
        consumers = list(self.consumers.values())
        self.consumers.clear()
        for consumer in consumers:
            consumer.queue.remove_consumer(consumer)
        self.requeue_all()
        self._reset_content()
        reply_to.release(self)
        self._confirms = []

    # -- channel class -----------------------------------------------------------------

    def on_channel_close(self, method: commands.Channel.Close) -> None:
        """The client closes the channel."""
        self.connection.close_channel_by_client(self)

    def on_channel_close_ok(self, method: commands.Channel.CloseOk) -> None:
        """Close-ok for a channel we did not close: ignore (the connection handles ours)."""

    def on_channel_flow(self, method: commands.Channel.Flow) -> None:
        """channel.flow: the client pauses or resumes deliveries to this channel."""
        self.active = bool(method.active)
        self.connection.write_method(self.id, commands.Channel.FlowOk(self.active))
        if self.active:
            self.dispatch_consumers()

    def on_channel_flow_ok(self, method: commands.Channel.FlowOk) -> None:
        """We never send channel.flow, so a flow-ok needs nothing."""

    def on_channel_open(self, method: commands.Channel.Open) -> None:
        """channel.open on a channel that is already open."""
        raise ConnectionLevelError(504, "second 'channel.open' seen", 20, 10)

    def dispatch_consumers(self) -> None:
        """Let the queues of this channel's consumers deliver again: each queue once, as
        one dispatch serves all its consumers (10,000 consumers of one stream on this
        channel would otherwise cost 10,000 dispatches of 10,000 readers)."""
        for queue in {consumer.queue: None for consumer in self.consumers.values()}:
            if queue.has_ready:
                queue.dispatch()

    # -- basic class -------------------------------------------------------------------

    def on_basic_qos(self, method: commands.Basic.Qos) -> None:
        """basic.qos with RabbitMQ's meaning of ``global``."""
        if method.prefetch_size:
            raise ConnectionLevelError(540, f"prefetch_size!={method.prefetch_size}", 60, 10)
        if method.global_:
            self.global_prefetch_count = method.prefetch_count
        else:
            self.prefetch_count = method.prefetch_count
        self.connection.write_method(self.id, commands.Basic.QosOk())
        self.dispatch_consumers()

    def on_basic_consume(self, method: commands.Basic.Consume) -> None:
        """basic.consume."""
        if method.queue == reply_to.QUEUE:
            reply_to.consume(self, method)
            return
        name = self._queue_name(method.queue)
        self._allow("read", "queue", name)
        queue = self.vhost.queue_or_404(name, self.connection)
        tag = method.consumer_tag or generate_name("amq.ctag-")
        if tag in self.consumers:
            raise ConnectionLevelError(530, f"attempt to reuse consumer tag '{tag}'", 60, 20)
        if (method.exclusive and queue.consumers) or any(
            other.exclusive for other in queue.consumers
        ):
            raise ChannelError(403, f"{queue.describe()} in exclusive use")
        queue.check_consume(method.no_ack, self.prefetch_count, method.arguments or {})
        priority = consumer_priority(method.arguments, queue.describe())
        consumer = Consumer(
            tag, self, queue, method.no_ack, method.exclusive, self.prefetch_count,
            method.arguments or {},
        )
        self.consumers[tag] = consumer
        if not method.nowait:
            self.connection.write_method(self.id, commands.Basic.ConsumeOk(tag))
        queue.add_consumer(consumer, priority)

    def on_basic_cancel(self, method: commands.Basic.Cancel) -> None:
        """basic.cancel; its unacked deliveries stay unacked on the channel (RabbitMQ)."""
        consumer = self.consumers.pop(method.consumer_tag or "", None)
        if not method.nowait:
            self.connection.write_method(self.id, commands.Basic.CancelOk(method.consumer_tag))
        if consumer is not None:
            consumer.queue.remove_consumer(consumer)
        else:
            reply_to.cancel(self, method.consumer_tag)

    def on_basic_get(self, method: commands.Basic.Get) -> None:
        """basic.get: one message or get-empty."""
        name = self._queue_name(method.queue)
        self._allow("read", "queue", name)
        queue = self.vhost.queue_or_404(name, self.connection)
        entry = queue.take()
        if entry is None:
            self.stats.get_empty += 1
            self.connection.write_method(self.id, commands.Basic.GetEmpty())
            return
        tag = self._next_delivery_tag
        self._next_delivery_tag = tag + 1
        self.connection.write_get_ok(self.id, tag, entry, queue.message_count)
        if method.no_ack:
            self.stats.get_no_ack += 1
            queue.acknowledge(entry)
        else:
            self.stats.get += 1
            self.unacked[tag] = Delivery(entry, queue, None, self._deadline(queue))
            self.unacked_count += 1

    def on_basic_recover_async(self, method: commands.Basic.RecoverAsync) -> None:
        """basic.recover-async (deprecated): requeue without a reply."""
        self.requeue_all()


def _ids(method: Method) -> tuple[int, int]:
    index = int(getattr(method, "index", 0))
    return index >> 16, index & 0xFFFF


def _without_bcc(message: Message) -> Message:
    """RabbitMQ removes the BCC header before delivery so receivers cannot see it."""
    properties = codec.decode_properties(message.header_payload)
    headers = dict(properties.headers or {})
    headers.pop("BCC", None)
    properties.headers = headers
    return message.with_properties(properties)


HandlerMap = dict[type, Callable[[Channel, Any], None]]


def _build_handlers() -> HandlerMap:
    table: HandlerMap = {}
    for amqp_class in (commands.Channel, commands.Exchange, commands.Queue, commands.Basic,
                       commands.Confirm, commands.Tx):
        for name, member in vars(amqp_class).items():
            if not isinstance(member, type) or name == "Properties":
                continue
            snake = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
            handler = getattr(Channel, f"on_{amqp_class.__name__.lower()}_{snake}", None)
            if handler is not None:
                table[member] = handler
    return table


HANDLERS: HandlerMap = _build_handlers()
