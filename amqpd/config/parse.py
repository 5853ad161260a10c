"""A topology document (YAML) to :class:`~amqpd.config.model.Topology`, with positions.

The shape (see ``config/topology.example.yaml``)::

    vhosts:
      /:                                  # vhost name; null = just create it
        exchanges:
          orders: {type: topic, durable: true, auto_delete: false, internal: false,
                   arguments: {alternate-exchange: unrouted}}
        queues:
          order-emails: {durable: true, auto_delete: false,
                         arguments: {x-dead-letter-exchange: orders.dlx}}
        bindings:
          - {source: orders, destination: order-emails, destination_type: queue,
             routing_key: "order.*", arguments: {}}
    users:
      - {name: alice, password_hash: "...", tags: [management]}
    permissions:
      - {user: alice, vhost: /, configure: "^alice-.*", write: ".*", read: ".*"}

Exchanges and queues are durable unless ``durable: false`` is written. Every error is
``FILE:LINE:COLUMN: what is wrong, expected ...``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from amqpd.access.auth import hash_algorithm
from amqpd.config.model import (
    BindingSpec,
    ExchangeSpec,
    PermissionSpec,
    QueueSpec,
    Topology,
    UserSpec,
    VhostSpec,
)
from amqpd.config.nodes import (
    BOOL,
    FLOAT,
    INT,
    NULL,
    STR,
    ConfigError,
    Origin,
    boolean,
    compose_file,
    construct,
    describe,
    is_null,
    join,
    lead,
    mapping,
    require_keys,
    sequence,
    string,
    unknown_key,
)
from amqpd.config.parse_policies import parse_policies

TOPOLOGY_KEYS = ("vhosts", "users", "permissions")
VHOST_KEYS = ("exchanges", "queues", "bindings", "policies")
EXCHANGE_KEYS = ("type", "durable", "auto_delete", "internal", "arguments")
QUEUE_KEYS = ("durable", "auto_delete", "arguments")
BINDING_KEYS = ("source", "destination", "destination_type", "routing_key", "arguments")
USER_KEYS = ("name", "password_hash", "tags")
PERMISSION_KEYS = ("user", "vhost", "configure", "write", "read")

OVERFLOW = ("drop-head", "reject-publish", "reject-publish-dlx")

#: Well-known queue arguments and what they must be: (type, minimum or choices).
QUEUE_ARGUMENTS: dict[str, tuple[str, Any]] = {
    "x-message-ttl": ("int", 0),
    "x-expires": ("int", 1),
    "x-max-length": ("int", 0),
    "x-max-length-bytes": ("int", 0),
    "x-delivery-limit": ("int", 0),
    "x-max-priority": ("int", 0),
    "x-dead-letter-exchange": ("str", None),
    "x-dead-letter-routing-key": ("str", None),
    "x-overflow": ("choice", OVERFLOW),
    "x-queue-type": ("str", None),
    "x-queue-mode": ("choice", ("default", "lazy")),
    "x-single-active-consumer": ("bool", None),
}
EXCHANGE_ARGUMENTS: dict[str, tuple[str, Any]] = {"alternate-exchange": ("str", None)}


def _check_known(
    keys: list[tuple[str, Node, Node]], allowed: tuple[str, ...], origin: Origin, path: str,
    what: str,
) -> None:
    for key, key_node, _ in keys:
        if key not in allowed:
            if what == "user field" and key == "password":
                raise origin.error(
                    key_node,
                    f"{join(path, key)}: plain passwords are not accepted in files, expected "
                    "password_hash (make one with `amqpd hash-password`)",
                )
            raise unknown_key(key, key_node, allowed, origin, path, what)


def _table_value(node: Node, origin: Origin, path: str) -> Any:
    if isinstance(node, ScalarNode):
        if node.tag not in (STR, INT, FLOAT, BOOL, NULL):
            raise origin.error(node, f"{lead(path)}got {describe(node)}, expected a string, "
                                     "number, boolean, list or mapping")
        return construct(node)
    if isinstance(node, SequenceNode):
        return [_table_value(item, origin, join(path, i)) for i, item in enumerate(node.value)]
    return {key: _table_value(value, origin, join(path, key))
            for key, _, value in mapping(node, origin, path)}


def parse_arguments(
    node: Node | None, origin: Origin, path: str, known: dict[str, tuple[str, Any]],
) -> dict[str, Any]:
    """An AMQP argument table; well-known arguments are type-checked."""
    if is_null(node):
        return {}
    assert node is not None
    arguments: dict[str, Any] = {}
    for key, _, value_node in mapping(node, origin, path, "a mapping of arguments"):
        where = join(path, key)
        value = _table_value(value_node, origin, where)
        rule = known.get(key)
        if rule is not None:
            _check_argument(value, value_node, rule, origin, where)
        arguments[key] = value
    return arguments


def _check_argument(
    value: Any, node: Node, rule: tuple[str, Any], origin: Origin, path: str
) -> None:
    kind, extra = rule
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise origin.error(node, f"{lead(path)}got {describe(node)}, expected an integer "
                                     f">= {extra}")
        if value < extra:
            raise origin.error(node, f"{lead(path)}got {value}, which is out of range, expected "
                                     f"an integer >= {extra}")
    elif kind == "str" and not isinstance(value, str):
        raise origin.error(node, f"{lead(path)}got {describe(node)}, expected a string")
    elif kind == "bool" and not isinstance(value, bool):
        raise origin.error(node, f"{lead(path)}got {describe(node)}, expected true or false")
    elif kind == "choice" and value not in extra:
        raise origin.error(node, f"{lead(path)}got {describe(node)}, expected one of "
                                 f"{', '.join(extra)}")


def _flag(items: dict[str, Node], key: str, default: bool, origin: Origin, path: str) -> bool:
    node = items.get(key)
    return default if node is None else boolean(node, origin, join(path, key))


def _reserved(name: str, node: Node, origin: Origin, path: str, what: str) -> None:
    if name.startswith("amq."):
        raise origin.error(node, f"{lead(path)}{what} name {name!r} uses the reserved prefix "
                                 "'amq.', expected a name not starting with 'amq.'")


def parse_exchange(name: str, key_node: Node, node: Node | None, origin: Origin,
                   path: str) -> ExchangeSpec:
    """One exchange (``name: {type: ..., ...}``)."""
    if not name:
        raise origin.error(key_node, f"{lead(path)}the default exchange cannot be declared, "
                                     "expected a non-empty name")
    _reserved(name, key_node, origin, path, "exchange")
    raw = [] if node is None or is_null(node) else mapping(
        node, origin, path, "a mapping of exchange fields"
    )
    _check_known(raw, EXCHANGE_KEYS, origin, path, "exchange field")
    items = {key: value for key, _, value in raw}
    type_node = items.get("type")
    if type_node is None:
        raise origin.error(node if node is not None else key_node,
                           f"{lead(path)}missing 'type', expected an exchange type (direct, "
                           "fanout, topic, headers, x-rules, x-consistent-hash, ...)")
    return ExchangeSpec(
        name=name,
        type=string(type_node, origin, join(path, "type"), allow_empty=False),
        durable=_flag(items, "durable", True, origin, path),
        auto_delete=_flag(items, "auto_delete", False, origin, path),
        internal=_flag(items, "internal", False, origin, path),
        arguments=parse_arguments(items.get("arguments"), origin, join(path, "arguments"),
                                  EXCHANGE_ARGUMENTS),
        where=origin.at(key_node),
    )


def parse_queue(name: str, key_node: Node, node: Node | None, origin: Origin,
                path: str) -> QueueSpec:
    """One queue (``name: {durable: ..., arguments: ...}``; null = the defaults)."""
    if not name:
        raise origin.error(key_node, f"{lead(path)}got an empty queue name, expected a name")
    _reserved(name, key_node, origin, path, "queue")
    raw = [] if node is None or is_null(node) else mapping(
        node, origin, path, "a mapping of queue fields"
    )
    for key, key_item, _ in raw:
        if key == "exclusive":
            raise origin.error(key_item, f"{join(path, key)}: exclusive queues belong to a "
                                         "connection and cannot be declared here, expected "
                                         "durable, auto_delete or arguments")
    _check_known(raw, QUEUE_KEYS, origin, path, "queue field")
    items = {key: value for key, _, value in raw}
    return QueueSpec(
        name=name,
        durable=_flag(items, "durable", True, origin, path),
        auto_delete=_flag(items, "auto_delete", False, origin, path),
        arguments=parse_arguments(items.get("arguments"), origin, join(path, "arguments"),
                                  QUEUE_ARGUMENTS),
        where=origin.at(key_node),
    )


def parse_binding(node: Node, origin: Origin, path: str) -> BindingSpec:
    """One binding."""
    raw = mapping(node, origin, path, "a mapping with source, destination, routing_key")
    _check_known(raw, BINDING_KEYS, origin, path, "binding field")
    items = {key: value for key, _, value in raw}
    require_keys(list(items), ("source", "destination"), node, origin, path)
    source = string(items["source"], origin, join(path, "source"))
    if not source:
        raise origin.error(items["source"], f"{join(path, 'source')}: the default exchange "
                                            "cannot be bound to, expected an exchange name")
    destination_type = "queue"
    if "destination_type" in items:
        type_node = items["destination_type"]
        destination_type = string(type_node, origin, join(path, "destination_type"))
        if destination_type not in ("queue", "exchange"):
            raise origin.error(type_node, f"{join(path, 'destination_type')}: got "
                                          f"{describe(type_node)}, expected queue or exchange")
    key_node = items.get("routing_key")
    arguments = parse_arguments(items.get("arguments"), origin, join(path, "arguments"),
                                {"x-rule": ("str", None)})
    return BindingSpec(
        source=source,
        destination=string(items["destination"], origin, join(path, "destination"),
                           allow_empty=False),
        destination_type="exchange" if destination_type == "exchange" else "queue",
        routing_key="" if key_node is None else string(key_node, origin,
                                                        join(path, "routing_key")),
        arguments=arguments,
        where=origin.at(node),
    )


def parse_vhost(name: str, key_node: Node, node: Node | None, origin: Origin,
                path: str) -> VhostSpec:
    """One vhost and its resources."""
    if not name:
        raise origin.error(key_node, f"{lead(path)}got an empty vhost name, expected a name")
    vhost = VhostSpec(name=name, where=origin.at(key_node))
    if is_null(node):
        return vhost
    assert node is not None
    raw = mapping(node, origin, path, "a mapping with exchanges, queues and bindings")
    _check_known(raw, VHOST_KEYS, origin, path, "vhost field")
    for key, _, value in raw:
        where = join(path, key)
        if is_null(value):
            continue
        if key == "exchanges":
            for exchange_name, ex_key, ex_node in mapping(
                value, origin, where, "a mapping of exchange names to exchanges"
            ):
                exchange = parse_exchange(exchange_name, ex_key, ex_node, origin,
                                          join(where, exchange_name))
                vhost.exchanges[exchange_name] = exchange
        elif key == "queues":
            for queue_name, q_key, q_node in mapping(
                value, origin, where, "a mapping of queue names to queues"
            ):
                vhost.queues[queue_name] = parse_queue(queue_name, q_key, q_node, origin,
                                                       join(where, queue_name))
        elif key == "policies":
            vhost.policies = parse_policies(value, origin, where)
        else:
            seen: set[tuple[object, ...]] = set()
            for index, item in enumerate(sequence(value, origin, where, "a list of bindings")):
                binding = parse_binding(item, origin, join(where, index))
                if binding.key() not in seen:
                    seen.add(binding.key())
                    vhost.bindings.append(binding)
    return vhost


def parse_users(node: Node, origin: Origin, path: str) -> dict[str, UserSpec]:
    """``[{name, password_hash, tags}]``."""
    users: dict[str, UserSpec] = {}
    if is_null(node):
        return users
    for index, item in enumerate(sequence(node, origin, path, "a list of users")):
        where = join(path, index)
        raw = mapping(item, origin, where, "a mapping with name, password_hash and tags")
        _check_known(raw, USER_KEYS, origin, where, "user field")
        items = {key: value for key, _, value in raw}
        require_keys(list(items), ("name", "password_hash"), item, origin, where)
        name = string(items["name"], origin, join(where, "name"), allow_empty=False)
        password_hash = string(items["password_hash"], origin, join(where, "password_hash"))
        if password_hash and hash_algorithm(password_hash) is None:
            raise origin.error(
                items["password_hash"],
                f"{join(where, 'password_hash')}: not a RabbitMQ password hash, expected the "
                "base64 of a 4-byte salt and a SHA-256 digest (make one with `amqpd "
                "hash-password`), or '' for a user that logs in with EXTERNAL only",
            )
        tags = _tags(items.get("tags"), origin, join(where, "tags"))
        if name in users:
            raise origin.error(item, f"{where}: user {name!r} is already defined at "
                                     f"{users[name].where}, expected each user once")
        users[name] = UserSpec(name, password_hash, tags, origin.at(item))
    return users


def _tags(node: Node | None, origin: Origin, path: str) -> list[str]:
    if is_null(node):
        return []
    assert node is not None
    if isinstance(node, ScalarNode) and node.tag == STR:
        return [tag.strip() for tag in node.value.split(",") if tag.strip()]
    return [string(item, origin, join(path, i))
            for i, item in enumerate(sequence(node, origin, path, "a list of tags"))]


def parse_permissions(node: Node, origin: Origin, path: str) -> list[PermissionSpec]:
    """``[{user, vhost, configure, write, read}]``; the patterns must compile."""
    permissions: list[PermissionSpec] = []
    if is_null(node):
        return permissions
    seen: dict[tuple[str, str], str] = {}
    for index, item in enumerate(sequence(node, origin, path, "a list of permissions")):
        where = join(path, index)
        raw = mapping(item, origin, where,
                      "a mapping with user, vhost, configure, write and read")
        _check_known(raw, PERMISSION_KEYS, origin, where, "permission field")
        items = {key: value for key, _, value in raw}
        require_keys(list(items), PERMISSION_KEYS, item, origin, where)
        patterns = {}
        for key in ("configure", "write", "read"):
            pattern = string(items[key], origin, join(where, key))
            try:
                re.compile(pattern or "^$")
            except re.error as exc:
                raise origin.error(
                    items[key],
                    f"{join(where, key)}: {pattern!r} is not a valid regular expression "
                    f"({exc.msg} at position {exc.pos}), expected a regular expression such "
                    "as '.*', '^orders\\.' or '' (nothing)",
                ) from exc
            patterns[key] = pattern
        user = string(items["user"], origin, join(where, "user"), allow_empty=False)
        vhost = string(items["vhost"], origin, join(where, "vhost"), allow_empty=False)
        if (user, vhost) in seen:
            raise origin.error(item, f"{where}: permissions of user {user!r} in vhost "
                                     f"{vhost!r} are already given at {seen[user, vhost]}, "
                                     "expected one entry per user and vhost")
        seen[user, vhost] = origin.at(item)
        permissions.append(PermissionSpec(user, vhost, patterns["configure"],
                                          patterns["write"], patterns["read"], origin.at(item)))
    return permissions


def parse_topology(node: Node | None, origin: Origin, path: str = "") -> Topology:
    """A whole topology document (or the ``topology:`` section of the configuration)."""
    topology = Topology(where=origin.at(node) if node is not None else origin.label)
    if is_null(node):
        return topology
    assert node is not None
    raw = mapping(node, origin, path, "a mapping with vhosts, users and permissions")
    _check_known(raw, TOPOLOGY_KEYS, origin, path, "topology section")
    for key, _, value in raw:
        where = join(path, key)
        if key == "vhosts":
            if is_null(value):
                continue
            for name, key_node, vhost_node in mapping(
                value, origin, where, "a mapping of vhost names to their resources"
            ):
                topology.vhosts[name] = parse_vhost(name, key_node, vhost_node, origin,
                                                    join(where, name))
        elif key == "users":
            topology.users = parse_users(value, origin, where)
        else:
            topology.permissions = parse_permissions(value, origin, where)
    return topology


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file.

    Raises:
        ConfigError: ``FILE:LINE:COLUMN: what is wrong, expected ...``.
    """
    node, origin = compose_file(path)
    if isinstance(node, MappingNode):
        # A full configuration file passed as --topology: use its ``topology:`` section.
        keys = [key.value for key, _ in node.value if isinstance(key, ScalarNode)]
        if "topology" in keys and not set(keys) & set(TOPOLOGY_KEYS):
            section = next(value for key, value in node.value
                           if isinstance(key, ScalarNode) and key.value == "topology")
            return parse_topology(section, origin, "topology")
    return parse_topology(node, origin)


