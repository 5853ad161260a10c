"""Connections, channels and consumers: read from the connections the server owns, and
connections closed on request (320 CONNECTION_FORCED with the operator's reason)."""

from __future__ import annotations

from typing import Any

from amqpd.admin.auth import sees_all_vhosts
from amqpd.admin.context import NO_CONTENT, Call, Reply
from amqpd.admin.errors import not_found
from amqpd.admin.paging import listing, shape
from amqpd.admin.readmodel import (
    channel_json,
    channels_of,
    connection_json,
    consumer_json,
    sessions,
)
from amqpd.admin.routes import Route, route
from amqpd.protocol.constants import CONNECTION_FORCED
from amqpd.session.connection import Connection


def _visible(call: Call) -> list[Connection]:
    """Open connections the user may see -- monitoring users all, others their own --
    restricted to the vhost of the path when there is one."""
    connections = call.state.open_connections()
    if "vhost" in call.params:
        vhost = call.vhost()
        connections = [c for c in connections if c.vhost is vhost]
    if not sees_all_vhosts(call.user):
        connections = [c for c in connections if c.user_name == call.user.name]
    return connections


def _connection(call: Call) -> Connection:
    name = call.params["connection"]
    for connection in _visible(call):
        if connection_json(call.state, connection)["name"] == name:
            return connection
    raise not_found()


def list_connections(call: Call) -> Reply:
    """GET /api/connections, /api/vhosts/{vhost}/connections."""
    items = [connection_json(call.state, c) for c in _visible(call)]
    items.sort(key=lambda item: item["name"])
    return Reply(body=listing(items, call.query))


def get_connection(call: Call) -> Reply:
    """GET /api/connections/{connection}."""
    return Reply(body=shape(connection_json(call.state, _connection(call)), call.query))


def close_connection(call: Call) -> Reply:
    """DELETE /api/connections/{connection}; the ``X-Reason`` header is the close text."""
    connection = _connection(call)
    reason = call.headers.get("x-reason") or "Closed via management plugin"
    connection.close_by_server(CONNECTION_FORCED, reason)
    connection.wakeup()  # the writer may be idle: make it flush the close and finish
    return Reply(NO_CONTENT)


def connection_channels(call: Call) -> Reply:
    """GET /api/connections/{connection}/channels."""
    connection = _connection(call)
    items = [channel_json(call.state, connection, ch) for ch in channels_of(connection)]
    return Reply(body=listing(items, call.query, pageable=False))


def _channels(call: Call) -> list[dict[str, Any]]:
    visible = {id(c) for c in _visible(call)}
    return [channel_json(call.state, connection, channel)
            for connection, channel in sessions(call.state) if id(connection) in visible]


def list_channels(call: Call) -> Reply:
    """GET /api/channels, /api/vhosts/{vhost}/channels."""
    return Reply(body=listing(_channels(call), call.query))


def get_channel(call: Call) -> Reply:
    """GET /api/channels/{channel}."""
    for item in _channels(call):
        if item["name"] == call.params["channel"]:
            return Reply(body=shape(item, call.query))
    raise not_found()


def list_consumers(call: Call) -> Reply:
    """GET /api/consumers[/{vhost}]."""
    visible = {id(c) for c in _visible(call)}
    items = [consumer_json(call.state, connection, channel, consumer)
             for connection, channel in sessions(call.state) if id(connection) in visible
             for consumer in list(channel.consumers.values())]
    return Reply(body=listing(items, call.query, pageable=False))


ROUTES: list[Route] = [
    route("GET", "api/connections", list_connections),
    route("GET", "api/connections/{connection}", get_connection),
    route("DELETE", "api/connections/{connection}", close_connection),
    route("GET", "api/connections/{connection}/channels", connection_channels),
    route("GET", "api/vhosts/{vhost}/connections", list_connections),
    route("GET", "api/channels", list_channels),
    route("GET", "api/channels/{channel}", get_channel),
    route("GET", "api/vhosts/{vhost}/channels", list_channels),
    route("GET", "api/consumers", list_consumers),
    route("GET", "api/consumers/{vhost}", list_consumers),
]
