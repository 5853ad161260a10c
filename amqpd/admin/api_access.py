"""Vhosts, users and permissions (administrator only, but for listing one's own vhosts).

Objects made here live in the broker like those from the configuration; like them, users,
vhosts and permissions are not written to the store (the configuration is where durable
ones belong), while durable queues and exchanges declared in a new vhost are.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from amqpd.access.auth import User, hash_algorithm, hash_password
from amqpd.access.permissions import FULL, Permission
from amqpd.admin.auth import require, visible_vhosts
from amqpd.admin.context import NO_CONTENT, Call, Reply, created_or_updated
from amqpd.admin.errors import bad_request, not_found
from amqpd.admin.paging import listing, shape
from amqpd.admin.readmodel import permission_json, unacked_by_queue, user_json, vhost_json
from amqpd.admin.routes import Route, route
from amqpd.broker.broker import Broker
from amqpd.protocol.constants import CONNECTION_FORCED
from amqpd.topology.access_file import save_access

# -- vhosts --------------------------------------------------------------------------------


def list_vhosts(call: Call) -> Reply:
    """GET /api/vhosts: those the user may see."""
    broker = call.state.broker
    unacked = unacked_by_queue(call.state)
    items = [vhost_json(broker.vhosts[name], call.state, unacked, call.query)
             for name in visible_vhosts(call.user, sorted(broker.vhosts))]
    return Reply(body=listing(items, call.query))


def get_vhost(call: Call) -> Reply:
    """GET /api/vhosts/{vhost}."""
    vhost = call.vhost()
    return Reply(body=shape(vhost_json(vhost, call.state, unacked_by_queue(call.state),
                                       call.query), call.query))


def put_vhost(call: Call) -> Reply:
    """PUT /api/vhosts/{vhost}: the creator gets full permissions in a new vhost, as
    RabbitMQ does (clients rely on it)."""
    require(call.user, "administrator")
    name = call.vhost_name
    call.json()  # a body, if any, must be JSON (description/tags are accepted and ignored)
    broker = call.state.broker
    existed = name in broker.vhosts
    broker.add_vhost(name)
    if not existed and name not in call.user.permissions:
        call.user.set_permission(name, FULL)
    return created_or_updated(not existed)


def delete_vhost(broker: Broker, name: str, connections: list[Any]) -> None:
    """Remove a vhost: close its connections (320), delete its queues and exchanges, and
    drop every user's permissions there."""
    vhost = broker.vhosts[name]
    for connection in connections:
        if connection.vhost is vhost:
            connection.close_by_server(CONNECTION_FORCED, f"vhost '{name}' is deleted")
            connection.wakeup()
    for queue in list(vhost.queues.values()):
        vhost.remove_queue(queue)
    for exchange_name in list(vhost.exchanges):
        if exchange_name and not exchange_name.startswith("amq."):
            vhost.delete_exchange(exchange_name)
    for user in broker.users.users.values():
        user.clear_permission(name)
    vhost.policies.clear()  # and from the policies file
    del broker.vhosts[name]


def delete_vhost_endpoint(call: Call) -> Reply:
    """DELETE /api/vhosts/{vhost}."""
    require(call.user, "administrator")
    call.vhost()
    delete_vhost(call.state.broker, call.vhost_name, list(call.state.connections()))
    return Reply(NO_CONTENT)


# -- users ---------------------------------------------------------------------------------


