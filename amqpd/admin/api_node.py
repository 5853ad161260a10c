"""Node-level endpoints: overview, whoami, nodes, extensions, aliveness and health checks."""

from __future__ import annotations

import os
import platform
import resource
import shutil
import time
from typing import Any

import exchanges
from amqpd.admin.auth import has_level, sees_all_vhosts
from amqpd.admin.context import Call, Reply
from amqpd.admin.errors import not_found
from amqpd.admin.history import LENGTHS, MSG_RATES, add_history, wanted, window
from amqpd.admin.paging import listing, shape
from amqpd.admin.rates import DEPTH_FIELDS, with_details
from amqpd.admin.readmodel import (
    CHURN,
    GLOBAL_STATS,
    RABBITMQ_VERSION,
    LiveState,
    depth_totals,
    product,
    unacked_by_queue,
)
from amqpd.admin.routes import Route, route

_EXCHANGE_DESCRIPTIONS = {
    "direct": "AMQP direct exchange, as per the AMQP specification",
    "fanout": "AMQP fanout exchange, as per the AMQP specification",
    "headers": "AMQP headers exchange, as per the AMQP specification",
    "topic": "AMQP topic exchange, as per the AMQP specification",
    "x-consistent-hash": "Consistent Hashing Exchange",
    "x-rules": "Routes by a rule per binding (amqpd)",
}


def _exchange_types() -> list[dict[str, Any]]:
    names = [name for name in sorted(exchanges.REGISTRY)
             if exchanges.get_exchange_type(name) is not None]
    return [{"name": name, "description": _EXCHANGE_DESCRIPTIONS.get(name, ""),
             "enabled": True} for name in names]


def _listeners(state: LiveState) -> list[dict[str, Any]]:
    return [{"node": state.node, "protocol": listener.protocol, "ip_address": listener.host,
             "port": listener.port, "socket_opts": {}} for listener in state.listeners]


def _churn(state: LiveState, counts: dict[str, int]) -> dict[str, int]:
    """Closed = created - open now (so nothing counts closes on the hot path)."""
    connections = state.open_connections()
    channels = sum(len(c.channels) for c in connections)
    all_connections = sum(1 for _ in state.connections())
    return {
        "connection_closed": max(0, counts["connection_created"] - all_connections),
        "channel_closed": max(0, counts["channel_created"] - channels),
    }


