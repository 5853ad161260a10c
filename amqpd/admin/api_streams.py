"""Streams in the management API (an amqpd extension; RabbitMQ's API has no consumer
groups): each stream's offsets on its queue object, and every consumer group's committed
offset and lag at ``/api/stream-groups[/{vhost}]``."""

from __future__ import annotations

from amqpd.admin.context import Call, Reply
from amqpd.admin.routes import Route, route
from amqpd.admin.streams_view import group_rows


def list_groups(call: Call) -> Reply:
    """GET /api/stream-groups[/{vhost}]: the vhosts the user may see, or one of them."""
    queues = [queue for vhost in call.vhosts() for _, queue in sorted(vhost.queues.items())]
    return Reply(body=group_rows(queues))


ROUTES: list[Route] = [
    route("GET", "api/stream-groups", list_groups),
    route("GET", "api/stream-groups/{vhost}", list_groups),
]
