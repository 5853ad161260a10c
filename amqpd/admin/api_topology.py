"""Queues, exchanges and bindings: listing, declare / delete through the vhost's own
checks (the same equivalence rules and reply texts as AMQP), purge, get and publish."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote

from pamqp import commands

from amqpd.access.permissions import ResourceKind
from amqpd.admin.auth import require_permission
from amqpd.admin.context import NO_CONTENT, Call, Reply, arguments_of, created_or_updated, flag
from amqpd.admin.errors import ApiError, bad_request, not_found
from amqpd.admin.history import add_object_history, wanted
from amqpd.admin.paging import listing, parse_columns, select_columns, shape
from amqpd.admin.readmodel import (
    QUEUE_STATS,
    exchange_json,
    properties_key,
    queue_json,
    unacked_by_queue,
    vhost_bindings,
)
from amqpd.admin.routes import Route, route
from amqpd.broker import routing
from amqpd.broker.delayed import is_delayed
from amqpd.broker.exchange import Exchange
from amqpd.broker.message import Message, QueueEntry, route_for
from amqpd.broker.queue import Queue
from amqpd.broker.vhost import VirtualHost
from amqpd.protocol import codec
from amqpd.protocol.errors import AMQPError

# Property names of publish/get bodies (RabbitMQ's JSON names = pamqp's attribute names).
_PROPERTIES = ("content_type", "content_encoding", "headers", "delivery_mode", "priority",
               "correlation_id", "reply_to", "expiration", "message_id", "timestamp",
               "type", "user_id", "app_id", "cluster_id")


def amqp_call(action: Callable[[], Any]) -> Any:
    """Run a broker operation; its AMQP errors become RabbitMQ's HTTP answers (404 for
    a missing object, 400 with the AMQP reply text otherwise)."""
    try:
        return action()
    except AMQPError as exc:
        if exc.reply_code == 404:
            raise not_found() from None
        raise bad_request(exc.detail) from None


# -- queues --------------------------------------------------------------------------------


Unacked = dict[Queue, tuple[int, int]]

# Sort keys a queue answers without its JSON: a paged listing sorted by one of these builds
# the JSON of one page only (10,000 queues: the page, not 10,000 objects). The values are
# the same as the JSON's fields.
_LIGHT_SORTS: dict[str, Callable[[Queue, Unacked], object]] = {
    "": lambda queue, unacked: None,
    "name": lambda queue, unacked: queue.name,
    "vhost": lambda queue, unacked: queue.vhost_name,
    "messages": lambda queue, unacked: queue.message_count + unacked.get(queue, (0, 0))[0],
    "messages_ready": lambda queue, unacked: queue.message_count,
    "messages_unacknowledged": lambda queue, unacked: unacked.get(queue, (0, 0))[0],
    "consumers": lambda queue, unacked: len(queue.consumers),
}


def queue_item(call: Call, queue: Queue, unacked: Unacked) -> dict[str, Any]:
    """A queue's JSON, with the sample history the query asks for (``lengths_age``...)."""
    item = queue_json(call.state, queue, unacked)
    rates = call.state.rates
    if rates is not None and wanted(call.query):
        add_object_history(item, call.query, rates.queue_rings.get(queue, ()), rates.clock(),
                           QUEUE_STATS)
    return item


def list_queues(call: Call) -> Reply:
    """GET /api/queues[/{vhost}]."""
    unacked = unacked_by_queue(call.state)
    queues = [queue for vhost in call.vhosts() for _, queue in sorted(vhost.queues.items())]
    query = call.query
    sort = query.get("sort", "")
    light_key = _LIGHT_SORTS.get(sort)
    if "page" in query and light_key is not None:
        # Sort, filter and page light stand-ins, then describe the queues of the page.
        light_query = {key: value for key, value in query.items() if key != "columns"}
        stand_ins = [{"name": q.name, "vhost": q.vhost_name, sort: light_key(q, unacked),
                      "queue": q} for q in queues]
        envelope = listing(stand_ins, light_query)
        columns = parse_columns(query)
        items = [queue_item(call, item["queue"], unacked) for item in envelope["items"]]
        envelope["items"] = [select_columns(i, columns) for i in items] if columns else items
        return Reply(body=envelope)
    items = [queue_item(call, queue, unacked) for queue in queues]
    return Reply(body=listing(items, query))