def overview(call: Call) -> Reply:
    """GET /api/overview: every field rabbitmqadmin v2's strict client requires."""
    state = call.state
    vhosts = call.vhosts()
    queues = [q for v in vhosts for q in v.queues.values()]
    connections = state.open_connections()
    if not sees_all_vhosts(call.user):
        names = {v.name for v in vhosts}
        connections = [c for c in connections if c.user_name == call.user.name
                       and c.vhost is not None and c.vhost.name in names]
    channels = sum(len(c.channels) for c in connections)
    consumers = sum(len(q.consumers) for q in queues)
    message_stats: dict[str, Any] = {}
    churn: dict[str, Any] = {}
    if state.rates is not None:
        counts, rates = state.rates.global_rates()
        counts.update(_churn(state, counts))
        message_stats = with_details(counts, rates, GLOBAL_STATS)
        message_stats.update(with_details(
            {"deliver_get": counts["deliver"] + counts["deliver_no_ack"] + counts["get"]
             + counts["get_no_ack"]},
            {"deliver_get": sum(rates.get(k, 0.0) for k in
                                ("deliver", "deliver_no_ack", "get", "get_no_ack"))},
            ("deliver_get",)))
        churn = with_details(counts, rates, CHURN)
    queue_totals: dict[str, Any] = depth_totals(state, vhosts, unacked_by_queue(state))
    body = {
        "management_version": RABBITMQ_VERSION,
        "rates_mode": "basic",
        "sample_retention_policies": {"global": [60], "basic": [60], "detailed": [60]},
        "exchange_types": _exchange_types(),
        **product(),
        "cluster_name": state.broker.cluster_name,
        "erlang_version": platform.python_version(),
        "erlang_full_version": f"{platform.python_implementation()} "
                               f"{platform.python_version()} (amqpd runs on Python, not Erlang)",
        "release_series_support_status": "supported",
        "disable_stats": False,
        "enable_queue_totals": True,
        "message_stats": message_stats,
        "churn_rates": churn,
        "queue_totals": queue_totals,
        "object_totals": {
            "connections": len(connections),
            "channels": channels,
            "consumers": consumers,
            "exchanges": sum(len(v.exchanges) for v in vhosts),
            "queues": len(queues),
        },
        "statistics_db_event_queue": 0,
        "node": state.node,
        "listeners": _listeners(state),
        "contexts": [{"node": state.node, "description": "RabbitMQ Management",
                      "path": "/", "port": str(listener.port)}
                     for listener in state.listeners if listener.protocol == "http"],
    }
    if state.rates is not None and wanted(call.query):
        ring, now = list(state.rates.global_ring), state.rates.clock()
        lengths = window(call.query, LENGTHS)
        # The broker-wide ring sums every vhost: only for those who see them all.
        if lengths is not None and sees_all_vhosts(call.user):
            add_history(queue_totals, DEPTH_FIELDS, ring, lengths, now)
        rates_age = window(call.query, MSG_RATES)
        if rates_age is not None:
            add_history(message_stats, (*GLOBAL_STATS, "deliver_get"), ring, rates_age, now)
    return Reply(body=shape(body, call.query))


def whoami(call: Call) -> Reply:
    """GET /api/whoami."""
    return Reply(body={"name": call.user.name, "tags": list(call.user.tags)})


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _fd_used() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def node_json(state: LiveState) -> dict[str, Any]:
    """The one node."""
    broker = state.broker
    try:
        disk_free = shutil.disk_usage(broker.settings.data_dir).free
    except OSError:
        disk_free = 0
    fd_total = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    connections = sum(1 for _ in state.connections())
    return {
        "name": state.node,
        "type": "disc",
        "running": True,
        "being_drained": False,
        "os_pid": str(os.getpid()),
        "uptime": int((time.monotonic() - state.started) * 1000),
        "processors": os.cpu_count() or 1,
        "run_queue": 0,
        "rates_mode": "basic",
        "mem_used": _rss_bytes(),
        "mem_used_details": {"rate": 0.0},
        "mem_limit": broker.memory_limit,
        "mem_alarm": broker.memory_alarm,
        "mem_calculation_strategy": "queued_message_bytes",
        "queued_message_bytes": broker.journal.queued_bytes,
        "disk_free": disk_free,
        "disk_free_details": {"rate": 0.0},
        "disk_free_limit": 50_000_000,
        "disk_free_alarm": False,
        "fd_used": _fd_used(),
        "fd_used_details": {"rate": 0.0},
        "fd_total": fd_total,
        "sockets_used": connections,
        "sockets_used_details": {"rate": 0.0},
        "sockets_total": fd_total,
        "proc_used": 1,
        "proc_total": 1,
        "partitions": [],
        "applications": [],
        "exchange_types": _exchange_types(),
        "enabled_plugins": ["rabbitmq_management"],
        "net_ticktime": 60,
        "config_files": [broker.settings.config_file] if broker.settings.config_file else [],
        "log_files": [],
    }


def nodes(call: Call) -> Reply:
    """GET /api/nodes."""
    return Reply(body=listing([node_json(call.state)], call.query, pageable=False))


def node(call: Call) -> Reply:
    """GET /api/nodes/{node}."""
    if call.params["node"] != call.state.node:
        raise not_found()
    return Reply(body=shape(node_json(call.state), call.query))


def extensions(call: Call) -> Reply:
    """GET /api/extensions: no UI plugins."""
    return Reply(body=[])


