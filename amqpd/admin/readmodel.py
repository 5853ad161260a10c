"""The broker's live objects rendered as RabbitMQ's management JSON.

Nothing is stored here: each function reads the broker (and the connections the server
hands over) at the moment it is called. Field names and types follow RabbitMQ 3.10+.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import quote_plus

from amqpd import __version__
from amqpd.access.auth import User, hash_algorithm
from amqpd.access.permissions import permission_of
from amqpd.admin.history import add_object_history, wanted
from amqpd.admin.rates import DEPTH_FIELDS, Rates, depth_details, with_details
from amqpd.admin.streams_view import stream_json
from amqpd.broker.broker import Broker
from amqpd.broker.delayed import DelayedMessages, is_delayed
from amqpd.broker.exchange import Exchange
from amqpd.broker.policies import VhostPolicies
from amqpd.broker.queue import Queue
from amqpd.broker.vhost import VirtualHost
from amqpd.session.channel import Channel, ChannelState
from amqpd.session.connection import Connection, ConnectionState
from amqpd.streams.queue import StreamQueue

#: What RabbitMQ version clients should assume for feature checks (terraform, rabbitmqadmin).
RABBITMQ_VERSION = "3.13.7"
QUEUE_STATS = ("publish", "deliver_get", "ack", "redeliver")
GLOBAL_STATS = ("publish", "confirm", "deliver", "deliver_no_ack", "get", "get_no_ack",
                "get_empty", "ack", "redeliver", "return_unroutable", "drop_unroutable")
CHURN = ("connection_created", "connection_closed", "channel_created", "channel_closed",
         "queue_declared", "queue_created", "queue_deleted")


@dataclass(slots=True)
class Listener:
    """A socket the broker listens on, as overview.listeners reports it."""

    protocol: str
    host: str
    port: int


@dataclass(slots=True)
class LiveState:
    """Everything the API reads: the broker, the open connections (handed over by the
    server, which owns them) and the rate rings."""

    broker: Broker
    connections: Callable[[], Iterable[Connection]]
    listeners: list[Listener] = field(default_factory=list)
    rates: Rates | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def node(self) -> str:
        """The node name (one node: the cluster name)."""
        return self.broker.cluster_name

    def open_connections(self) -> list[Connection]:
        """Connections past the handshake (RabbitMQ lists no half-open ones)."""
        return [c for c in self.connections()
                if c.vhost is not None and c.state in (ConnectionState.OPEN,
                                                       ConnectionState.CLOSING)]


def to_json(value: Any) -> bytes:
    """JSON of API data; AMQP values (bytes, Decimal, timestamps) become plain ones."""
    return json.dumps(value, default=_plain, separators=(",", ":")).encode("utf-8")


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime.datetime):
        return int(value.timestamp())
    if hasattr(value, "items"):
        return dict(value.items())
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    return str(value)


def iso_time(wall: float) -> str:
    """RabbitMQ 3.10's ``2026-12-07T04:32:51.392+00:00``."""
    moment = datetime.datetime.fromtimestamp(wall, datetime.UTC)
    return moment.isoformat(timespec="milliseconds")


def _wall(monotonic: float) -> float:
    return time.time() - (time.monotonic() - monotonic)


# -- sessions ------------------------------------------------------------------------------


def connection_name(connection: Connection, listener: Listener | None) -> str:
    """RabbitMQ's ``127.0.0.1:54321 -> 127.0.0.1:5672``, unique per connection."""
    peer = connection.peer or ("?", 0)
    local = f"{listener.host}:{listener.port}" if listener else "?"
    return f"{peer[0]}:{peer[1]} -> {local}"


def channels_of(connection: Connection) -> list[Channel]:
    """The channels of a connection in number order."""
    return [connection.channels[n] for n in sorted(connection.channels)]