def get_queue(call: Call) -> Reply:
    """GET /api/queues/{vhost}/{name}."""
    item = queue_item(call, call.queue(), unacked_by_queue(call.state))
    return Reply(body=shape(item, call.query))


def put_queue(call: Call) -> Reply:
    """PUT /api/queues/{vhost}/{name}: declare (201) or check equivalence (204, or 400)."""
    vhost = call.vhost()
    name = call.params["name"]
    body = call.json_object()
    require_permission(call.user, vhost.name, "configure", "queue", name)
    existed = name in vhost.queues
    amqp_call(lambda: vhost.declare_queue(
        name, None, durable=flag(body.get("durable"), True),
        auto_delete=flag(body.get("auto_delete")), arguments=arguments_of(body),
        exclusive=False,
    ))
    return created_or_updated(not existed)


def delete_queue(call: Call) -> Reply:
    """DELETE /api/queues/{vhost}/{name}[?if-unused=true&if-empty=true]."""
    vhost = call.vhost()
    queue = call.queue()
    require_permission(call.user, vhost.name, "configure", "queue", queue.name)
    if flag(call.query.get("if-unused")) and queue.consumers:
        raise bad_request(f"{queue.describe()} in use")
    if flag(call.query.get("if-empty")) and queue.message_count:
        raise bad_request(f"{queue.describe()} is not empty")
    # An administrator may delete an exclusive queue too (RabbitMQ's UI can).
    vhost.remove_queue(queue)
    return Reply(NO_CONTENT)


def purge_queue(call: Call) -> Reply:
    """DELETE /api/queues/{vhost}/{name}/contents."""
    vhost = call.vhost()
    queue = call.queue()
    require_permission(call.user, vhost.name, "read", "queue", queue.name)
    queue.purge()
    return Reply(NO_CONTENT)


def queue_actions(call: Call) -> Reply:
    """POST /api/queues/{vhost}/{name}/actions: sync / cancel_sync have nothing to do."""
    call.queue()
    action = call.json_object().get("action")
    if action not in ("sync", "cancel_sync"):
        raise bad_request(f"unknown action {action!r}")
    return Reply(NO_CONTENT)


def _properties_json(message: Message) -> dict[str, Any]:
    properties = message.properties
    result: dict[str, Any] = {}
    for name in _PROPERTIES:
        value = getattr(properties, name, None)
        if value is not None:
            result[name] = value
    return result


def _payload(body: bytes, encoding: str, truncate: int | None) -> tuple[str, str]:
    data = body[:truncate] if truncate is not None else body
    if encoding == "auto":
        try:
            return data.decode("utf-8"), "string"
        except UnicodeDecodeError:
            pass
    return base64.b64encode(data).decode("ascii"), "base64"


