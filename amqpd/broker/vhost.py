"""A virtual host: its exchanges, queues and bindings, and the rules for declaring them.

Every declare/delete/bind in AMQP and in the YAML topology goes through this class, so the
equivalence checks, reserved names and reply codes are the same whichever way a resource
is created.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import exchanges
from amqpd.broker import routing
from amqpd.broker.deadletter import dead_lettered, is_cycle
from amqpd.broker.delayed import DelayedMessages, is_delayed
from amqpd.broker.exchange import Exchange
from amqpd.broker.journal import Journal
from amqpd.broker.message import Message, QueueEntry
from amqpd.broker.paging import Pager
from amqpd.broker.policies import VhostPolicies
from amqpd.broker.priority_queue import queue_class
from amqpd.broker.queue import Queue
from amqpd.config.settings import QueueDefaults
from amqpd.protocol.errors import ChannelError, ConnectionLevelError

if TYPE_CHECKING:
    from amqpd.broker.consumer import QueueOwner

LOGGER = logging.getLogger(__name__)

#: Builds a new queue of a registered x-queue-type: (vhost, name, server_named, durable,
#: exclusive, auto_delete, arguments) -> the queue; raises ChannelError to refuse.
QueueFactory = Callable[
    ["VirtualHost", str, bool, bool, bool, bool, Mapping[str, object]], Queue]

PREDECLARED = {
    "amq.direct": "direct",
    "amq.fanout": "fanout",
    "amq.topic": "topic",
    "amq.headers": "headers",
    "amq.match": "headers",
    # Publishing here extends the ack deadline of a delivery (see amqpd.broker.lease).
    "amq.lease": "direct",
}


def _render(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _arguments_differ(received: Mapping[str, object], current: Mapping[str, object]) -> str | None:
    """Name the first argument that differs (10 and 10.0 are equal, as in LavinMQ)."""
    for key in sorted(set(received) | set(current)):
        if received.get(key) != current.get(key) or (key in received) != (key in current):
            mine = received.get(key, "none")
            theirs = current.get(key, "none")
            return f"inequivalent arg '{key}': received '{_render(mine)}' but current is " \
                f"'{_render(theirs)}'"
    return None


def _check_equivalent(
    what: str,
    flags: tuple[tuple[str, object, object], ...],
    arguments: Mapping[str, object],
    current_arguments: Mapping[str, object],
) -> None:
    """A redeclare must match the declaration: 406 naming the first field that differs."""
    for field, received, current in flags:
        if received != current:
            raise ChannelError(
                406,
                f"inequivalent arg '{field}' for {what}: received '{_render(received)}' "
                f"but current is '{_render(current)}'",
            )
    difference = _arguments_differ(arguments, current_arguments)
    if difference:
        raise ChannelError(406, f"{difference} for {what}")


def _locked_text(queue: Queue) -> str:
    """RabbitMQ's RESOURCE_LOCKED text, which names both causes."""
    return (
        f"cannot obtain exclusive access to locked {queue.describe()}. It could be "
        "originally declared on another connection or the exclusive property value "
        "does not match that of the original declaration."
    )


def generate_name(prefix: str) -> str:
    """A server-generated name like RabbitMQ's ``amq.gen-<22 url-safe chars>``."""
    return prefix + base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()