def unacked_by_queue(state: LiveState) -> dict[Queue, tuple[int, int]]:
    """(count, bytes) of delivered, unacknowledged messages per queue (one walk over the
    channels' unacked maps: the queue does not count them itself)."""
    counts: dict[Queue, list[int]] = {}
    for connection in state.connections():
        for channel in list(connection.channels.values()):
            for delivery in channel.unacked.values():
                entry = counts.get(delivery.queue)
                if entry is None:
                    entry = counts[delivery.queue] = [0, 0]
                entry[0] += 1
                entry[1] += delivery.entry.message.size
    return {queue: (c[0], c[1]) for queue, c in counts.items()}


def connection_json(state: LiveState, connection: Connection) -> dict[str, Any]:
    """One entry of /api/connections."""
    listener = state.listeners[0] if state.listeners else None
    peer = connection.peer or ("", 0)
    blocked = connection.blocked_sent
    return {
        "name": connection_name(connection, listener),
        "node": state.node,
        "type": "network",
        "protocol": "AMQP 0-9-1",
        "user": connection.user_name,
        "user_who_performed_action": connection.user_name,
        "vhost": connection.vhost.name if connection.vhost is not None else None,
        "state": ("closing" if connection.state is not ConnectionState.OPEN
                  else "blocked" if blocked else "running"),
        "connected_at": connection.connected_at,
        "client_properties": connection.client_properties,
        "channels": len(connection.channels),
        "channel_max": connection.channel_max,
        "frame_max": connection.frame_max,
        "timeout": connection.heartbeat,
        "peer_host": peer[0],
        "peer_port": peer[1],
        "host": listener.host if listener else "",
        "port": listener.port if listener else 0,
        "ssl": False,
        "auth_mechanism": "PLAIN",
        "peer_cert_subject": connection.tls_peer_cn,
    }


def channel_json(state: LiveState, connection: Connection, channel: Channel) -> dict[str, Any]:
    """One entry of /api/channels."""
    name = connection_name(connection, state.listeners[0] if state.listeners else None)
    peer = connection.peer or ("", 0)
    return {
        "name": f"{name} ({channel.id})",
        "number": channel.id,
        "node": state.node,
        "user": connection.user_name,
        "user_who_performed_action": connection.user_name,
        "vhost": connection.vhost.name if connection.vhost is not None else None,
        "connection_details": {"name": name, "peer_host": peer[0], "peer_port": peer[1]},
        "state": ("closing" if channel.state is ChannelState.CLOSING
                  else "flow" if not channel.active else "running"),
        "consumer_count": len(channel.consumers),
        "messages_unacknowledged": len(channel.unacked),
        "messages_unconfirmed": 0,
        "messages_uncommitted": 0,
        "acks_uncommitted": 0,
        "prefetch_count": channel.prefetch_count,
        "global_prefetch_count": channel.global_prefetch_count,
        "confirm": channel.confirm_mode,
        "transactional": channel.transaction is not None,
    }


def consumer_json(state: LiveState, connection: Connection, channel: Channel,
                  consumer: Any) -> dict[str, Any]:
    """One entry of /api/consumers (``consumer`` is the session's Consumer)."""
    name = connection_name(connection, state.listeners[0] if state.listeners else None)
    peer = connection.peer or ("", 0)
    queue = consumer.queue
    return {
        "consumer_tag": consumer.tag,
        "queue": {"name": queue.name, "vhost": queue.vhost_name},
        "channel_details": {
            "name": f"{name} ({channel.id})", "number": channel.id, "node": state.node,
            "connection_name": name, "peer_host": peer[0], "peer_port": peer[1],
            "user": connection.user_name,
        },
        "ack_required": not consumer.no_ack,
        "exclusive": consumer.exclusive,
        "prefetch_count": consumer.prefetch_count,
        "arguments": consumer.arguments,
        "active": True,
        "activity_status": "up" if consumer.has_credit() else "waiting",
    }


def sessions(state: LiveState) -> Iterator[tuple[Connection, Channel]]:
    """Every (connection, channel) pair."""
    for connection in state.open_connections():
        for channel in channels_of(connection):
            yield connection, channel


# -- topology ------------------------------------------------------------------------------