def get_messages(call: Call) -> Reply:
    """POST /api/queues/{vhost}/{name}/get: take up to ``count`` messages, then ack,
    reject or requeue them as ``ackmode`` says."""
    vhost = call.vhost()
    queue = call.queue()
    require_permission(call.user, vhost.name, "read", "queue", queue.name)
    body = call.json_object()
    ackmode = body.get("ackmode", "ack_requeue_true")
    if ackmode not in ("ack_requeue_true", "ack_requeue_false", "reject_requeue_true",
                       "reject_requeue_false"):
        raise bad_request(f"invalid ackmode '{ackmode}'")
    encoding = body.get("encoding", "auto")
    if encoding not in ("auto", "base64"):
        raise bad_request(f"invalid encoding '{encoding}'")
    try:
        count = int(body.get("count", 1))
        truncate = int(body["truncate"]) if body.get("truncate") is not None else None
    except (TypeError, ValueError):
        raise bad_request("count and truncate must be integers") from None
    if queue.exclusive:
        raise bad_request(f"{queue.describe()} is exclusive to another connection")
    taken: list[QueueEntry] = []
    while len(taken) < count:
        entry = queue.take()
        if entry is None:
            break
        taken.append(entry)
    stats = call.state.broker.stats
    messages = []
    for index, entry in enumerate(taken):
        message = entry.message
        payload, payload_encoding = _payload(message.body, encoding, truncate)
        messages.append({
            "payload_bytes": len(message.body),
            "redelivered": entry.redelivered,
            "exchange": message.exchange,
            "routing_key": message.routing_key,
            "message_count": queue.message_count + len(taken) - index - 1,
            "properties": _properties_json(message),
            "payload": payload,
            "payload_encoding": payload_encoding,
        })
    if ackmode.endswith("requeue_true"):
        queue.requeue(taken)
    else:
        for entry in taken:
            if ackmode.startswith("ack"):
                queue.acknowledge(entry)
            else:
                queue.reject(entry)
    stats.get += len(taken)
    if not taken:
        stats.get_empty += 1
    return Reply(body=messages)


# -- exchanges -----------------------------------------------------------------------------


def list_exchanges(call: Call) -> Reply:
    """GET /api/exchanges[/{vhost}]."""
    items = [exchange_json(exchange, vhost.policies) for vhost in call.vhosts()
             for _, exchange in sorted(vhost.exchanges.items())]
    return Reply(body=listing(items, call.query))


def get_exchange(call: Call) -> Reply:
    """GET /api/exchanges/{vhost}/{name}."""
    return Reply(body=shape(exchange_json(call.exchange(), call.vhost().policies), call.query))


def put_exchange(call: Call) -> Reply:
    """PUT /api/exchanges/{vhost}/{name}."""
    vhost = call.vhost()
    name = call.params["name"]
    body = call.json_object()
    type_name = body.get("type") or "direct"  # RabbitMQ's default too
    if not isinstance(type_name, str):
        raise bad_request("type must be a string")
    require_permission(call.user, vhost.name, "configure", "exchange", name)
    existed = name in vhost.exchanges
    amqp_call(lambda: vhost.declare_exchange(
        name, type_name, durable=flag(body.get("durable"), True),
        auto_delete=flag(body.get("auto_delete")), internal=flag(body.get("internal")),
        arguments=arguments_of(body),
    ))
    return created_or_updated(not existed)


def delete_exchange(call: Call) -> Reply:
    """DELETE /api/exchanges/{vhost}/{name}[?if-unused=true]."""
    vhost = call.vhost()
    exchange = call.exchange()
    require_permission(call.user, vhost.name, "configure", "exchange", exchange.name)
    amqp_call(lambda: vhost.delete_exchange(exchange.name, flag(call.query.get("if-unused"))))
    return Reply(NO_CONTENT)


def _publish_properties(body: dict[str, Any]) -> commands.Basic.Properties:
    given = body.get("properties") or {}
    if not isinstance(given, dict):
        raise bad_request("properties must be a JSON object")
    unknown = sorted(set(given) - set(_PROPERTIES))
    if unknown:
        raise bad_request(f"unknown properties: {', '.join(unknown)}")
    values = dict(given)
    if "delivery_mode" in values:
        values["delivery_mode"] = int(values["delivery_mode"])
    if "priority" in values:
        values["priority"] = int(values["priority"])
    if "expiration" in values:
        values["expiration"] = str(values["expiration"])
    try:
        return commands.Basic.Properties(**values)
    except (TypeError, ValueError) as exc:
        raise bad_request(f"invalid properties: {exc}") from None