def _tags(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [tag.strip() for tag in value.split(",") if tag.strip()]
    if isinstance(value, list) and all(isinstance(tag, str) for tag in value):
        return [tag.strip() for tag in value if tag.strip()]
    raise bad_request("tags must be a comma-separated string or a list of strings")


def list_users(call: Call) -> Reply:
    """GET /api/users."""
    users = call.state.broker.users.users
    return Reply(body=listing([user_json(users[n]) for n in sorted(users)], call.query))


def list_users_without_permissions(call: Call) -> Reply:
    """GET /api/users/without-permissions."""
    users = call.state.broker.users.users
    return Reply(body=[user_json(users[n]) for n in sorted(users) if not users[n].permissions])


def _user(call: Call) -> User:
    user = call.state.broker.users.get(call.params["user"])
    if user is None:
        raise not_found()
    return user


def get_user(call: Call) -> Reply:
    """GET /api/users/{user}."""
    return Reply(body=shape(user_json(_user(call)), call.query))


def put_user(call: Call) -> Reply:
    """PUT /api/users/{user}: ``password`` or ``password_hash`` (RabbitMQ's salted format),
    ``tags``. Permissions of an existing user are kept."""
    name = call.params["user"]
    body = call.json_object()
    store = call.state.broker.users
    existing = store.get(name)
    password = body.get("password")
    password_hash = body.get("password_hash")
    if isinstance(password, str):
        password_hash = hash_password(password)
    elif isinstance(password_hash, str):
        if password_hash and hash_algorithm(password_hash) is None:
            raise bad_request("password_hash is not a RabbitMQ salted hash (base64)")
    elif existing is not None:
        password_hash = existing.password_hash
    else:
        raise bad_request("key_missing: password or password_hash")
    tags = _tags(body.get("tags"))
    if existing is not None:
        existing.password_hash = password_hash
        existing.tags = tags
        return created_or_updated(False)
    store.add(User(name, password_hash, tags=tags, vhosts=set()))
    return created_or_updated(True)


def delete_user(call: Call) -> Reply:
    """DELETE /api/users/{user}."""
    _user(call)
    call.state.broker.users.remove(call.params["user"])
    return Reply(NO_CONTENT)


def bulk_delete_users(call: Call) -> Reply:
    """POST /api/users/bulk-delete ``{"users": [...]}``; unknown names are skipped."""
    names = call.json_object().get("users")
    if not isinstance(names, list):
        raise bad_request("users must be a list of names")
    for name in names:
        if isinstance(name, str):
            call.state.broker.users.remove(name)
    return Reply(NO_CONTENT)


def user_permissions(call: Call) -> Reply:
    """GET /api/users/{user}/permissions."""
    user = _user(call)
    items = [permission_json(user, vhost) for vhost in sorted(user.permissions)]
    return Reply(body=[item for item in items if item is not None])


# -- permissions ---------------------------------------------------------------------------


def _all_permissions(call: Call, vhost: str | None = None) -> list[dict[str, Any]]:
    users = call.state.broker.users.users
    result = []
    for name in sorted(users):
        user = users[name]
        for vhost_name in sorted(user.permissions):
            if vhost is not None and vhost_name != vhost:
                continue
            item = permission_json(user, vhost_name)
            if item is not None:
                result.append(item)
    return result


def list_permissions(call: Call) -> Reply:
    """GET /api/permissions."""
    return Reply(body=listing(_all_permissions(call), call.query, pageable=False))


def vhost_permissions(call: Call) -> Reply:
    """GET /api/vhosts/{vhost}/permissions."""
    call.vhost()
    return Reply(body=_all_permissions(call, call.vhost_name))


def get_permission(call: Call) -> Reply:
    """GET /api/permissions/{vhost}/{user}."""
    call.vhost()
    item = permission_json(_user(call), call.vhost_name)
    if item is None:
        raise not_found()
    return Reply(body=item)


def put_permission(call: Call) -> Reply:
    """PUT /api/permissions/{vhost}/{user} ``{"configure", "write", "read"}``."""
    call.vhost()
    user = _user(call)
    body = call.json_object()
    patterns = {}
    for key in ("configure", "write", "read"):
        value = body.get(key)
        if not isinstance(value, str):
            raise bad_request(f"key_missing: {key}")
        try:
            re.compile(value or "^$")
        except re.error as exc:
            raise bad_request(f"invalid regular expression '{value}': {exc}") from None
        patterns[key] = value
    existed = call.vhost_name in user.permissions
    user.set_permission(call.vhost_name, Permission(**patterns))
    return created_or_updated(not existed)


def delete_permission(call: Call) -> Reply:
    """DELETE /api/permissions/{vhost}/{user}."""
    call.vhost()
    user = _user(call)
    if call.vhost_name not in user.permissions:
        raise not_found()
    user.clear_permission(call.vhost_name)
    return Reply(NO_CONTENT)


def _kept(handler: Callable[[Call], Reply]) -> Callable[[Call], Reply]:
    """A change of users, vhosts or permissions is written to the data directory before
    the answer, so it survives a restart (amqpd.topology.access_file)."""

    def changed(call: Call) -> Reply:
        reply = handler(call)
        save_access(call.state.broker)
        return reply

    changed.__doc__ = handler.__doc__
    return changed


ROUTES: list[Route] = [
    route("GET", "api/vhosts", list_vhosts),
    route("GET", "api/vhosts/{vhost}", get_vhost),
    route("PUT", "api/vhosts/{vhost}", _kept(put_vhost), "administrator"),
    route("DELETE", "api/vhosts/{vhost}", _kept(delete_vhost_endpoint), "administrator"),
    route("GET", "api/vhosts/{vhost}/permissions", vhost_permissions, "administrator"),
    route("GET", "api/users", list_users, "administrator"),
    route("GET", "api/users/without-permissions", list_users_without_permissions,
          "administrator"),
    route("POST", "api/users/bulk-delete", _kept(bulk_delete_users), "administrator"),
    route("GET", "api/users/{user}", get_user, "administrator"),
    route("PUT", "api/users/{user}", _kept(put_user), "administrator"),
    route("DELETE", "api/users/{user}", _kept(delete_user), "administrator"),
    route("GET", "api/users/{user}/permissions", user_permissions, "administrator"),
    route("GET", "api/permissions", list_permissions, "administrator"),
    route("GET", "api/permissions/{vhost}/{user}", get_permission, "administrator"),
    route("PUT", "api/permissions/{vhost}/{user}", _kept(put_permission), "administrator"),
    route("DELETE", "api/permissions/{vhost}/{user}", _kept(delete_permission), "administrator"),
]