def queue_json(
    state: LiveState, queue: Queue, unacked: dict[Queue, tuple[int, int]]
) -> dict[str, Any]:
    """One entry of /api/queues."""
    unacked_count, unacked_bytes = unacked.get(queue, (0, 0))
    ready = queue.message_count
    ready_bytes = queue.ready_bytes + queue.paged_bytes
    consumers = list(queue.consumers)
    # Consumer utilisation here: the share of the queue's consumers that have credit now
    # (1.0 = every consumer could take a message immediately; 0 without consumers).
    capacity = (sum(1 for c in consumers if c.has_credit()) / len(consumers)) if consumers \
        else 0.0
    item: dict[str, Any] = {
        "name": queue.name,
        "vhost": queue.vhost_name,
        "type": str(queue.arguments.get("x-queue-type", "classic")),
        "durable": queue.durable,
        "auto_delete": queue.auto_delete,
        "exclusive": queue.exclusive,
        "arguments": queue.arguments,
        "node": state.node,
        "state": "running",
        "policy": None,
        "operator_policy": None,  # operator policies are not implemented
        "effective_policy_definition": {},
        "consumers": len(consumers),
        "consumer_capacity": capacity,
        "consumer_utilisation": capacity,
        "exclusive_consumer_tag": None,
        "single_active_consumer_tag": None,
        **depth_details(ready, unacked_count,
                        state.rates.queue_depth_rates(queue, unacked_count)
                        if state.rates is not None else None),
        "messages_paged_out": queue.paged,
        "message_bytes": ready_bytes + unacked_bytes,
        "message_bytes_ready": ready_bytes,
        "message_bytes_unacknowledged": unacked_bytes,
        "message_bytes_paged_out": queue.paged_bytes,
        "message_bytes_ram": queue.ready_bytes + unacked_bytes,
        "memory": queue.ready_bytes + unacked_bytes,
        "head_message_timestamp": None,
    }
    if isinstance(queue, StreamQueue):
        item.update(stream_json(queue))
    vhost = state.broker.vhosts.get(queue.vhost_name)
    applied = vhost.policies.match("queues", queue.name) if vhost is not None else None
    if applied is not None:
        item["policy"] = applied.name
        item["effective_policy_definition"] = dict(applied.definition)
    if queue.exclusive:
        owner = queue.exclusive_owner
        if isinstance(owner, Connection):
            listener = state.listeners[0] if state.listeners else None
            item["owner_pid_details"] = {"name": connection_name(owner, listener)}
    if not consumers:
        item["idle_since"] = iso_time(_wall(queue.last_used))
    if state.rates is not None:
        counts, rates = state.rates.queue_rates(queue)
        item["message_stats"] = with_details(counts, rates, QUEUE_STATS)
    else:
        item["message_stats"] = {}
    return item


def exchange_json(exchange: Exchange, policies: VhostPolicies | None = None) -> dict[str, Any]:
    """One entry of /api/exchanges (the default exchange is named ""); ``policy`` only when
    one of ``policies`` applies, as RabbitMQ."""
    item: dict[str, Any] = {
        "name": exchange.name,
        "vhost": exchange.vhost_name,
        "type": exchange.type_name,
        "durable": exchange.durable,
        "auto_delete": exchange.auto_delete,
        "internal": exchange.internal,
        "arguments": exchange.arguments,
        "user_who_performed_action": "",
    }
    if is_delayed(exchange):  # held messages, as RabbitMQ's delayed-message plugin shows
        item["messages_delayed"] = DelayedMessages.count(exchange)
    applied = policies.match("exchanges", exchange.name) if policies and exchange.name else None
    if applied is not None:
        item["policy"] = applied.name
    return item


def properties_key(routing_key: str, arguments: dict[str, Any] | Any) -> str:
    """RabbitMQ's opaque binding key: ``~`` for no key and no arguments, else the quoted
    routing key, plus ``~`` and a short hash of the arguments when there are any."""
    key = quote_plus(routing_key) if routing_key else ""
    if arguments:
        digest = hashlib.sha256(to_json(dict(sorted(dict(arguments).items())))).digest()
        return f"{key}~{base64.urlsafe_b64encode(digest[:6]).decode().rstrip('=')}"
    return key or "~"


