"""What a handler gets (:class:`Call`) and gives back (:class:`Reply`), plus the lookups
every endpoint family shares (vhost, queue, exchange -- 404 and 401 as RabbitMQ)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from amqpd.access.auth import User
from amqpd.access.permissions import permission_of
from amqpd.admin.auth import has_level, may_see_vhost
from amqpd.admin.errors import ApiError, bad_request, not_authorised, not_found
from amqpd.admin.readmodel import LiveState
from amqpd.broker.exchange import Exchange
from amqpd.broker.queue import Queue
from amqpd.broker.vhost import VirtualHost


@dataclass(slots=True)
class Reply:
    """Status, a JSON-able body (None = no body) and extra headers."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


NO_CONTENT = 204


def created_or_updated(created: bool) -> Reply:
    """PUT answers 201 when it created the object and 204 when it existed."""
    return Reply(201 if created else 204)


@dataclass(slots=True)
class Call:
    """One authenticated API request."""

    state: LiveState
    user: User
    method: str
    params: dict[str, str]
    query: dict[str, str]
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    def json(self, default: Any = None) -> Any:
        """The body as JSON (``default`` when it is empty); 400 ``not_json`` otherwise."""
        if not self.body.strip():
            return {} if default is None else default
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise bad_request("not_json") from None

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object."""
        document = self.json()
        if not isinstance(document, dict):
            raise bad_request("not_json: expected a JSON object")
        return document

    @property
    def vhost_name(self) -> str:
        """The ``{vhost}`` path variable."""
        return self.params["vhost"]

    def vhost(self) -> VirtualHost:
        """The vhost of the path: 404 if unknown, 401 if the user may not see it."""
        vhost = self.state.broker.vhosts.get(self.vhost_name)
        if vhost is None:
            raise not_found()
        if not (has_level(self.user, "administrator") or
                permission_of(self.user, vhost.name) is not None):
            raise not_authorised("User not authorised to access virtual host")
        return vhost

    def vhosts(self) -> list[VirtualHost]:
        """The vhost of the path if there is one, else every vhost the user may see."""
        if "vhost" in self.params:
            return [self.vhost()]
        broker = self.state.broker
        return [broker.vhosts[name] for name in sorted(broker.vhosts)
                if may_see_vhost(self.user, name)]

    def queue(self, name: str | None = None) -> Queue:
        """The queue of the path (404 if unknown)."""
        queue = self.vhost().queues.get(self.params["name"] if name is None else name)
        if queue is None:
            raise not_found()
        return queue

    def exchange(self, name: str | None = None) -> Exchange:
        """The exchange of the path; ``amq.default`` is the default exchange (404 if none)."""
        name = self.params["name"] if name is None else name
        exchange = self.vhost().exchanges.get("" if name == "amq.default" else name)
        if exchange is None:
            raise not_found()
        return exchange


def flag(value: Any, default: bool = False) -> bool:
    """A JSON boolean as RabbitMQ reads it (``"true"`` strings too)."""
    if value is None:
        return default
    if isinstance(value, str):
        return value.lower() == "true"
    return bool(value)


def arguments_of(body: dict[str, Any]) -> dict[str, Any]:
    """The ``arguments`` object of a body (400 when it is not an object)."""
    arguments = body.get("arguments") or {}
    if not isinstance(arguments, dict):
        raise bad_request("arguments must be a JSON object")
    return arguments


__all__ = ["ApiError", "Call", "Reply", "arguments_of", "created_or_updated", "flag"]
