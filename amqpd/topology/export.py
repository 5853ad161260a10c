"""The live topology of a broker as a YAML topology document (it round-trips: applying the
export to an empty broker and exporting again gives the same document).

Left out, as in RabbitMQ's definitions export: the default exchange and the ``amq.*``
exchanges, exclusive and server-named (``amq.*``) queues and their bindings, and the default
user (it comes from ``auth.default_user``/``default_pass``) unless configuration defines it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

from amqpd.config.document import plain_value, topology_document
from amqpd.config.model import (
    BindingSpec,
    DestinationType,
    ExchangeSpec,
    PermissionSpec,
    PolicySpec,
    QueueSpec,
    Topology,
    UserSpec,
    VhostSpec,
)
from amqpd.topology.apply import managed

if TYPE_CHECKING:
    from amqpd.broker.broker import Broker

HEADER = "# amqpd topology (load with `amqpd --topology FILE` or `topology_file:`)\n"


def _exportable_queue(queue: Any) -> bool:
    return not queue.name.startswith("amq.") and queue.exclusive_owner is None and not getattr(
        queue, "exclusive", False
    )


def topology_from_broker(broker: Broker) -> Topology:
    """What the broker holds, as a :class:`Topology`."""
    from amqpd.broker.exchange import Exchange
    from amqpd.broker.queue import Queue

    topology = Topology(where="broker")
    for vhost_name in sorted(broker.vhosts):
        vhost = broker.vhosts[vhost_name]
        spec = VhostSpec(vhost_name, where="broker")
        for name in sorted(vhost.exchanges):
            exchange = vhost.exchanges[name]
            if not name or name.startswith("amq."):
                continue
            spec.exchanges[name] = ExchangeSpec(
                name, exchange.type_name, exchange.durable, exchange.auto_delete,
                exchange.internal, dict(exchange.arguments), "broker",
            )
        for name in sorted(vhost.queues):
            queue = vhost.queues[name]
            if _exportable_queue(queue):
                spec.queues[name] = QueueSpec(name, queue.durable, queue.auto_delete,
                                              dict(queue.arguments), "broker")
        for name in sorted(vhost.exchanges):
            exchange = vhost.exchanges[name]
            if exchange.kind is None:
                continue
            for binding in exchange.kind.bindings():
                destination = binding.destination
                kind: DestinationType
                if isinstance(destination, Queue):
                    if not _exportable_queue(destination):
                        continue
                    kind = "queue"
                elif isinstance(destination, Exchange):
                    kind = "exchange"
                else:
                    continue
                spec.bindings.append(BindingSpec(
                    name, destination.name, kind, binding.routing_key,
                    plain_value(binding.arguments), "broker",
                ))
        spec.bindings.sort(key=lambda b: (b.source, b.destination_type, b.destination,
                                          b.routing_key, repr(sorted(b.arguments.items()))))
        for policy in vhost.policies:
            spec.policies[policy.name] = PolicySpec(
                policy.name, policy.pattern, dict(policy.definition), policy.apply_to,
                policy.priority, "broker")
        topology.vhosts[vhost_name] = spec
    record = managed(broker)
    default_user = broker.settings.default_user
    for name in sorted(broker.users.users):
        user = broker.users.users[name]
        if name == default_user and name not in record.users:
            continue
        topology.users[name] = UserSpec(name, user.password_hash, list(user.tags), "broker")
        for vhost_name in sorted(user.permissions):
            permission = user.permissions[vhost_name]
            topology.permissions.append(PermissionSpec(
                name, vhost_name, permission.configure, permission.write, permission.read,
                "broker",
            ))
    return topology


def dump(topology: Topology, header: str = HEADER) -> str:
    """A topology as YAML text."""
    return header + yaml.safe_dump(topology_document(topology), sort_keys=False,
                                   default_flow_style=False, allow_unicode=True, width=100)


def export_topology(broker: Broker) -> str:
    """The broker's live topology as YAML (``amqpd export-topology``)."""
    return dump(topology_from_broker(broker))
