"""YAML topology: declare vhosts, exchanges, queues, bindings, users and permissions.

- :mod:`amqpd.topology.model` -- the plain data (imported by :mod:`amqpd.settings`);
- :mod:`amqpd.topology.parse` -- YAML to the model, with ``FILE:LINE:COLUMN`` errors;
- :mod:`amqpd.topology.apply` -- plan against a live broker, then apply all or nothing;
  :func:`~amqpd.topology.apply.configure_broker` wires settings into a broker;
- :mod:`amqpd.topology.export` -- the live topology of a broker as YAML;
- :mod:`amqpd.topology.definitions` -- RabbitMQ definitions (JSON) to the YAML form;
- :mod:`amqpd.topology.reload` -- SIGHUP: re-read the configuration and apply the changes.

This package's ``__init__`` imports only the model so that settings can use it without an
import cycle.
"""

from amqpd.topology.model import (
    BindingSpec,
    ExchangeSpec,
    PermissionSpec,
    QueueSpec,
    Topology,
    UserSpec,
    VhostSpec,
)

__all__ = [
    "BindingSpec",
    "ExchangeSpec",
    "PermissionSpec",
    "QueueSpec",
    "Topology",
    "UserSpec",
    "VhostSpec",
]
