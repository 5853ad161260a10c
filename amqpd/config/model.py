"""Plain data of a topology: vhosts, exchanges, queues, bindings, users and permissions.

No broker or YAML dependency here, so :mod:`amqpd.config.settings` can hold these objects. Every
object carries ``where`` -- ``FILE:LINE:COLUMN`` of its declaration, or another description of
where it came from -- so conflicts and errors can name both sides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

DestinationType = Literal["queue", "exchange"]


@dataclass(slots=True)
class ExchangeSpec:
    """One exchange of a vhost."""

    name: str
    type: str = "direct"
    durable: bool = True
    auto_delete: bool = False
    internal: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)
    where: str = ""

    def key(self) -> tuple[object, ...]:
        """What makes two declarations equivalent (RabbitMQ's equivalence check)."""
        return (self.name, self.type, self.durable, self.auto_delete, self.internal,
                _frozen(self.arguments))


@dataclass(slots=True)
class QueueSpec:
    """One queue of a vhost (never exclusive: exclusive queues belong to a connection)."""

    name: str
    durable: bool = True
    auto_delete: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)
    where: str = ""

    def key(self) -> tuple[object, ...]:
        """What makes two declarations equivalent."""
        return (self.name, self.durable, self.auto_delete, _frozen(self.arguments))


@dataclass(slots=True)
class BindingSpec:
    """A binding from a source exchange to a queue or an exchange."""

    source: str
    destination: str
    destination_type: DestinationType = "queue"
    routing_key: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    where: str = ""

    def key(self) -> tuple[object, ...]:
        """Identity of the binding (as AMQP: source, destination, key, arguments)."""
        return (self.source, self.destination_type, self.destination, self.routing_key,
                _frozen(self.arguments))


@dataclass(slots=True)
class PolicySpec:
    """A RabbitMQ policy: the definition applies to the queues and/or exchanges whose name
    the pattern finds (a regex search); of several, the highest priority wins."""

    name: str
    pattern: str
    definition: dict[str, Any] = field(default_factory=dict)
    apply_to: str = "all"
    priority: int | float = 0  # RabbitMQ accepts any JSON number
    where: str = ""

    def key(self) -> tuple[object, ...]:
        """Two policies are the same when every field is."""
        return (self.name, self.pattern, _frozen(self.definition), self.apply_to,
                _frozen(self.priority))


@dataclass(slots=True)
class VhostSpec:
    """A virtual host and what it contains."""

    name: str
    exchanges: dict[str, ExchangeSpec] = field(default_factory=dict)
    queues: dict[str, QueueSpec] = field(default_factory=dict)
    bindings: list[BindingSpec] = field(default_factory=list)
    where: str = ""
    policies: dict[str, PolicySpec] = field(default_factory=dict)


@dataclass(slots=True)
class UserSpec:
    """A user; never a plain password, only a RabbitMQ-format salted hash."""

    name: str
    password_hash: str
    tags: list[str] = field(default_factory=list)
    where: str = ""

    def key(self) -> tuple[object, ...]:
        return (self.name, self.password_hash, tuple(sorted(self.tags)))


@dataclass(slots=True)
class PermissionSpec:
    """RabbitMQ permissions of a user in a vhost: three regular expressions."""

    user: str
    vhost: str
    configure: str = ".*"
    write: str = ".*"
    read: str = ".*"
    where: str = ""

    def key(self) -> tuple[object, ...]:
        return (self.user, self.vhost, self.configure, self.write, self.read)


@dataclass(slots=True)
class Topology:
    """A whole topology document."""

    vhosts: dict[str, VhostSpec] = field(default_factory=dict)
    users: dict[str, UserSpec] = field(default_factory=dict)
    permissions: list[PermissionSpec] = field(default_factory=list)
    where: str = ""

    def is_empty(self) -> bool:
        return not (self.vhosts or self.users or self.permissions)


def _frozen(value: object) -> object:
    """A hashable, type-exact image of an argument value (1, 1.0 and True differ)."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return (type(value).__name__, value)