def binding_json(vhost: str, source: str, destination: str, kind: str, routing_key: str,
                 arguments: Any) -> dict[str, Any]:
    """One entry of /api/bindings."""
    return {
        "source": source,
        "vhost": vhost,
        "destination": destination,
        "destination_type": kind,
        "routing_key": routing_key,
        "arguments": dict(arguments),
        "properties_key": properties_key(routing_key, arguments),
    }


def vhost_bindings(vhost: VirtualHost) -> list[dict[str, Any]]:
    """Every binding of a vhost, the default exchange's implicit ones first (as RabbitMQ)."""
    result = [binding_json(vhost.name, "", name, "queue", name, {})
              for name in sorted(vhost.queues)]
    for name in sorted(vhost.exchanges):
        exchange = vhost.exchanges[name]
        if exchange.kind is None:
            continue
        for binding in exchange.kind.bindings():
            destination = binding.destination
            if isinstance(destination, Queue):
                kind = "queue"
            elif isinstance(destination, Exchange):
                kind = "exchange"
            else:
                continue
            result.append(binding_json(vhost.name, name, destination.name, kind,
                                       binding.routing_key, binding.arguments))
    return result


# -- access --------------------------------------------------------------------------------


def user_json(user: User) -> dict[str, Any]:
    """One entry of /api/users."""
    return {
        "name": user.name,
        "password_hash": user.password_hash,
        "hashing_algorithm": hash_algorithm(user.password_hash)
        or "rabbit_password_hashing_sha256",
        "tags": list(user.tags),
        "limits": {},
    }


def permission_json(user: User, vhost: str) -> dict[str, Any] | None:
    """One entry of /api/permissions, or None when the user has none in ``vhost``."""
    permission = permission_of(user, vhost)
    if permission is None:
        return None
    return {"user": user.name, "vhost": vhost, "configure": permission.configure,
            "write": permission.write, "read": permission.read}


def vhost_json(vhost: VirtualHost, state: LiveState, unacked: dict[Queue, tuple[int, int]],
               query: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One entry of /api/vhosts (with the sample history ``query`` asks for)."""
    item = {
        "name": vhost.name,
        "description": "",
        "tags": [],
        "metadata": {"description": "", "tags": []},
        "default_queue_type": "classic",
        "tracing": False,
        "cluster_state": {state.node: "running"},
        **depth_totals(state, [vhost], unacked),
    }
    if query and state.rates is not None and wanted(query):
        add_object_history(item, query, state.rates.vhost_rings.get(vhost.name, ()),
                           state.rates.clock())
    return item


def depth_totals(state: LiveState, vhosts: Iterable[VirtualHost],
                 unacked: dict[Queue, tuple[int, int]]) -> dict[str, object]:
    """``messages``, ``messages_ready``, ``messages_unacknowledged`` and their signed rates
    summed over ``vhosts`` (a vhost's rate comes from its own ring: no per-queue work)."""
    ready_total = unacked_total = 0
    rates = dict.fromkeys(DEPTH_FIELDS, 0.0)
    for vhost in vhosts:
        queues = vhost.queues.values()
        ready = sum(q.message_count for q in queues)
        held = sum(unacked[q][0] for q in queues if q in unacked) if unacked else 0
        ready_total += ready
        unacked_total += held
        if state.rates is not None:
            for name, rate in state.rates.vhost_depth_rates(vhost.name, ready, held).items():
                rates[name] += rate
    return depth_details(ready_total, unacked_total,
                         {name: round(rate, 1) for name, rate in rates.items()})


def product() -> dict[str, str]:
    """Version fields every definitions export and the overview carry."""
    return {"product_name": "amqpd", "product_version": __version__,
            "rabbitmq_version": RABBITMQ_VERSION, "rabbit_version": RABBITMQ_VERSION}