def publish(call: Call) -> Reply:
    """POST /api/exchanges/{vhost}/{name}/publish: ``{"routed": true|false}``."""
    vhost = call.vhost()
    exchange = call.exchange()
    require_permission(call.user, vhost.name, "write", "exchange", exchange.name)
    body = call.json_object()
    routing_key = body.get("routing_key")
    payload = body.get("payload")
    if not isinstance(routing_key, str) or not isinstance(payload, str):
        raise bad_request("routing_key and payload are required strings")
    encoding = body.get("payload_encoding", "string")
    if encoding == "string":
        data = payload.encode("utf-8")
    elif encoding == "base64":
        try:
            data = base64.b64decode(payload, validate=True)
        except binascii.Error:
            raise bad_request("payload is not valid base64") from None
    else:
        raise bad_request(f"invalid payload_encoding '{encoding}'")
    if exchange.internal:
        raise bad_request(f"cannot publish to internal {exchange.describe()}")
    properties = _publish_properties(body)
    header = codec.encode_header_payload(len(data), properties)
    message = Message(route_for(exchange.name, routing_key), header, data)
    if properties.expiration is not None:
        expiration = properties.expiration
        if not expiration.isdigit():
            raise bad_request(f"invalid expiration '{expiration}'")
        message.ttl_ms = int(expiration)
    call.state.broker.stats.publish += 1
    if is_delayed(exchange) and vhost.delayed.hold(exchange, message):
        # As the plugin under RabbitMQ's API: held, so routed nowhere now ("routed": false).
        return Reply(body={"routed": False})
    queues = routing.route(exchange, message, vhost.queues, vhost.get_exchange,
                           vhost.delayed.hold)
    for queue in queues:
        queue.push(message)
    if not queues:
        call.state.broker.stats.drop_unroutable += 1
    return Reply(body={"routed": bool(queues)})


# -- bindings ------------------------------------------------------------------------------


def _bindings(call: Call, keep: Callable[[dict[str, Any]], bool]) -> Reply:
    items = [b for vhost in call.vhosts() for b in vhost_bindings(vhost) if keep(b)]
    return Reply(body=listing(items, call.query, pageable=False))


def list_bindings(call: Call) -> Reply:
    """GET /api/bindings[/{vhost}]."""
    return _bindings(call, lambda b: True)


def queue_bindings(call: Call) -> Reply:
    """GET /api/queues/{vhost}/{name}/bindings."""
    name = call.queue().name
    return _bindings(call, lambda b: b["destination"] == name
                     and b["destination_type"] == "queue")


def exchange_bindings_source(call: Call) -> Reply:
    """GET /api/exchanges/{vhost}/{name}/bindings/source."""
    name = call.exchange().name
    return _bindings(call, lambda b: b["source"] == name and name != "")


def exchange_bindings_destination(call: Call) -> Reply:
    """GET /api/exchanges/{vhost}/{name}/bindings/destination."""
    name = call.exchange().name
    return _bindings(call, lambda b: b["destination"] == name
                     and b["destination_type"] == "exchange")


def _kind(call: Call) -> ResourceKind:
    return "queue" if call.params["kind"] == "q" else "exchange"


def _endpoints(call: Call) -> tuple[VirtualHost, Exchange, Queue | Exchange]:
    vhost = call.vhost()
    source = call.exchange(call.params["source"])
    destination: Queue | Exchange
    if _kind(call) == "queue":
        destination = call.queue(call.params["destination"])
    else:
        destination = call.exchange(call.params["destination"])
    return vhost, source, destination


def _between(call: Call) -> list[dict[str, Any]]:
    vhost, source, destination = _endpoints(call)
    kind = _kind(call)
    return [b for b in vhost_bindings(vhost)
            if b["source"] == source.name and b["destination"] == destination.name
            and b["destination_type"] == kind]


def bindings_between(call: Call) -> Reply:
    """GET /api/bindings/{vhost}/e/{source}/{q|e}/{destination}."""
    return Reply(body=listing(_between(call), call.query, pageable=False))


