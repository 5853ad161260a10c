"""The exchange and queue classes of a channel: declare, delete, bind, unbind, purge.

A mixin of :class:`amqpd.session.channel.Channel`, kept apart because these methods only check
permissions, call the virtual host and answer; the channel's delivery and acknowledgement
state stays in ``channel.py``. Permission checks come before existence checks, as in RabbitMQ.
"""

from __future__ import annotations

from typing import Any

from pamqp import commands

from amqpd.access.permissions import authorize
from amqpd.broker.vhost import generate_name
from amqpd.protocol import codec
from amqpd.protocol.errors import ChannelError
from amqpd.session import reply_to
from amqpd.session.transactions import TransactionMethods


class DeclarationMethods(TransactionMethods):
    """exchange.* and queue.* handlers (``on_<class>_<method>``).

    Stacked on :class:`TransactionMethods` (one chain, the same method order as before)
    because mypyc compiles single inheritance only; ``connection`` and ``id`` come from there.
    """

    #: Consumer tags of this channel cancelled by the queue.delete it is running; None
    #: outside one (see ``on_queue_delete``).
    deferred_cancels: list[str] | None = None

    @property
    def vhost(self) -> Any:
        """The connection's virtual host."""
        return self.connection.vhost

    def send_server_cancel(self, tag: str) -> None:
        """basic.cancel from the server, held back while this channel runs queue.delete."""
        if self.deferred_cancels is not None:
            self.deferred_cancels.append(tag)
        else:
            self.connection.write_method(self.id, commands.Basic.Cancel(tag, True))

    def _allow(self, permission: Any, kind: Any, name: str) -> None:
        """RabbitMQ's configure / write / read permission check (403 naming the resource)."""
        authorize(self.connection.user, self.connection.vhost.name, permission, kind, name)

    # -- exchange class ----------------------------------------------------------------

    def on_exchange_declare(self, method: commands.Exchange.Declare) -> None:
        """exchange.declare."""
        if not method.passive:
            self._allow("configure", "exchange", method.exchange)
            alternate = (method.arguments or {}).get("alternate-exchange")
            if isinstance(alternate, str):
                self._allow("write", "exchange", alternate)
                self._allow("read", "exchange", method.exchange)
        self.vhost.declare_exchange(
            method.exchange,
            method.exchange_type,
            passive=method.passive,
            durable=method.durable,
            auto_delete=method.auto_delete,
            internal=method.internal,
            arguments=method.arguments,
        )
        if not method.nowait:
            self.connection.write_method(self.id, commands.Exchange.DeclareOk())

    def on_exchange_delete(self, method: commands.Exchange.Delete) -> None:
        """exchange.delete."""
        self._allow("configure", "exchange", method.exchange)
        self.vhost.delete_exchange(method.exchange, method.if_unused)
        if not method.nowait:
            self.connection.write_method(self.id, commands.Exchange.DeleteOk())

    def on_exchange_bind(self, method: commands.Exchange.Bind) -> None:
        """exchange.bind (RabbitMQ extension): source -> destination."""
        self._allow("write", "exchange", method.destination)
        self._allow("read", "exchange", method.source)
        destination = self.vhost.destination_exchange(method.destination)
        self.vhost.bind(method.source, destination, method.routing_key, method.arguments)
        if not method.nowait:
            self.connection.write_method(self.id, commands.Exchange.BindOk())

    def on_exchange_unbind(self, method: commands.Exchange.Unbind) -> None:
        """exchange.unbind; as RabbitMQ, unbind-ok when the source, the destination or the
        binding is already gone (an auto-deleted exchange, say): unbinding is idempotent.
        Only the default exchange is refused (403), even when the other side is missing."""
        self._allow("write", "exchange", method.destination)
        self._allow("read", "exchange", method.source)
        vhost = self.vhost
        if method.source == "" or method.destination == "":
            raise ChannelError(403, "operation not permitted on the default exchange")
        destination = vhost.get_exchange(method.destination)
        if destination is not None and vhost.get_exchange(method.source) is not None:
            vhost.unbind(method.source, destination, method.routing_key, method.arguments)
        if not method.nowait:
            self.connection.write_method(self.id, commands.Exchange.UnbindOk())

    # -- queue class -------------------------------------------------------------------

    def on_queue_declare(self, method: commands.Queue.Declare) -> None:
        """queue.declare."""
        name = method.queue
        if name.startswith(reply_to.QUEUE) and reply_to.is_reply_queue(name, method.passive):
            reply_to.declare(self, method)  # type: ignore[arg-type]
            return
        server_named = not name and not method.passive
        if not method.passive:
            if server_named:
                name = generate_name("amq.gen-")
            self._allow("configure", "queue", name)
            dead_letter_exchange = (method.arguments or {}).get("x-dead-letter-exchange")
            if isinstance(dead_letter_exchange, str):
                self._allow("write", "exchange", dead_letter_exchange)
                self._allow("read", "queue", name)
        queue = self.vhost.declare_queue(
            name,
            self.connection,
            passive=method.passive,
            durable=method.durable,
            exclusive=method.exclusive,
            auto_delete=method.auto_delete,
            arguments=method.arguments,
            server_named=server_named,
        )
        self.connection.last_queue_name = queue.name
        if not method.nowait:
            self.connection.write_method(
                self.id,
                codec.queue_declare_ok(queue.name, queue.message_count, len(queue.consumers)),
            )

    def _queue_name(self, name: str) -> str:
        # AMQP 0-9-1: an empty queue name means the last queue declared on the channel.
        if name:
            return name
        last = self.connection.last_queue_name
        if last is None:
            raise ChannelError(404, "no previously declared queue")
        return last

    def on_queue_bind(self, method: commands.Queue.Bind) -> None:
        """queue.bind."""
        name = self._queue_name(method.queue)
        self._allow("write", "queue", name)
        self._allow("read", "exchange", method.exchange)
        queue = self.vhost.queue_or_404(name, self.connection)
        self.vhost.bind(method.exchange, queue, method.routing_key, method.arguments)
        if not method.nowait:
            self.connection.write_method(self.id, commands.Queue.BindOk())

    def on_queue_unbind(self, method: commands.Queue.Unbind) -> None:
        """queue.unbind; unbinding something missing succeeds (RabbitMQ)."""
        vhost = self.vhost
        name = self._queue_name(method.queue)
        self._allow("write", "queue", name)
        self._allow("read", "exchange", method.exchange)
        queue = vhost.queues.get(name)
        if queue is not None and vhost.get_exchange(method.exchange) is not None:
            vhost.check_exclusive(queue, self.connection)
            vhost.unbind(method.exchange, queue, method.routing_key, method.arguments)
        elif method.exchange == "":
            raise ChannelError(403, "operation not permitted on the default exchange")
        self.connection.write_method(self.id, commands.Queue.UnbindOk())

    def on_queue_purge(self, method: commands.Queue.Purge) -> None:
        """queue.purge: drop ready messages (unacked ones stay)."""
        name = self._queue_name(method.queue)
        self._allow("read", "queue", name)
        queue = self.vhost.queue_or_404(name, self.connection)
        count = queue.purge()
        if not method.nowait:
            self.connection.write_method(self.id, commands.Queue.PurgeOk(count))

    def on_queue_delete(self, method: commands.Queue.Delete) -> None:
        """queue.delete with if-unused / if-empty."""
        name = self._queue_name(method.queue)
        self._allow("configure", "queue", name)
        # RabbitMQ answers delete-ok before the basic.cancel of this channel's own consumers
        # of the queue (other channels get theirs at once). py-amqp (kombu, Celery) raises
        # ConsumerCancelled when a basic.cancel arrives while it waits for delete-ok.
        self.deferred_cancels = []
        try:
            count = self.vhost.delete_queue(
                name, self.connection, method.if_unused, method.if_empty
            )
        finally:
            cancelled, self.deferred_cancels = self.deferred_cancels, None
        if not method.nowait:
            self.connection.write_method(self.id, commands.Queue.DeleteOk(count))
        for tag in cancelled:
            self.connection.write_method(self.id, commands.Basic.Cancel(tag, True))

