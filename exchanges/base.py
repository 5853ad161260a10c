"""The contract between the broker and an exchange type.

An exchange type owns the bindings of one exchange and answers one question fast: which
destinations does this message go to? Everything expensive (parsing binding keys, argument
tables, rule text) happens in :meth:`ExchangeType.bind`, so :meth:`ExchangeType.route` only
walks precompiled structures.

Destinations are opaque hashable objects owned by the server (queues or exchanges); this
package never looks inside them, except that ``x-consistent-hash`` asks for a stable name
(see :mod:`exchanges.consistent_hash`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Generic, Protocol, TypeVar

from mypy_extensions import mypyc_attr

from exchanges.values import arguments_identity, readonly_arguments

D = TypeVar("D", bound=Hashable)


# The errors are public API: plugins may subclass them in interpreted Python.
@mypyc_attr(allow_interpreted_subclasses=True)
class ExchangeError(Exception):
    """A declare or bind the server must refuse; ``reply_code`` and ``text`` go on the wire."""

    # ClassVar: a class constant per error class (mypyc: not an instance attribute default).
    reply_code: ClassVar[int] = 406

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@mypyc_attr(allow_interpreted_subclasses=True)
class PreconditionFailed(ExchangeError):  # noqa: N818 - the AMQP name, fixed by the API
    """Invalid exchange or binding arguments (AMQP 406 PRECONDITION_FAILED)."""

    reply_code = 406


@mypyc_attr(allow_interpreted_subclasses=True)
class NotAllowed(ExchangeError):  # noqa: N818 - the AMQP name, fixed by the API
    """An operation the exchange type never permits (AMQP 530 NOT_ALLOWED)."""

    reply_code = 530


class Routable(Protocol):
    """What routing may look at. ``x-consistent-hash`` and ``x-rules`` also read an optional
    ``properties`` attribute (see :mod:`exchanges.properties`)."""

    @property
    def routing_key(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, object] | None: ...


@mypyc_attr(native_class=False)  # mypyc: a dataclass with slots=True stays a Python class
@dataclass(frozen=True, slots=True, eq=False)
class Binding(Generic[D]):
    """One binding. Identity is the triple (destination, routing_key, arguments), with the
    arguments compared type-exactly (``1``, ``1.0`` and ``True`` are different arguments)."""

    destination: D
    routing_key: str
    arguments: Mapping[str, object]
    # Computed once so that bindings can live in sets and dicts although argument tables
    # (dicts, lists) are not hashable themselves.
    _identity: Hashable = field(init=False, repr=False)

    def __post_init__(self) -> None:
        arguments = readonly_arguments(self.arguments)
        object.__setattr__(self, "arguments", arguments)
        object.__setattr__(
            self,
            "_identity",
            (self.destination, self.routing_key, arguments_identity(arguments)),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Binding):
            return NotImplemented
        return bool(self._identity == other._identity)

    def __hash__(self) -> int:
        return hash(self._identity)


# Plugins (and tests) subclass it in interpreted Python; the built-in types are compiled.
@mypyc_attr(allow_interpreted_subclasses=True)
class ExchangeType(ABC, Generic[D]):
    """Routing logic plus the bindings of one exchange.

    Subclasses set ``type_name`` (the name clients pass to exchange.declare) and are made
    available to the server with :func:`exchanges.register` or the ``amqpd.exchanges``
    entry-point group.
    """

    type_name: ClassVar[str]

    def __init__(self, arguments: Mapping[str, object]) -> None:
        """Validate exchange.declare arguments; the default accepts (and ignores) all of
        them, as RabbitMQ does for arguments an exchange type does not know."""
        del arguments

    @abstractmethod
    def bind(self, destination: D, routing_key: str, arguments: Mapping[str, object]) -> bool:
        """Add a binding; False if this exact binding already existed.

        Raises :class:`PreconditionFailed` for invalid binding arguments, leaving the
        exchange unchanged.
        """

    @abstractmethod
    def unbind(self, destination: D, routing_key: str, arguments: Mapping[str, object]) -> bool:
        """Remove a binding; False if it did not exist."""

    @abstractmethod
    def route(self, message: Routable) -> Collection[D]:
        """The destinations of a message, each at most once. Never raises for odd messages."""

    @abstractmethod
    def bindings(self) -> Iterator[Binding[D]]:
        """Every binding of this exchange."""

    def unbind_destination(self, destination: D) -> int:
        """Remove every binding to ``destination`` (it was deleted); returns how many.

        This default scans all bindings; the built-in types override it with an index.
        """
        doomed = [b for b in self.bindings() if b.destination == destination]
        for binding in doomed:
            self.unbind(binding.destination, binding.routing_key, binding.arguments)
        return len(doomed)

    def __len__(self) -> int:
        """The number of bindings (the server auto-deletes exchanges when it drops to 0)."""
        return sum(1 for _ in self.bindings())
