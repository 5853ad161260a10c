"""RabbitMQ's permission model: configure / write / read regular expressions per vhost.

A user's permissions in a vhost are three regular expressions, matched against the names of
the queues and exchanges an operation touches, exactly as RabbitMQ does
(``rabbit_auth_backend_internal``):

- the match is a *search* (Erlang ``re:run``): ``orders`` also matches ``orders-eu``; anchor
  with ``^...$`` to match whole names. ``.*`` matches everything;
- the empty string matches nothing (RabbitMQ turns it into ``^$``, and no resource is called
  the empty string);
- the default exchange ``""`` is checked under the name ``amq.default``.

Which operation needs which permission (RabbitMQ's access-control table):

==========================  ==========================  ===================  ==============
operation                   configure                   write                read
==========================  ==========================  ===================  ==============
exchange.declare            exchange                    AE (if given)        exchange (AE)
exchange.declare passive    --                          --                   --
exchange.delete             exchange                    --                   --
queue.declare               queue                       DLX (if given)       queue (DLX)
queue.declare passive       --                          --                   --
queue.delete                queue                       --                   --
queue.bind / unbind         --                          queue                exchange
exchange.bind / unbind      --                          destination exch.    source exch.
basic.publish               --                          exchange             --
basic.get / consume         --                          --                   queue
queue.purge                 --                          --                   queue
==========================  ==========================  ===================  ==============

Patterns are compiled once per user and vhost (when the user is configured), and each
compiled set caches its recent answers, so a check on the publish path is a dict lookup.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Literal, Protocol

from amqpd.protocol.errors import ChannelError, ConnectionLevelError

PermissionName = Literal["configure", "write", "read"]
ResourceKind = Literal["queue", "exchange"]

_CACHE_LIMIT = 1024


class AccessRefusedError(ChannelError):
    """403 ACCESS_REFUSED with RabbitMQ's text; closes the channel."""

    def __init__(self, detail: str, class_id: int = 0, method_id: int = 0):
        super().__init__(403, detail, class_id, method_id)


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a permission pattern as RabbitMQ does ('' means '^$').

    Raises:
        re.error: for an invalid regular expression.
    """
    return re.compile(pattern or "^$")


@dataclass(frozen=True, slots=True)
class Permission:
    """The three patterns of one user in one vhost, compiled."""

    configure: str = ".*"
    write: str = ".*"
    read: str = ".*"
    _compiled: dict[str, re.Pattern[str]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    _answers: dict[tuple[str, str], bool] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        for name in ("configure", "write", "read"):
            self._compiled[name] = compile_pattern(getattr(self, name))

    def allows(self, permission: PermissionName, name: str) -> bool:
        """True if ``name`` matches the pattern of ``permission``."""
        key = (permission, name)
        answer = self._answers.get(key)
        if answer is None:
            answer = self._compiled[permission].search(name) is not None
            if len(self._answers) >= _CACHE_LIMIT:
                self._answers.clear()
            self._answers[key] = answer
        return answer


#: ``.*`` for all three: what the default user gets on the default vhost.
FULL = Permission()


class User(Protocol):
    """Whose permissions are checked (:class:`amqpd.access.auth.User` is one)."""

    @property
    def name(self) -> str:
        """The user name, quoted in refusals."""

    @property
    def permissions(self) -> Mapping[str, Permission]:
        """The compiled permissions per vhost."""

    @property
    def vhosts(self) -> Set[str]:
        """The vhosts the user may open."""


def resource_name(resource_kind: ResourceKind, name: str) -> str:
    """The name checked against the patterns (the default exchange is ``amq.default``)."""
    if resource_kind == "exchange" and name == "":
        return "amq.default"
    return name


def permission_of(user: User, vhost: str) -> Permission | None:
    """The user's permissions in a vhost, or None when it has none there."""
    permission = user.permissions.get(vhost)
    if permission is None and vhost in user.vhosts:
        return FULL  # a User made with vhosts={...} and no explicit permissions
    return permission


def authorize(
    user: User,
    vhost: str,
    permission: PermissionName,
    resource_kind: ResourceKind,
    name: str,
) -> None:
    """Allow the operation or raise 403 as RabbitMQ does.

    Raises:
        AccessRefusedError: ``access to queue 'q' in vhost '/' refused for user 'u'``.
    """
    resource = resource_name(resource_kind, name)
    granted = permission_of(user, vhost)
    if granted is None or not granted.allows(permission, resource):
        raise AccessRefusedError(
            f"access to {resource_kind} '{resource}' in vhost '{vhost}' refused for user "
            f"'{user.name}'"
        )


def is_authorized(
    user: User, vhost: str, permission: PermissionName, resource_kind: ResourceKind, name: str
) -> bool:
    """:func:`authorize` as a boolean."""
    granted = permission_of(user, vhost)
    return granted is not None and granted.allows(permission, resource_name(resource_kind, name))


def check_vhost_access(user: User, vhost: str) -> None:
    """connection.open: a user needs some permission entry in the vhost.

    Raises:
        ConnectionLevelError: 530 NOT_ALLOWED ``access to vhost '/' refused for user 'x'``.
    """
    if permission_of(user, vhost) is None:
        raise ConnectionLevelError(
            530, f"access to vhost '{vhost}' refused for user '{user.name}'", 10, 40
        )
