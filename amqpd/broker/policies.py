"""Policies (RabbitMQ's): settings that apply to every queue or exchange whose name a
pattern finds, changeable while those objects live.

Theory of operation:
- Each vhost holds a :class:`VhostPolicies`. Of the policies that match an object, the one
  with the highest priority applies, alone (RabbitMQ never merges two policies); equal
  priorities are broken by name, so the choice is the same on every run.
- Matching is RabbitMQ's: ``apply-to`` (``queues``, ``exchanges``, ``all``) and a regex
  *search* of the name (``re:run``), so ``order`` matches ``new-orders``; anchor with ``^``.
- A queue's behaviour lives in its :class:`~amqpd.broker.queue_arguments.QueuePolicy`,
  parsed once from its ``x-`` arguments. With a policy, the queue's arguments are first
  merged with the policy's definition the way RabbitMQ 3.10 resolves each key, and the
  merge is parsed instead: ``message-ttl``, ``expires``, ``max-length``,
  ``max-length-bytes`` and ``delivery-limit`` take the *lower* of argument and policy;
  ``overflow``, ``dead-letter-exchange`` and ``dead-letter-routing-key`` take the argument
  when there is one. For exchanges, an ``alternate-exchange`` argument wins over the
  policy's.
- Setting or deleting a policy re-applies every policy of the vhost to every live queue
  and exchange at once (declare-time code, so a queue behaves the same whether the policy
  came before or after it). As in RabbitMQ, a lower ``max-length`` trims the queue at once
  (drop-head, dead-lettered as ``maxlen``), and a new ``message-ttl`` applies to messages
  published from then on (RabbitMQ stamps the expiry at enqueue).
- Streams keep their own retention arguments: a policy is shown on them, but does not
  change them (RabbitMQ's stream keys ``max-age`` and friends are accepted and inert).
- Operator policies are not implemented.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from amqpd.broker.exchange import Exchange
from amqpd.broker.queue import Queue
from amqpd.broker.queue_arguments import QueuePolicy, parse_queue_arguments
from amqpd.config.policy import policy_problem, validation_failed
from amqpd.config.settings import QueueDefaults

Kind = Literal["queues", "exchanges"]

#: Keys where the lower of the queue's argument and the policy's value applies.
LOWER_WINS = ("message-ttl", "expires", "max-length", "max-length-bytes", "delivery-limit")
#: Keys where the queue's own argument, when it has one, beats the policy.
ARGUMENT_WINS = ("overflow", "dead-letter-exchange", "dead-letter-routing-key")
_MAX_TTL_MS = 2**32 - 1  # a policy may say more (RabbitMQ accepts it); a queue cannot


class PolicyError(ValueError):
    """A policy RabbitMQ would refuse; ``reason`` is its management API's 400 reason."""

    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem
        self.reason = validation_failed(problem)


@dataclass(frozen=True, slots=True)
class Policy:
    """One validated policy of a vhost, with its pattern compiled."""

    name: str
    pattern: str
    definition: Mapping[str, Any]
    apply_to: str
    priority: int | float
    regex: re.Pattern[str]

    def applies_to(self, kind: Kind, name: str) -> bool:
        """RabbitMQ's match: the right kind of object and a regex search of its name."""
        if self.apply_to != "all" and self.apply_to != kind:
            return False
        return self.regex.search(name) is not None

    def document(self, vhost: str) -> dict[str, Any]:
        """The policy in RabbitMQ's JSON shape (management API, definitions, the file)."""
        return {"vhost": vhost, "name": self.name, "pattern": self.pattern,
                "apply-to": self.apply_to, "definition": dict(self.definition),
                "priority": self.priority}


def make_policy(name: str, pattern: Any, definition: Any, apply_to: Any = "all",
                priority: Any = 0) -> Policy:
    """A validated policy.

    Raises:
        PolicyError: with RabbitMQ's reason for the first problem.
    """
    problem = policy_problem(pattern, definition, apply_to, priority)
    if problem is not None:
        raise PolicyError(problem)
    return Policy(name, pattern, dict(definition), apply_to, priority, re.compile(pattern))


def select(policies: Iterator[Policy] | list[Policy], kind: Kind, name: str) -> Policy | None:
    """The policy that applies to the object: the matching one of highest priority."""
    best: Policy | None = None
    for policy in policies:
        if not policy.applies_to(kind, name):
            continue
        if best is None or policy.priority > best.priority or (
                policy.priority == best.priority and policy.name < best.name):
            best = policy
    return best


