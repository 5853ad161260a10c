"""Streams in the management API (an amqpd extension; RabbitMQ's API has no consumer
groups): each stream's offsets on its queue object, every consumer group's committed
offset and lag at ``/api/stream-groups[/{vhost}]``, and an operator's reset or deletion of
a group at ``/api/stream-groups/{vhost}/{queue}/{group}``."""

from __future__ import annotations

from typing import Any

from amqpd.admin.auth import require_permission
from amqpd.admin.context import NO_CONTENT, Call, Reply
from amqpd.admin.errors import ApiError, bad_request, not_found
from amqpd.admin.routes import Route, route
from amqpd.admin.streams_view import group_rows
from amqpd.protocol.errors import ChannelError
from amqpd.streams.arguments import OffsetSpec, parse_offset
from amqpd.streams.groups import GroupInUseError
from amqpd.streams.queue import StreamQueue

_OFFSET_FORMS = ('{"offset": "first" | "last" | "next" | <offset> | <interval such as '
                 '"1h">} or {"timestamp": <seconds since the epoch>}')


def list_groups(call: Call) -> Reply:
    """GET /api/stream-groups[/{vhost}]: the vhosts the user may see, or one of them."""
    queues = [queue for vhost in call.vhosts() for _, queue in sorted(vhost.queues.items())]
    return Reply(body=group_rows(queues))


def _stream(call: Call) -> StreamQueue:
    """The stream of the path, for a user who may consume from it (read, as a purge)."""
    vhost = call.vhost()
    queue = call.queue(call.params["queue"])
    if not isinstance(queue, StreamQueue):
        raise bad_request(f"{queue.describe()} is not a stream: only streams have groups")
    require_permission(call.user, vhost.name, "read", "queue", queue.name)
    return queue


def _offset(body: dict[str, Any], describe: str) -> OffsetSpec:
    """The body's offset, in the forms x-stream-offset takes (a timestamp in JSON seconds)."""
    if "timestamp" in body:
        seconds = body["timestamp"]
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise bad_request(f"timestamp must be a number of seconds, got {seconds!r}")
        return OffsetSpec("timestamp", int(seconds * 1000))
    if "offset" not in body:
        raise bad_request(f"expected {_OFFSET_FORMS}")
    try:
        return parse_offset(body["offset"], describe)
    except ChannelError:
        raise bad_request(f"invalid offset {body['offset']!r}: expected {_OFFSET_FORMS}"
                          ) from None


def _group_row(stream: StreamQueue, name: str) -> dict[str, Any]:
    return next(row for row in group_rows([stream]) if row["group"] == name)


def reset_group(call: Call) -> Reply:
    """PUT /api/stream-groups/{vhost}/{queue}/{group}: move a group that has no consumers
    (or start a new one) to an offset; answers with the group's row."""
    stream = _stream(call)
    offset = _offset(call.json_object(), stream.describe())
    name = call.params["group"]
    try:
        stream.reset_group(name, offset)
    except GroupInUseError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    return Reply(body=_group_row(stream, name))


def delete_group(call: Call) -> Reply:
    """DELETE /api/stream-groups/{vhost}/{queue}/{group}: forget a group with no
    consumers and its committed offset."""
    stream = _stream(call)
    try:
        known = stream.delete_group(call.params["group"])
    except GroupInUseError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    if not known:
        raise not_found()
    return Reply(NO_CONTENT)


ROUTES: list[Route] = [
    route("GET", "api/stream-groups", list_groups),
    route("GET", "api/stream-groups/{vhost}", list_groups),
    route("PUT", "api/stream-groups/{vhost}/{queue}/{group}", reset_group),
    route("DELETE", "api/stream-groups/{vhost}/{queue}/{group}", delete_group),
]
