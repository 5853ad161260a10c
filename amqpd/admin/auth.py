"""Who is asking: HTTP Basic credentials checked against the broker's users, and what
RabbitMQ's user tags let them do.

Tags (RabbitMQ's meaning): ``management`` -- the vhosts the user has permissions in;
``policymaker`` -- the same, and it may change policies there (``api_policies``);
``monitoring`` -- every vhost, every connection and the node; ``administrator`` --
everything, including users, vhosts and permissions. A user without any of them may not
use the API at all.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from typing import Literal

from amqpd.access.auth import User, UserStore, check_password, is_loopback
from amqpd.access.permissions import PermissionName, ResourceKind, is_authorized, permission_of
from amqpd.admin.errors import ApiError, not_authorised

Level = Literal["management", "monitoring", "administrator"]
MANAGEMENT_TAGS = frozenset({"management", "policymaker", "monitoring", "administrator"})
_LEVEL_TAGS: dict[Level, frozenset[str]] = {
    "management": MANAGEMENT_TAGS,
    "monitoring": frozenset({"monitoring", "administrator"}),
    "administrator": frozenset({"administrator"}),
}
_REFUSALS: dict[Level, str] = {
    "management": "Not management user",
    "monitoring": "Not monitor user",
    "administrator": "Not administrator user",
}


def _credentials(header: str | None) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, sep, password = decoded.partition(":")
    return (name, password) if sep else None


def authenticate(users: UserStore, header: str | None, peer_host: str | None) -> User:
    """The user named by an ``Authorization: Basic`` header, with a management tag.

    Raises:
        ApiError: 401 with RabbitMQ's ``WWW-Authenticate`` realm, for missing or wrong
        credentials and for users without a management tag.
    """
    credentials = _credentials(header)
    if credentials is None:
        raise not_authorised("Not_Authorized")
    name, password = credentials
    user = users.get(name)
    if user is None or not user.password_hash or not check_password(password, user.password_hash):
        raise not_authorised("Login failed")
    if user.loopback_only and not is_loopback(peer_host):
        raise not_authorised("User can only log in via localhost")
    require(user, "management")
    return user


def has_level(user: User, level: Level) -> bool:
    """True when one of the user's tags grants ``level``."""
    return not _LEVEL_TAGS[level].isdisjoint(user.tags)


def require(user: User, level: Level) -> None:
    """Raise 401 as RabbitMQ does unless the user's tags grant ``level``."""
    if not has_level(user, level):
        raise not_authorised(_REFUSALS[level])


def sees_all_vhosts(user: User) -> bool:
    """Monitoring and administrator users see every vhost; others only their own."""
    return has_level(user, "monitoring")


def may_see_vhost(user: User, vhost: str) -> bool:
    """Whether objects of ``vhost`` are visible to the user."""
    return sees_all_vhosts(user) or permission_of(user, vhost) is not None


def visible_vhosts(user: User, names: Iterable[str]) -> list[str]:
    """The vhosts among ``names`` the user may see."""
    return [name for name in names if may_see_vhost(user, name)]


def require_vhost(user: User, vhost: str) -> None:
    """401 unless the user may use ``vhost`` (administrators need a permission too, as
    RabbitMQ: changing objects goes through the same checks as AMQP)."""
    if permission_of(user, vhost) is None:
        raise not_authorised("Not_Authorized")


def require_permission(
    user: User, vhost: str, permission: PermissionName, kind: ResourceKind, name: str
) -> None:
    """The AMQP permission check for an object changed through the API."""
    if not is_authorized(user, vhost, permission, kind, name):
        raise ApiError(401, "not_authorised",
                       f"access to {kind} '{name}' in vhost '{vhost}' refused for user "
                       f"'{user.name}'")