def cluster_name(call: Call) -> Reply:
    """GET /api/cluster-name."""
    return Reply(body={"name": call.state.broker.cluster_name})


def aliveness(call: Call) -> Reply:
    """GET /api/aliveness-test/{vhost}: deprecated in RabbitMQ but still called; the vhost
    must exist and be usable by the user."""
    call.vhost()
    return Reply(body={"status": "ok"})


def _health(failed_reason: str | None, **extra: Any) -> Reply:
    if failed_reason is None:
        return Reply(body={"status": "ok"})
    return Reply(503, {"status": "failed", "reason": failed_reason, **extra})


def alarms(call: Call) -> Reply:
    """GET /api/health/checks/alarms and local-alarms: 503 while the memory alarm is on."""
    broker = call.state.broker
    if broker.memory_alarm:
        return _health("resource alarm(s) in effect",
                       alarms=[{"node": call.state.node, "resource": "memory"}])
    return _health(None)


def port_listener(call: Call) -> Reply:
    """GET /api/health/checks/port-listener/{port}."""
    ports = [listener.port for listener in call.state.listeners]
    try:
        port = int(call.params["port"])
    except ValueError:
        return Reply(400, {"error": "bad_request", "reason": "port must be a number"})
    if port in ports:
        return Reply(body={"status": "ok", "port": port})
    return _health("No active listener", missing=port, ports=ports)


def protocol_listener(call: Call) -> Reply:
    """GET /api/health/checks/protocol-listener/{protocol}."""
    wanted = call.params["protocol"].lower()
    protocols = [listener.protocol for listener in call.state.listeners]
    aliases = {"amqp091": "amqp", "amqp0.9.1": "amqp", "amqp0-9-1": "amqp", "https": "http"}
    if aliases.get(wanted, wanted) in protocols:
        return Reply(body={"status": "ok", "protocol": wanted})
    return _health("No active listener", missing=wanted, protocols=protocols)


def virtual_hosts(call: Call) -> Reply:
    """GET /api/health/checks/virtual-hosts: every vhost runs while the broker does."""
    return _health(None)


def ok(call: Call) -> Reply:
    """Checks that always pass on a single node (quorum/mirror criticality...)."""
    return _health(None)


def feature_flags(call: Call) -> Reply:
    """GET /api/feature-flags and the other empty collections tools probe."""
    return Reply(body=[])


ROUTES: list[Route] = [
    route("GET", "api/overview", overview),
    route("GET", "api/whoami", whoami),
    route("GET", "api/cluster-name", cluster_name),
    route("GET", "api/nodes", nodes, "monitoring"),
    route("GET", "api/nodes/{node}", node, "monitoring"),
    route("GET", "api/extensions", extensions),
    route("GET", "api/aliveness-test/{vhost}", aliveness),
    route("GET", "api/health/checks/alarms", alarms),
    route("GET", "api/health/checks/local-alarms", alarms),
    route("GET", "api/health/checks/port-listener/{port}", port_listener),
    route("GET", "api/health/checks/protocol-listener/{protocol}", protocol_listener),
    route("GET", "api/health/checks/virtual-hosts", virtual_hosts),
    route("GET", "api/health/checks/node-is-quorum-critical", ok),
    route("GET", "api/health/checks/node-is-mirror-sync-critical", ok),
    route("GET", "api/health/checks/certificate-expiration/{within}/{unit}", ok),
    route("GET", "api/feature-flags", feature_flags),
    route("GET", "api/shovels", feature_flags),
    route("GET", "api/federation-links", feature_flags),
    route("GET", "api/operator-policies", feature_flags),
    route("GET", "api/parameters", feature_flags),
    route("GET", "api/global-parameters", feature_flags),
    route("GET", "api/topic-permissions", feature_flags),
]

__all__ = ["ROUTES", "has_level", "node_json"]