def add_binding(call: Call) -> Reply:
    """POST /api/bindings/{vhost}/e/{source}/{q|e}/{destination}: 201 with a Location
    ending in the new binding's properties key."""
    vhost, source, destination = _endpoints(call)
    body = call.json_object()
    routing_key = body.get("routing_key", "")
    if not isinstance(routing_key, str):
        raise bad_request("routing_key must be a string")
    arguments = arguments_of(body)
    require_permission(call.user, vhost.name, "write", _kind(call), destination.name)
    require_permission(call.user, vhost.name, "read", "exchange", source.name)
    amqp_call(lambda: vhost.bind(source.name, destination, routing_key, arguments))
    location = f"{quote(destination.name, safe='')}/" \
               f"{quote(properties_key(routing_key, arguments), safe='')}"
    return Reply(201, headers={"Location": location})


def _binding(call: Call) -> dict[str, Any]:
    wanted = call.params["props"]
    for binding in _between(call):
        if unquote(binding["properties_key"]) == wanted or binding["properties_key"] == wanted:
            return binding
    raise not_found()


def get_binding(call: Call) -> Reply:
    """GET /api/bindings/{vhost}/e/{source}/{q|e}/{destination}/{props}."""
    return Reply(body=shape(_binding(call), call.query))


def delete_binding(call: Call) -> Reply:
    """DELETE /api/bindings/{vhost}/e/{source}/{q|e}/{destination}/{props}."""
    vhost, source, destination = _endpoints(call)
    binding = _binding(call)
    require_permission(call.user, vhost.name, "write", _kind(call), destination.name)
    require_permission(call.user, vhost.name, "read", "exchange", source.name)
    amqp_call(lambda: vhost.unbind(source.name, destination, binding["routing_key"],
                                   binding["arguments"]))
    return Reply(NO_CONTENT)


def _kinds(handler: Callable[[Call], Reply]) -> Callable[[Call], Reply]:
    """Only ``q`` and ``e`` are destination kinds (anything else is 404)."""
    def checked(call: Call) -> Reply:
        if call.params["kind"] not in ("q", "e"):
            raise ApiError(404, "Object Not Found", "Not Found")
        return handler(call)
    return checked


BINDING = "api/bindings/{vhost}/e/{source}/{kind}/{destination}"

ROUTES: list[Route] = [
    route("GET", "api/queues", list_queues),
    route("GET", "api/queues/{vhost}", list_queues),
    route("GET", "api/queues/{vhost}/{name}", get_queue),
    route("PUT", "api/queues/{vhost}/{name}", put_queue),
    route("DELETE", "api/queues/{vhost}/{name}", delete_queue),
    route("DELETE", "api/queues/{vhost}/{name}/contents", purge_queue),
    route("POST", "api/queues/{vhost}/{name}/actions", queue_actions),
    route("POST", "api/queues/{vhost}/{name}/get", get_messages),
    route("GET", "api/queues/{vhost}/{name}/bindings", queue_bindings),
    route("GET", "api/exchanges", list_exchanges),
    route("GET", "api/exchanges/{vhost}", list_exchanges),
    route("GET", "api/exchanges/{vhost}/{name}", get_exchange),
    route("PUT", "api/exchanges/{vhost}/{name}", put_exchange),
    route("DELETE", "api/exchanges/{vhost}/{name}", delete_exchange),
    route("POST", "api/exchanges/{vhost}/{name}/publish", publish),
    route("GET", "api/exchanges/{vhost}/{name}/bindings/source", exchange_bindings_source),
    route("GET", "api/exchanges/{vhost}/{name}/bindings/destination",
          exchange_bindings_destination),
    route("GET", "api/bindings", list_bindings),
    route("GET", "api/bindings/{vhost}", list_bindings),
    route("GET", BINDING, _kinds(bindings_between)),
    route("POST", BINDING, _kinds(add_binding)),
    route("GET", BINDING + "/{props}", _kinds(get_binding)),
    route("DELETE", BINDING + "/{props}", _kinds(delete_binding)),
]
