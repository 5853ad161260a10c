"""Plan a topology against a live broker, then apply it all or nothing.

:func:`plan` compares the desired state with the broker and collects every conflict (a
queue that exists with other arguments, an exchange of another type, a binding to nothing,
an unknown exchange type, invalid binding arguments) *before* anything changes; only a plan
without conflicts is applied, through the same :class:`~amqpd.broker.vhost.VirtualHost` methods as
AMQP (``declare_exchange``, ``declare_queue``, ``bind``). Re-applying the same topology
plans nothing. Should a step still fail, everything done so far is undone.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import exchanges
from amqpd.access.auth import User
from amqpd.access.permissions import FULL, Permission
from amqpd.broker.policies import make_policy
from amqpd.config.model import (
    BindingSpec,
    ExchangeSpec,
    PermissionSpec,
    PolicySpec,
    QueueSpec,
    Topology,
    UserSpec,
)
from amqpd.config.nodes import ConfigError
from amqpd.config.policy import policy_problem
from amqpd.protocol.errors import AMQPError

if TYPE_CHECKING:
    from amqpd.broker.broker import Broker
    from amqpd.broker.exchange import Exchange
    from amqpd.broker.queue import Queue
    from amqpd.broker.vhost import VirtualHost
    from amqpd.config.settings import Settings

LOGGER = logging.getLogger(__name__)

UNKNOWN_ORIGIN = "declared by a client or restored from the data directory"


class TopologyError(ConfigError):
    """The topology cannot be applied; nothing was changed. One line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(slots=True)
class Managed:
    """What configuration and topology have put into a broker (for reload and export)."""

    users: set[str] = field(default_factory=set)
    permissions: set[tuple[str, str]] = field(default_factory=set)
    origins: dict[tuple[str, str, str], str] = field(default_factory=dict)


_MANAGED: weakref.WeakKeyDictionary[Broker, Managed] = weakref.WeakKeyDictionary()


def managed(broker: Broker) -> Managed:
    """The record of what configuration put into ``broker``."""
    record = _MANAGED.get(broker)
    if record is None:
        record = _MANAGED[broker] = Managed()
    return record


@dataclass(slots=True)
class Plan:
    """The changes that applying a topology makes (empty when it is already in place)."""

    vhosts: list[str] = field(default_factory=list)
    exchanges: list[tuple[str, ExchangeSpec]] = field(default_factory=list)
    queues: list[tuple[str, QueueSpec]] = field(default_factory=list)
    bindings: list[tuple[str, BindingSpec]] = field(default_factory=list)
    policies: list[tuple[str, PolicySpec]] = field(default_factory=list)
    users: list[UserSpec] = field(default_factory=list)
    permissions: list[PermissionSpec] = field(default_factory=list)
    remove_users: list[str] = field(default_factory=list)
    remove_permissions: list[tuple[str, str]] = field(default_factory=list)
    #: Things in the broker that the topology no longer lists (left in place, logged).
    left_alone: list[str] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.vhosts or self.exchanges or self.queues or self.bindings
                    or self.policies or self.users or self.permissions or self.remove_users
                    or self.remove_permissions)

    def describe(self) -> list[str]:
        """One line per change."""
        lines = [f"create vhost '{name}'" for name in self.vhosts]
        lines += [f"declare exchange '{e.name}' ({e.type}) in vhost '{v}'"
                  for v, e in self.exchanges]
        lines += [f"declare queue '{q.name}' in vhost '{v}'" for v, q in self.queues]
        lines += [f"bind {b.destination_type} '{b.destination}' to exchange '{b.source}' "
                  f"with key '{b.routing_key}' in vhost '{v}'" for v, b in self.bindings]
        lines += [f"set policy '{p.name}' in vhost '{v}'" for v, p in self.policies]
        lines += [f"set user '{u.name}'" for u in self.users]
        lines += [f"set permissions of '{p.user}' in vhost '{p.vhost}'"
                  for p in self.permissions]
        lines += [f"delete user '{name}'" for name in self.remove_users]
        lines += [f"clear permissions of '{u}' in vhost '{v}'"
                  for u, v in self.remove_permissions]
        return lines


