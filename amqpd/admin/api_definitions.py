"""Definitions: the broker's topology, users and permissions as RabbitMQ's JSON export,
and imports of such a document (global or into one vhost).

An import is converted by the same code as ``amqpd import-definitions``
(:mod:`amqpd.config.definitions`) and applied through the topology planner, so it goes
through the AMQP declare checks and is all or nothing: a conflict with existing state is
a 400 naming both sides, and then nothing was changed.
"""

from __future__ import annotations

from typing import Any

from amqpd.admin.context import NO_CONTENT, Call, Reply
from amqpd.admin.errors import bad_request
from amqpd.admin.readmodel import product, user_json
from amqpd.admin.routes import Route, route
from amqpd.broker.exchange import Exchange
from amqpd.broker.queue import Queue
from amqpd.broker.vhost import VirtualHost
from amqpd.config.definitions import DefinitionsError, convert
from amqpd.topology.access_file import save_access
from amqpd.topology.apply import TopologyError, apply_topology


def _exported_queue(queue: Queue) -> bool:
    return not queue.exclusive and not queue.name.startswith("amq.")


def _topology(vhost: VirtualHost, with_vhost: bool) -> dict[str, list[dict[str, Any]]]:
    tag = {"vhost": vhost.name} if with_vhost else {}
    queues = [
        {"name": q.name, **tag, "durable": q.durable, "auto_delete": q.auto_delete,
         "arguments": dict(q.arguments)}
        for _, q in sorted(vhost.queues.items()) if _exported_queue(q)
    ]
    exchanges = [
        {"name": e.name, **tag, "type": e.type_name, "durable": e.durable,
         "auto_delete": e.auto_delete, "internal": e.internal, "arguments": dict(e.arguments)}
        for name, e in sorted(vhost.exchanges.items())
        if name and not name.startswith("amq.")
    ]
    bindings = []
    for name, exchange in sorted(vhost.exchanges.items()):
        if exchange.kind is None:
            continue
        for binding in exchange.kind.bindings():
            destination = binding.destination
            if isinstance(destination, Queue) and _exported_queue(destination):
                kind = "queue"
            elif isinstance(destination, Exchange):
                kind = "exchange"
            else:
                continue
            bindings.append({"source": name, **tag, "destination": destination.name,
                             "destination_type": kind, "routing_key": binding.routing_key,
                             "arguments": dict(binding.arguments)})
    return {"queues": queues, "exchanges": exchanges, "bindings": bindings}


def export_all(call: Call) -> Reply:
    """GET /api/definitions."""
    broker = call.state.broker
    users = broker.users.users
    document: dict[str, Any] = {
        **product(),
        "users": [user_json(users[name]) for name in sorted(users)],
        "vhosts": [{"name": name, "limits": [], "metadata": {"description": "", "tags": []}}
                   for name in sorted(broker.vhosts)],
        "permissions": [
            {"user": name, "vhost": vhost, "configure": p.configure, "write": p.write,
             "read": p.read}
            for name in sorted(users) for vhost, p in sorted(users[name].permissions.items())
        ],
        "topic_permissions": [], "parameters": [], "global_parameters": [],
        "policies": [policy.document(name) for name in sorted(broker.vhosts)
                     for policy in broker.vhosts[name].policies],
        "queues": [], "exchanges": [], "bindings": [],
    }
    for name in sorted(broker.vhosts):
        for key, items in _topology(broker.vhosts[name], with_vhost=True).items():
            document[key].extend(items)
    return Reply(body=document)


def export_vhost(call: Call) -> Reply:
    """GET /api/definitions/{vhost}: the vhost's objects, without vhost fields."""
    vhost = call.vhost()
    policies = [policy.document(vhost.name) for policy in vhost.policies]
    for policy in policies:
        del policy["vhost"]  # as the vhost's other objects in this export
    return Reply(body={**product(), "parameters": [], "policies": policies,
                       **_topology(vhost, with_vhost=False)})


def _import(call: Call, document: Any, vhost: str | None) -> Reply:
    if vhost is not None:
        if not isinstance(document, dict):
            raise bad_request("not_json: expected a definitions object")
        for key in ("queues", "exchanges", "bindings", "policies", "parameters"):
            items = document.get(key)
            if isinstance(items, list):
                document[key] = [dict(item, vhost=vhost) for item in items
                                 if isinstance(item, dict)]
    try:
        conversion = convert(document, "definitions")
        apply_topology(call.state.broker, conversion.topology)
    except (DefinitionsError, TopologyError) as exc:
        raise bad_request(str(exc)) from None
    save_access(call.state.broker)  # imported users, vhosts and permissions are kept
    return Reply(NO_CONTENT)


def import_all(call: Call) -> Reply:
    """POST /api/definitions."""
    return _import(call, call.json(), None)


def import_vhost(call: Call) -> Reply:
    """POST /api/definitions/{vhost}."""
    call.vhost()
    return _import(call, call.json(), call.vhost_name)


ROUTES: list[Route] = [
    route("GET", "api/definitions", export_all, "administrator"),
    route("POST", "api/definitions", import_all, "administrator"),
    route("GET", "api/definitions/{vhost}", export_vhost, "administrator"),
    route("POST", "api/definitions/{vhost}", import_vhost, "administrator"),
]
