"""A topology model as plain data in the YAML shape that :mod:`amqpd.config.parse` reads
(the inverse of parsing): used by ``config show`` and by the topology export."""

from __future__ import annotations

from typing import Any

from amqpd.config.model import Topology


def plain_value(value: Any) -> Any:
    """Argument tables as plain dicts/lists (bindings keep read-only views)."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_value(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def topology_document(topology: Topology) -> dict[str, Any]:
    """A topology as plain data in the YAML shape that :mod:`amqpd.config.parse` reads."""
    document: dict[str, Any] = {}
    vhosts: dict[str, Any] = {}
    for name, vhost in topology.vhosts.items():
        body: dict[str, Any] = {}
        if vhost.exchanges:
            body["exchanges"] = {
                e.name: _with_arguments({"type": e.type, "durable": e.durable,
                                         "auto_delete": e.auto_delete, "internal": e.internal},
                                        e.arguments)
                for e in vhost.exchanges.values()
            }
        if vhost.queues:
            body["queues"] = {
                q.name: _with_arguments({"durable": q.durable, "auto_delete": q.auto_delete},
                                        q.arguments)
                for q in vhost.queues.values()
            }
        if vhost.bindings:
            body["bindings"] = [
                _with_arguments({"source": b.source, "destination": b.destination,
                                 "destination_type": b.destination_type,
                                 "routing_key": b.routing_key}, b.arguments)
                for b in vhost.bindings
            ]
        if vhost.policies:
            body["policies"] = {
                p.name: {"pattern": p.pattern, "apply_to": p.apply_to, "priority": p.priority,
                         "definition": plain_value(p.definition)}
                for p in vhost.policies.values()
            }
        vhosts[name] = body or None
    if vhosts:
        document["vhosts"] = vhosts
    if topology.users:
        document["users"] = [
            {"name": u.name, "password_hash": u.password_hash, "tags": list(u.tags)}
            for u in topology.users.values()
        ]
    if topology.permissions:
        document["permissions"] = [
            {"user": p.user, "vhost": p.vhost, "configure": p.configure, "write": p.write,
             "read": p.read}
            for p in topology.permissions
        ]
    return document


def _with_arguments(fields: dict[str, Any], arguments: dict[str, Any]) -> dict[str, Any]:
    if arguments:
        fields["arguments"] = plain_value(arguments)
    return fields