def effective_arguments(arguments: Mapping[str, object],
                        definition: Mapping[str, Any]) -> dict[str, object]:
    """A queue's arguments with a policy's definition merged in, key by key as RabbitMQ
    resolves them (see the module docstring)."""
    merged = dict(arguments)
    for key in LOWER_WINS:
        value = definition.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        if key in ("message-ttl", "expires"):
            value = min(value, _MAX_TTL_MS)
        own = merged.get(f"x-{key}")
        if isinstance(own, int) and not isinstance(own, bool):
            value = min(own, value)
        merged[f"x-{key}"] = value
    for key in ARGUMENT_WINS:
        if key in definition and f"x-{key}" not in merged:
            merged[f"x-{key}"] = definition[key]
    if "x-dead-letter-exchange" not in merged:
        # A policy may name a routing key without an exchange (RabbitMQ accepts it); it
        # means nothing then. A queue's own arguments cannot (declare refuses that).
        merged.pop("x-dead-letter-routing-key", None)
    return merged


def queue_policy(vhost: str, name: str, arguments: Mapping[str, object],
                 defaults: QueueDefaults | None, applied: Policy | None) -> QueuePolicy:
    """What a queue does: its arguments (checked on their own first, so an invalid argument
    is refused with the usual 406 whatever the policy says), merged with ``applied``."""
    describe = f"queue '{name}' in vhost '{vhost}'"
    own = parse_queue_arguments(arguments, describe, defaults)
    if applied is None:
        return own
    return parse_queue_arguments(effective_arguments(arguments, applied.definition),
                                 describe, defaults)


def _is_stream(queue: Queue) -> bool:
    return queue.arguments.get("x-queue-type") == "stream"


class PolicyHost(Protocol):
    """What :class:`VhostPolicies` needs of its vhost."""

    name: str
    queues: dict[str, Queue]
    exchanges: dict[str, Exchange]
    queue_defaults: QueueDefaults | None

    def watch_expiry(self, queue: Queue) -> None:
        """Let the ticker check the queue's ``expires``."""


class VhostPolicies:
    """The policies of one vhost, applied to its queues and exchanges."""

    def __init__(self, host: PolicyHost):
        self.host = host
        self._policies: dict[str, Policy] = {}
        # Called after every change (the broker writes the policies file).
        self.on_change: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._policies)

    def __iter__(self) -> Iterator[Policy]:
        """The policies in name order."""
        return iter([self._policies[name] for name in sorted(self._policies)])

    def get(self, name: str) -> Policy | None:
        """The policy of that name, or None."""
        return self._policies.get(name)

    def match(self, kind: Kind, name: str) -> Policy | None:
        """The policy that applies to the queue or exchange of that name, or None."""
        if not self._policies:
            return None
        return select(list(self._policies.values()), kind, name)

    def put(self, policy: Policy) -> bool:
        """Add or replace a policy and re-apply; True when it is new."""
        created = policy.name not in self._policies
        self._policies[policy.name] = policy
        self._changed()
        return created

    def delete(self, name: str) -> bool:
        """Remove a policy and re-apply; False when there was none of that name."""
        if self._policies.pop(name, None) is None:
            return False
        self._changed()
        return True

    def clear(self) -> None:
        """Remove every policy (the vhost is being deleted)."""
        if self._policies:
            self._policies.clear()
            self._changed()

    def _changed(self) -> None:
        self.reapply()
        if self.on_change is not None:
            self.on_change()

    # -- applying ------------------------------------------------------------------------

    def queue_policy(self, name: str, arguments: Mapping[str, object]) -> QueuePolicy:
        """What a queue being declared does, its policy included."""
        return queue_policy(self.host.name, name, arguments, self.host.queue_defaults,
                            self.match("queues", name))

    def apply_to_exchange(self, exchange: Exchange) -> None:
        """Set the exchange's alternate exchange: its own argument, else the policy's."""
        if not exchange.name:
            return  # the default exchange routes by queue name; RabbitMQ has no AE for it
        own = exchange.arguments.get("alternate-exchange")
        if isinstance(own, str) and own:
            exchange.alternate = own
            return
        applied = self.match("exchanges", exchange.name)
        alternate = applied.definition.get("alternate-exchange") if applied else None
        exchange.alternate = alternate if isinstance(alternate, str) and alternate else None

    def apply_to_queue(self, queue: Queue) -> None:
        """Recompute a live queue's behaviour from its arguments and its policy now."""
        if _is_stream(queue):
            return
        updated = self.queue_policy(queue.name, queue.arguments)
        if updated == queue.policy:
            return
        queue.policy = updated
        if updated.expires is not None:
            self.host.watch_expiry(queue)
        queue.enforce_limits()

    def reapply(self) -> None:
        """Apply the current policies to every queue and exchange of the vhost."""
        for queue in list(self.host.queues.values()):
            if not queue.deleted:
                self.apply_to_queue(queue)
        for exchange in list(self.host.exchanges.values()):
            self.apply_to_exchange(exchange)


def effective_definition(policies: VhostPolicies, kind: Kind, name: str) -> dict[str, Any]:
    """The definition of the policy that applies (``{}`` without one), for the management
    API's ``effective_policy_definition``."""
    applied = policies.match(kind, name)
    return dict(applied.definition) if applied else {}