def merge(first: Topology, second: Topology) -> Topology:
    """Combine two topologies; the same resource twice must be declared the same way.

    Raises:
        ConfigError: naming both declarations.
    """
    merged = Topology(where=first.where)
    for source in (first, second):
        for name, vhost in source.vhosts.items():
            target = merged.vhosts.setdefault(name, VhostSpec(name, where=vhost.where))
            for exchange in vhost.exchanges.values():
                _merge_one(target.exchanges, exchange.name, exchange, "exchange", name)
            for queue in vhost.queues.values():
                _merge_one(target.queues, queue.name, queue, "queue", name)
            keys = {binding.key() for binding in target.bindings}
            target.bindings.extend(b for b in vhost.bindings if b.key() not in keys)
            for policy in vhost.policies.values():
                _merge_one(target.policies, policy.name, policy, "policy", name)
        for user in source.users.values():
            _merge_one(merged.users, user.name, user, "user", None)
        existing = {(p.user, p.vhost): p for p in merged.permissions}
        for permission in source.permissions:
            other = existing.get((permission.user, permission.vhost))
            if other is None:
                merged.permissions.append(permission)
                existing[permission.user, permission.vhost] = permission
            elif other.key() != permission.key():
                raise ConfigError(
                    f"{permission.where}: permissions of user '{permission.user}' in vhost "
                    f"'{permission.vhost}' differ from those at {other.where}, expected one "
                    "definition"
                )
    return merged


def _merge_one(target: dict[str, Any], name: str, spec: Any, what: str,
               vhost: str | None) -> None:
    other = target.get(name)
    if other is None:
        target[name] = spec
    elif other.key() != spec.key():
        place = f" in vhost '{vhost}'" if vhost is not None else ""
        raise ConfigError(f"{spec.where}: {what} '{name}'{place} is declared differently at "
                          f"{other.where}, expected the same declaration")