class VirtualHost:
    """Exchanges and queues of one vhost."""

    def __init__(
        self,
        name: str,
        journal: Journal | None = None,
        defaults: QueueDefaults | None = None,
        pager: Pager | None = None,
    ):
        self.name = name
        self.journal = journal or Journal()
        self.queue_defaults = defaults
        self.pager = pager
        # Queue types by x-queue-type registered from above the broker (the broker shares
        # one dict with all its vhosts): streams.
        self.queue_types: dict[str, QueueFactory] = {}
        # Queues that may need the ticker: messages with a TTL, or an x-expires policy.
        self._timed_queues: set[Queue] = set()
        self.exchanges: dict[str, Exchange] = {}
        self.queues: dict[str, Queue] = {}
        # RabbitMQ policies (amqpd.broker.policies): applied at declare and on every change.
        self.policies = VhostPolicies(self)
        # Queue churn for amqpd.metrics (non-passive queue.declare calls, queues created,
        # queues deleted), as RabbitMQ's queues_{declared,created,deleted}_total.
        self.queues_declared = self.queues_created = self.queues_deleted = 0
        # destination (queue or exchange) -> {source exchange: binding count}, so deleting a
        # queue or unbinding never scans every binding of every exchange.
        self._sources_of: dict[Queue | Exchange, dict[Exchange, int]] = {}
        # Messages held by x-delayed-message exchanges until their x-delay has passed.
        self.delayed = DelayedMessages(self)
        self.exchanges[""] = Exchange("", name, "direct", None, durable=True)
        for exchange_name, type_name in PREDECLARED.items():
            self._create_exchange(exchange_name, type_name, True, False, False, {})

    # -- lookups -----------------------------------------------------------------------

    def get_exchange(self, name: str) -> Exchange | None:
        """The exchange of that name, or None."""
        return self.exchanges.get(name)

    def exchange_or_404(self, name: str) -> Exchange:
        """The exchange of that name, or a 404 channel error."""
        exchange = self.exchanges.get(name)
        if exchange is None:
            raise ChannelError(404, f"no exchange '{name}' in vhost '{self.name}'")
        return exchange

    def queue_or_404(self, name: str, connection: QueueOwner | None) -> Queue:
        """The queue of that name usable by this connection, or 404 / 405."""
        queue = self.queues.get(name)
        if queue is None:
            raise ChannelError(404, f"no queue '{name}' in vhost '{self.name}'")
        self.check_exclusive(queue, connection)
        return queue

    def check_exclusive(self, queue: Queue, connection: QueueOwner | None) -> None:
        """405 when another connection owns the exclusive queue."""
        owner = queue.exclusive_owner
        if owner is not None and owner is not connection:
            raise ChannelError(405, _locked_text(queue))

    # -- exchanges ---------------------------------------------------------------------

    def _create_exchange(
        self,
        name: str,
        type_name: str,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: Mapping[str, object],
    ) -> Exchange:
        factory = exchanges.get_exchange_type(type_name)
        if factory is None:
            raise ConnectionLevelError(503, f"unknown exchange type '{type_name}'", 40, 10)
        try:
            kind = factory(arguments)
        except exchanges.ExchangeError as exc:
            raise ChannelError(exc.reply_code, exc.text) from exc
        exchange = Exchange(
            name, self.name, type_name, kind, durable, auto_delete, internal, arguments
        )
        self.policies.apply_to_exchange(exchange)
        self.exchanges[name] = exchange
        if not name.startswith("amq."):
            self.journal.exchange_declared(exchange)
            self.journal.definitions_version += 1
        return exchange

    def declare_exchange(
        self,
        name: str,
        type_name: str,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Mapping[str, object] | None = None,
    ) -> Exchange:
        """exchange.declare with RabbitMQ's checks."""
        arguments = dict(arguments or {})
        existing = self.exchanges.get(name)
        if name == "":
            # RabbitMQ refuses a passive declare of the default exchange too.
            raise ChannelError(403, "operation not permitted on the default exchange")
        if passive:
            if existing is None:
                raise ChannelError(404, f"no exchange '{name}' in vhost '{self.name}'")
            return existing
        if name.startswith("amq.") and existing is None:
            raise ChannelError(403, f"exchange name '{name}' contains reserved prefix 'amq.*'")
        if existing is None:
            if exchanges.get_exchange_type(type_name) is None:
                raise ConnectionLevelError(503, f"unknown exchange type '{type_name}'", 40, 10)
            return self._create_exchange(
                name, type_name, durable, auto_delete, internal, arguments
            )
        _check_equivalent(
            existing.describe(),
            (("type", type_name, existing.type_name),
             ("durable", durable, existing.durable),
             ("auto_delete", auto_delete, existing.auto_delete),
             ("internal", internal, existing.internal)),
            arguments,
            existing.arguments,
        )
        return existing

    def delete_exchange(self, name: str, if_unused: bool = False) -> None:
        """exchange.delete; deleting a missing exchange succeeds, as in RabbitMQ."""
        if name == "" or name.startswith("amq."):
            raise ChannelError(
                403,
                f"operation not permitted on {name or 'the default exchange'}",
            )
        exchange = self.exchanges.get(name)
        if exchange is None:
            return
        assert exchange.kind is not None
        if if_unused and len(exchange.kind):
            raise ChannelError(406, f"{exchange.describe()} in use")
        self._remove_exchange(exchange)

    def _remove_exchange(self, exchange: Exchange) -> None:
        assert exchange.kind is not None
        for binding in list(exchange.kind.bindings()):
            self._forget_source(binding.destination, exchange)
        del self.exchanges[exchange.name]
        self.delayed.exchange_deleted(exchange)
        self._unbind_everywhere(exchange)
        self.journal.exchange_deleted(exchange)
        self.journal.definitions_version += 1

    # -- queues ------------------------------------------------------------------------

    def declare_queue(
        self,
        name: str,
        connection: QueueOwner | None,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, object] | None = None,
        server_named: bool = False,
    ) -> Queue:
        """queue.declare with RabbitMQ's checks; an empty name gets a server-generated one
        (``server_named`` says the caller already generated it)."""
        arguments = dict(arguments or {})
        if passive:
            queue = self.queue_or_404(name, connection)
            queue.last_used = time.monotonic()  # RabbitMQ: any declare renews x-expires
            return queue
        self.queues_declared += 1
        queue_type = arguments.get("x-queue-type")
        factory = self.queue_types.get(queue_type) if isinstance(queue_type, str) else None
        if factory is not None and name not in self.queues:
            # A queue type from outside this package (amqpd.streams) builds its own queue.
            queue = factory(self, name, server_named, durable, exclusive, auto_delete, arguments)
            self.queues[name] = queue
            self.journal.queue_declared(queue)
            self.journal.definitions_version += 1
            self.queues_created += 1
            return queue
        if not name:
            name = generate_name("amq.gen-")
        elif name.startswith("amq.") and not server_named:
            raise ChannelError(403, f"queue name '{name}' contains reserved prefix 'amq.*'")
        # As RabbitMQ: an exclusive queue dies with its connection, so it is never durable
        # (nothing of it is written to the store, and durable=true redeclares it fine).
        durable = durable and not exclusive
        existing = self.queues.get(name)
        if existing is not None:
            # RabbitMQ's strict check: the owner must match exactly (this connection for an
            # exclusive redeclare, nobody otherwise), so a mismatch of the exclusive flag is
            # 405, even on the owning connection, and never a 406.
            owner = connection if exclusive else None
            if existing.exclusive_owner is not owner:
                raise ChannelError(405, _locked_text(existing))
            _check_equivalent(
                existing.describe(),
                (("durable", durable, existing.durable),
                 ("auto_delete", auto_delete, existing.auto_delete)),
                arguments,
                existing.arguments,
            )
            existing.last_used = time.monotonic()
            return existing
        policy = self.policies.queue_policy(name, arguments)  # its x-arguments and policy
        queue = queue_class(policy)(  # x-max-priority picks the priority queue, once
            name,
            self.name,
            durable=durable,
            exclusive_owner=connection if exclusive else None,
            auto_delete=auto_delete,
            arguments=arguments,
            policy=policy,
            hooks=self,
        )
        queue.pager = self.pager
        self.queues[name] = queue
        if policy.expires is not None:
            self._timed_queues.add(queue)
        self.journal.queue_declared(queue)
        self.journal.definitions_version += 1
        self.queues_created += 1
        return queue

    def watch_expiry(self, queue: Queue) -> None:
        """A policy gave a live queue an ``expires``: the ticker must check it."""
        self._timed_queues.add(queue)

    # -- queue hooks (amqpd.broker.queue.QueueHooks) ------------------------------------------

    def queue_unused(self, queue: Queue) -> None:
        """An auto-delete queue lost its last consumer."""
        if self.queues.get(queue.name) is queue:
            self.remove_queue(queue)

    def entry_added(self, queue: Queue, entry: QueueEntry) -> None:
        """Forward to the journal (persistence, memory accounting)."""
        if entry.expires_at is not None:
            self._timed_queues.add(queue)
        self.journal.entry_added(queue, entry)

    def entry_removed(self, queue: Queue, entry: QueueEntry) -> None:
        """Forward to the journal."""
        self.journal.entry_removed(queue, entry)

    def entry_returned(self, queue: Queue, entry: QueueEntry) -> None:
        """Forward to the journal."""
        self.journal.entry_returned(queue, entry)

    def entry_delivered(self, queue: Queue, entry: QueueEntry) -> None:
        """Forward to the journal."""
        self.journal.entry_delivered(queue, entry)

    def dead_letter(self, queue: Queue, message: Message, reason: str) -> None:
        """Republish to the queue's dead-letter exchange with the x-death history."""
        policy = queue.policy
        exchange_name = policy.dead_letter_exchange
        if exchange_name is None:
            return
        exchange = self.exchanges.get(exchange_name)
        if exchange is None:
            LOGGER.warning(
                "dead-letter exchange '%s' of %s does not exist; message dropped",
                exchange_name, queue.describe(),
            )
            return
        copy = dead_lettered(message, queue.name, reason, policy.dead_letter_routing_key)
        # As the delayed-message plugin: a dead-letter exchange of that type (or one reached
        # from it) holds a message that carries x-delay; the cycle check runs at release.
        if is_delayed(exchange) and self.delayed.hold(exchange, copy):
            return
        for target in routing.route(exchange, copy, self.queues, self.get_exchange,
                                    self.delayed.hold):
            if is_cycle(copy, target.name):
                LOGGER.info("dead-letter cycle through %s; message dropped", target.describe())
                continue
            target.push(copy)

    def tick(self, now: float) -> None:
        """Expire messages and unused queues, release due delayed messages (called by the
        broker's ticker)."""
        if self.delayed.next_due is not None and self.delayed.next_due <= now:
            self.delayed.tick(now)
        for queue in list(self._timed_queues):
            if queue.deleted:
                self._timed_queues.discard(queue)
                continue
            next_expiry = queue.next_expiry
            if next_expiry is not None and next_expiry <= now:
                queue.expire_due(now)
                next_expiry = queue.next_expiry
            expires = queue.policy.expires
            if next_expiry is None and expires is None:
                self._timed_queues.discard(queue)
            if expires is not None and not queue.consumers and \
                    now - queue.last_used >= expires / 1000.0:
                LOGGER.info("deleting %s: unused for %s ms (x-expires)", queue.describe(), expires)
                self.remove_queue(queue)

    def delete_queue(
        self, name: str, connection: QueueOwner | None, if_unused: bool, if_empty: bool
    ) -> int:
        """queue.delete; returns the number of messages dropped. Missing is not an error."""
        queue = self.queues.get(name)
        if queue is None:
            return 0
        self.check_exclusive(queue, connection)
        if if_unused and queue.consumers:
            raise ChannelError(406, f"{queue.describe()} in use")
        if if_empty and queue.message_count:
            raise ChannelError(406, f"{queue.describe()} is not empty")
        count = queue.message_count
        self.remove_queue(queue)
        return count

    def remove_queue(self, queue: Queue) -> None:
        """Delete a queue: unbind it, cancel its consumers, drop its messages."""
        self.queues.pop(queue.name, None)
        self.queues_deleted += 1
        self._unbind_everywhere(queue)
        consumers = list(queue.consumers)
        self.journal.queue_deleted(queue, queue.ready_bytes, len(queue.ready) - queue.tombstones)
        self.journal.definitions_version += 1
        queue.on_deleted()
        for consumer in consumers:
            consumer.cancel_by_server()

    # -- bindings ----------------------------------------------------------------------

    def _unbind_everywhere(self, destination: Queue | Exchange) -> None:
        for source in self._sources_of.pop(destination, {}):
            assert source.kind is not None
            source.kind.unbind_destination(destination)
            self._maybe_auto_delete(source)

    def _forget_source(self, destination: object, source: Exchange, count: int = 0) -> None:
        """Forget ``count`` bindings from source to destination (0 = all of them)."""
        if not isinstance(destination, Queue | Exchange):
            return
        sources = self._sources_of.get(destination)
        if sources is None or source not in sources:
            return
        remaining = sources[source] - count if count else 0
        if remaining > 0:
            sources[source] = remaining
            return
        del sources[source]
        if not sources:
            del self._sources_of[destination]

    def _maybe_auto_delete(self, exchange: Exchange) -> None:
        assert exchange.kind is not None
        if exchange.auto_delete and not len(exchange.kind) and exchange.name in self.exchanges:
            self._remove_exchange(exchange)

    def _source_for_binding(self, name: str) -> Exchange:
        if name == "":
            raise ChannelError(403, "operation not permitted on the default exchange")
        return self.exchange_or_404(name)

    def bind(
        self,
        source_name: str,
        destination: Queue | Exchange,
        routing_key: str,
        arguments: Mapping[str, object] | None,
    ) -> None:
        """Bind a queue or an exchange to a source exchange."""
        source = self._source_for_binding(source_name)
        assert source.kind is not None
        try:
            added = source.kind.bind(destination, routing_key, dict(arguments or {}))
        except exchanges.ExchangeError as exc:
            raise ChannelError(exc.reply_code, exc.text) from exc
        if added:
            sources = self._sources_of.setdefault(destination, {})
            sources[source] = sources.get(source, 0) + 1
            self.journal.binding_added(source, destination, routing_key, dict(arguments or {}))
            self.journal.definitions_version += 1

    def unbind(
        self,
        source_name: str,
        destination: Queue | Exchange,
        routing_key: str,
        arguments: Mapping[str, object] | None,
    ) -> None:
        """Remove a binding; a missing binding is not an error (RabbitMQ)."""
        source = self._source_for_binding(source_name)
        assert source.kind is not None
        arguments = dict(arguments or {})
        if not source.kind.unbind(destination, routing_key, arguments):
            return
        self.journal.binding_removed(source, destination, routing_key, arguments)
        self.journal.definitions_version += 1
        self._forget_source(destination, source, 1)
        self._maybe_auto_delete(source)

    def destination_exchange(self, name: str) -> Exchange:
        """The destination of an exchange.bind/unbind (403 for the default, 404 if missing)."""
        if name == "":
            raise ChannelError(403, "operation not permitted on the default exchange")
        return self.exchange_or_404(name)

    def drop_exclusive_queues(self, connection: QueueOwner) -> None:
        """Delete the exclusive queues of a connection that is closing."""
        for queue in [q for q in self.queues.values() if q.exclusive_owner is connection]:
            self.remove_queue(queue)

    def summary(self) -> dict[str, Any]:
        """Counts for logs and tests."""
        return {"exchanges": len(self.exchanges), "queues": len(self.queues)}