@dataclass(slots=True)
class Desired:
    """Everything configuration asks for: resources plus users and permissions."""

    topology: Topology
    vhosts: list[str]
    users: dict[str, UserSpec]
    permissions: list[PermissionSpec]
    loopback_users: list[str]


def desired_state(settings: Settings) -> Desired:
    """Merge the configuration's users/vhosts/permissions with its topology."""
    topology = settings.topology or Topology()
    users = {user.name: user for user in settings.users}
    for user in topology.users.values():
        users.setdefault(user.name, user)
    permissions = {(p.user, p.vhost): p for p in settings.permissions}
    for permission in topology.permissions:
        permissions.setdefault((permission.user, permission.vhost), permission)
    vhosts = list(dict.fromkeys([*settings.vhosts, *topology.vhosts]))
    return Desired(topology, vhosts, users, list(permissions.values()),
                   list(settings.loopback_users))


# -- comparing -----------------------------------------------------------------------------


def _render(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _argument_difference(mine: Mapping[str, object], theirs: Mapping[str, object]) -> str | None:
    for key in sorted(set(mine) | set(theirs)):
        if (key in mine) != (key in theirs) or mine.get(key) != theirs.get(key):
            return (f"argument '{key}' is '{_render(mine.get(key, 'none'))}' in the topology "
                    f"but '{_render(theirs.get(key, 'none'))}' in the broker")
    return None


def _field_difference(fields: Iterable[tuple[str, object, object]]) -> str | None:
    for name, mine, theirs in fields:
        if mine != theirs:
            return f"{name} is '{_render(mine)}' in the topology but '{_render(theirs)}' in " \
                   "the broker"
    return None


def _exchange_conflict(spec: ExchangeSpec, existing: Exchange) -> str | None:
    return _field_difference([
        ("type", spec.type, existing.type_name),
        ("durable", spec.durable, existing.durable),
        ("auto_delete", spec.auto_delete, existing.auto_delete),
        ("internal", spec.internal, existing.internal),
    ]) or _argument_difference(spec.arguments, existing.arguments)


def _queue_conflict(spec: QueueSpec, existing: Queue) -> str | None:
    if existing.exclusive_owner is not None or getattr(existing, "exclusive", False):
        return "the broker has it as the exclusive queue of a connection"
    return _field_difference([
        ("durable", spec.durable, existing.durable),
        ("auto_delete", spec.auto_delete, existing.auto_delete),
    ]) or _argument_difference(spec.arguments, existing.arguments)


def _has_binding(source: Exchange, destination: object, spec: BindingSpec) -> bool:
    if source.kind is None:
        return False
    wanted = exchanges.Binding(destination, spec.routing_key, dict(spec.arguments))
    return any(binding == wanted for binding in source.kind.bindings())


def _dry_run_exchange(type_name: str, arguments: Mapping[str, object]) -> tuple[Any, str | None]:
    factory = exchanges.get_exchange_type(type_name)
    if factory is None:
        known = ", ".join(sorted(exchanges.REGISTRY))
        return None, f"unknown exchange type '{type_name}', expected one of: {known}"
    try:
        return factory(dict(arguments)), None
    except exchanges.ExchangeError as exc:
        return None, f"invalid exchange arguments: {exc.text}"


def _dry_run_queue(spec: QueueSpec, vhost_name: str) -> str | None:
    """The broker's own check of queue arguments (406 texts), without declaring anything."""
    try:
        from amqpd.broker.queue_arguments import parse_queue_arguments
    except ImportError:  # pragma: no cover - the core has no separate argument parser
        return None
    try:
        parse_queue_arguments(spec.arguments, f"queue '{spec.name}' in vhost '{vhost_name}'")
    except AMQPError as exc:
        return exc.detail
    return None


# -- planning ------------------------------------------------------------------------------


def plan(broker: Broker, desired: Desired, *, remove_unlisted: bool = False) -> Plan:
    """Compare the desired state with the broker.

    ``remove_unlisted`` (reload): users and permissions that configuration put in before but
    no longer lists are removed. Exchanges and queues are never deleted (they may hold
    messages); those no longer listed are reported in ``left_alone``.

    Raises:
        TopologyError: every conflict, each naming the topology's side and the broker's.
    """
    result = Plan()
    problems: list[str] = []
    origins = managed(broker).origins
    topology = desired.topology
    for name in dict.fromkeys([*desired.vhosts, *topology.vhosts]):
        if name not in broker.vhosts:
            result.vhosts.append(name)
    for vhost_name, vhost_spec in topology.vhosts.items():
        vhost = broker.vhosts.get(vhost_name)
        live_exchanges: Mapping[str, Exchange] = vhost.exchanges if vhost else {}
        live_queues: Mapping[str, Queue] = vhost.queues if vhost else {}
        scratch: dict[str, Any] = {}
        for spec in vhost_spec.exchanges.values():
            existing = live_exchanges.get(spec.name)
            if existing is not None:
                conflict = _exchange_conflict(spec, existing)
                if conflict:
                    problems.append(_conflict(spec.where, "exchange", spec.name, vhost_name,
                                              conflict, origins))
                continue
            kind, error = _dry_run_exchange(spec.type, spec.arguments)
            if error:
                problems.append(f"{spec.where}: exchange '{spec.name}' in vhost "
                                f"'{vhost_name}': {error}")
                continue
            scratch[spec.name] = kind
            result.exchanges.append((vhost_name, spec))
        for queue_spec in vhost_spec.queues.values():
            existing_queue = live_queues.get(queue_spec.name)
            if existing_queue is not None:
                conflict = _queue_conflict(queue_spec, existing_queue)
                if conflict:
                    problems.append(_conflict(queue_spec.where, "queue", queue_spec.name,
                                              vhost_name, conflict, origins))
                continue
            error = _dry_run_queue(queue_spec, vhost_name)
            if error:
                problems.append(f"{queue_spec.where}: {error}")
                continue
            result.queues.append((vhost_name, queue_spec))
        for binding in vhost_spec.bindings:
            problem = _plan_binding(binding, vhost_name, vhost_spec.exchanges,
                                    vhost_spec.queues, live_exchanges, live_queues, scratch,
                                    result)
            if problem:
                problems.append(problem)
        for policy in vhost_spec.policies.values():
            problem = _plan_policy(policy, vhost_name, vhost, result)
            if problem:
                problems.append(problem)
    _plan_users(broker, desired, result, remove_unlisted)
    if problems:
        raise TopologyError(problems)
    if remove_unlisted:
        result.left_alone = _unlisted(broker, topology)
    return result


def _conflict(where: str, what: str, name: str, vhost: str, difference: str,
              origins: Mapping[tuple[str, str, str], str]) -> str:
    origin = origins.get((vhost, what, name), UNKNOWN_ORIGIN)
    return (f"{where}: {what} '{name}' in vhost '{vhost}' already exists ({origin}) and "
            f"differs: {difference}; expected the same declaration (delete the {what} "
            "first to change it)")


def _plan_binding(
    binding: BindingSpec,
    vhost_name: str,
    spec_exchanges: Mapping[str, ExchangeSpec],
    spec_queues: Mapping[str, QueueSpec],
    live_exchanges: Mapping[str, Exchange],
    live_queues: Mapping[str, Queue],
    scratch: dict[str, Any],
    result: Plan,
) -> str | None:
    where = f"{binding.where}: binding of {binding.destination_type} '{binding.destination}' " \
            f"to exchange '{binding.source}' in vhost '{vhost_name}'"
    source_live = live_exchanges.get(binding.source)
    if source_live is None and binding.source not in spec_exchanges:
        return f"{where}: no exchange '{binding.source}', expected an exchange declared in " \
               "the topology or in the broker"
    if binding.destination_type == "queue":
        destination_live: object = live_queues.get(binding.destination)
        declared = binding.destination in spec_queues
    else:
        destination_live = live_exchanges.get(binding.destination)
        declared = binding.destination in spec_exchanges
    if destination_live is None and not declared:
        return f"{where}: no {binding.destination_type} '{binding.destination}', expected " \
               f"a {binding.destination_type} declared in the topology or in the broker"
    if source_live is not None and destination_live is not None and _has_binding(
        source_live, destination_live, binding
    ):
        return None
    # Validate the binding arguments (e.g. an x-rule) on a scratch exchange of the same type.
    kind = scratch.get(binding.source)
    if kind is None:
        if source_live is not None:
            type_name, arguments = source_live.type_name, source_live.arguments
        else:
            spec = spec_exchanges[binding.source]
            type_name, arguments = spec.type, spec.arguments
        kind, error = _dry_run_exchange(type_name, arguments)
        if error:
            return f"{where}: {error}"
        scratch[binding.source] = kind
    try:
        kind.bind(("topology-check", binding.destination_type, binding.destination),
                  binding.routing_key, dict(binding.arguments))
    except exchanges.ExchangeError as exc:
        return f"{where}: invalid binding: {exc.text}"
    result.bindings.append((vhost_name, binding))
    return None


def _plan_policy(spec: PolicySpec, vhost_name: str, vhost: VirtualHost | None,
                 result: Plan) -> str | None:
    """A policy is set when the broker lacks it or has it otherwise (policies, unlike
    queues, change in place); the YAML and JSON readers checked it, but an API caller's
    topology may not have been."""
    problem = policy_problem(spec.pattern, spec.definition, spec.apply_to, spec.priority)
    if problem is not None:
        return f"{spec.where}: policy '{spec.name}' in vhost '{vhost_name}': {problem}"
    live = vhost.policies.get(spec.name) if vhost is not None else None
    if live is None or (live.pattern, dict(live.definition), live.apply_to, live.priority) \
            != (spec.pattern, spec.definition, spec.apply_to, spec.priority):
        result.policies.append((vhost_name, spec))
    return None


def _plan_users(broker: Broker, desired: Desired, result: Plan, remove_unlisted: bool) -> None:
    record = managed(broker)
    for spec in desired.users.values():
        user = broker.users.users.get(spec.name)
        if user is None or (user.password_hash, sorted(user.tags)) != (
            spec.password_hash, sorted(spec.tags)
        ) or user.loopback_only != (spec.name in desired.loopback_users):
            result.users.append(spec)
    wanted = {(p.user, p.vhost) for p in desired.permissions}
    for spec_permission in desired.permissions:
        user = broker.users.users.get(spec_permission.user)
        current = user.permissions.get(spec_permission.vhost) if user else None
        target = (spec_permission.configure, spec_permission.write, spec_permission.read)
        if current is None or (current.configure, current.write, current.read) != target:
            result.permissions.append(spec_permission)
    if remove_unlisted:
        result.remove_users = sorted(name for name in record.users
                                     if name not in desired.users
                                     and name != broker.settings.default_user)
        result.remove_permissions = sorted(
            key for key in record.permissions
            if key not in wanted and key[0] not in result.remove_users
        )


def _unlisted(broker: Broker, topology: Topology) -> list[str]:
    record = managed(broker)
    lines = []
    for (vhost, what, name), where in sorted(record.origins.items()):
        spec = topology.vhosts.get(vhost)
        listed = spec is not None and name in (spec.exchanges if what == "exchange"
                                               else spec.queues)
        if not listed:
            lines.append(f"{what} '{name}' in vhost '{vhost}' (from {where}) is no longer in "
                         "the topology; left in place (delete it with AMQP)")
    return lines


# -- applying ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Undo:
    vhosts: list[str] = field(default_factory=list)
    exchanges: list[tuple[VirtualHost, str]] = field(default_factory=list)
    queues: list[tuple[VirtualHost, str]] = field(default_factory=list)
    bindings: list[tuple[VirtualHost, str, Queue | Exchange, str, dict[str, Any]]] = field(
        default_factory=list
    )
    policies: list[tuple[VirtualHost, str, Any]] = field(default_factory=list)
    users: dict[str, User | None] = field(default_factory=dict)
    user_state: dict[str, tuple[str, list[str], bool, dict[str, Permission]]] = field(
        default_factory=dict
    )


def apply(broker: Broker, planned: Plan, desired: Desired, *, configuration: bool = True) -> None:
    """Carry out a plan; on any failure undo what was done and raise TopologyError.

    ``configuration``: the plan comes from the broker's configuration, so the users and
    permissions it lists become configuration-managed (a later reload may remove them).
    Definitions imported at run time (HTTP) are not: a reload must never delete them. Where
    each exchange and queue came from is recorded either way (for conflict messages).
    """
    undo = _Undo()
    step = "start"
    try:
        for name in planned.vhosts:
            step = f"create vhost '{name}'"
            broker.add_vhost(name)
            undo.vhosts.append(name)
        for vhost_name, exchange in planned.exchanges:
            step = f"{exchange.where}: exchange '{exchange.name}'"
            vhost = broker.vhosts[vhost_name]
            vhost.declare_exchange(
                exchange.name, exchange.type, durable=exchange.durable,
                auto_delete=exchange.auto_delete, internal=exchange.internal,
                arguments=dict(exchange.arguments),
            )
            undo.exchanges.append((vhost, exchange.name))
        for vhost_name, queue in planned.queues:
            step = f"{queue.where}: queue '{queue.name}'"
            vhost = broker.vhosts[vhost_name]
            vhost.declare_queue(queue.name, None, durable=queue.durable,
                                auto_delete=queue.auto_delete, arguments=dict(queue.arguments))
            undo.queues.append((vhost, queue.name))
        for vhost_name, binding in planned.bindings:
            step = f"{binding.where}: binding to exchange '{binding.source}'"
            vhost = broker.vhosts[vhost_name]
            destination: Queue | Exchange = (
                vhost.queues[binding.destination] if binding.destination_type == "queue"
                else vhost.exchanges[binding.destination]
            )
            vhost.bind(binding.source, destination, binding.routing_key,
                       dict(binding.arguments))
            undo.bindings.append((vhost, binding.source, destination, binding.routing_key,
                                  dict(binding.arguments)))
        for vhost_name, policy in planned.policies:
            step = f"{policy.where}: policy '{policy.name}'"
            vhost = broker.vhosts[vhost_name]
            undo.policies.append((vhost, policy.name, vhost.policies.get(policy.name)))
            vhost.policies.put(make_policy(policy.name, policy.pattern, policy.definition,
                                           policy.apply_to, policy.priority))
        step = "users"
        _apply_users(broker, planned, desired, undo)
    except Exception as exc:
        _rollback(broker, undo)
        text = getattr(exc, "reply_text", None) or str(exc)
        raise TopologyError([f"{step}: {text}; nothing was applied"]) from exc
    _record(broker, planned, desired, configuration)


def _snapshot(undo: _Undo, user: User) -> None:
    if user.name not in undo.user_state:
        undo.user_state[user.name] = (user.password_hash, list(user.tags), user.loopback_only,
                                      dict(user.permissions))


def _apply_users(broker: Broker, planned: Plan, desired: Desired, undo: _Undo) -> None:
    store = broker.users
    for spec in planned.users:
        user = store.users.get(spec.name)
        loopback = spec.name in desired.loopback_users
        if user is None:
            undo.users.setdefault(spec.name, None)
            store.add(User(spec.name, spec.password_hash, list(spec.tags), vhosts=set(),
                           loopback_only=loopback))
        else:
            _snapshot(undo, user)
            user.password_hash = spec.password_hash
            user.tags = list(spec.tags)
            user.loopback_only = loopback
    for permission in planned.permissions:
        user = store.users[permission.user]
        _snapshot(undo, user)
        user.set_permission(permission.vhost,
                            Permission(permission.configure, permission.write, permission.read))
    for user_name, vhost in planned.remove_permissions:
        user = store.users.get(user_name)
        if user is None:
            continue
        _snapshot(undo, user)
        if user_name == broker.settings.default_user and vhost == broker.settings.default_vhost:
            user.set_permission(vhost, FULL)
        else:
            user.clear_permission(vhost)
    for name in planned.remove_users:
        user = store.users.get(name)
        if user is not None:
            _snapshot(undo, user)
            undo.users.setdefault(name, user)
            store.remove(name)


def _rollback(broker: Broker, undo: _Undo) -> None:
    store = broker.users
    for name, state in undo.user_state.items():
        user = store.users.get(name) or undo.users.get(name)
        if user is None:
            continue
        user.password_hash, user.tags, user.loopback_only = state[0], state[1], state[2]
        for vhost in list(user.permissions):
            user.clear_permission(vhost)
        for vhost, permission in state[3].items():
            user.set_permission(vhost, permission)
    for name, previous in undo.users.items():
        if previous is None:
            store.users.pop(name, None)
        else:
            store.add(previous)
    for vhost, name, previous in reversed(undo.policies):
        if previous is None:
            vhost.policies.delete(name)
        else:
            vhost.policies.put(previous)
    for vhost, source, destination, key, arguments in reversed(undo.bindings):
        _quietly(vhost.unbind, source, destination, key, arguments)
    for queue_vhost, queue_name in reversed(undo.queues):
        _quietly(queue_vhost.delete_queue, queue_name, None, False, False)
    for exchange_vhost, exchange_name in reversed(undo.exchanges):
        _quietly(exchange_vhost.delete_exchange, exchange_name)
    for vhost_name in reversed(undo.vhosts):
        broker.vhosts.pop(vhost_name, None)


def _quietly(function: Any, *args: Any) -> None:
    try:
        function(*args)
    except Exception:
        LOGGER.exception("undoing a partly applied topology failed")


def _record(broker: Broker, planned: Plan, desired: Desired, configuration: bool) -> None:
    record = managed(broker)
    if configuration:  # run-time imports never become users a reload would remove
        record.users = set(desired.users)
        record.permissions = {(p.user, p.vhost) for p in desired.permissions}
    for vhost_name, exchange in planned.exchanges:
        record.origins[vhost_name, "exchange", exchange.name] = exchange.where
    for vhost_name, queue in planned.queues:
        record.origins[vhost_name, "queue", queue.name] = queue.where
    for vhost_name, vhost_spec in desired.topology.vhosts.items():
        for exchange in vhost_spec.exchanges.values():
            record.origins.setdefault((vhost_name, "exchange", exchange.name), exchange.where)
        for queue in vhost_spec.queues.values():
            record.origins.setdefault((vhost_name, "queue", queue.name), queue.where)


# -- entry points --------------------------------------------------------------------------


def apply_topology(broker: Broker, topology: Topology) -> Plan:
    """Apply a topology on its own (users and permissions included); returns the plan.

    Raises:
        TopologyError: conflicts, or a failed step (then nothing was applied).
    """
    settings = broker.settings
    desired = Desired(topology, [], dict(topology.users), list(topology.permissions),
                      list(settings.loopback_users))
    planned = plan(broker, desired)
    if not planned.is_empty():
        apply(broker, planned, desired, configuration=False)
    return planned


def configure_broker(broker: Broker, settings: Settings | None = None) -> Plan:
    """Create the configured vhosts, users, permissions and topology in a new broker.

    Call once after the broker is built (and after the store has restored durable state),
    before accepting connections. The default vhost and user are made by ``Broker``.

    Raises:
        TopologyError: naming every conflict; nothing was applied.
    """
    settings = settings or broker.settings
    desired = desired_state(settings)
    planned = plan(broker, desired)
    if not planned.is_empty():
        apply(broker, planned, desired)
    for line in planned.describe():
        LOGGER.debug("configuration: %s", line)
    return planned
