"""RabbitMQ definitions (``rabbitmqctl export_definitions``, management ``/api/definitions``)
to the amqpd YAML topology.

Converted: users (``rabbit_password_hashing_sha256`` hashes carry over as they are; SHA-512
and MD5 ones work too), vhosts, permissions, exchanges, queues, bindings and policies
(checked when applied, as RabbitMQ checks them). Everything else -- operator policies,
topic permissions, parameters, global parameters, limits, vhost metadata,
exclusive queues, unknown fields -- is reported in the returned notes (printed on stderr by
``amqpd import-definitions``), never dropped silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amqpd.access.auth import hash_algorithm
from amqpd.config.model import (
    BindingSpec,
    ExchangeSpec,
    PermissionSpec,
    PolicySpec,
    QueueSpec,
    Topology,
    UserSpec,
    VhostSpec,
)

#: Top-level keys that only describe the export.
METADATA = ("rabbit_version", "rabbitmq_version", "product_name", "product_version",
            "rabbitmq_definition_format", "original_cluster_name", "explanation")
CONVERTED = ("users", "vhosts", "permissions", "exchanges", "queues", "bindings", "policies")
HASHES = ("rabbit_password_hashing_sha256", "rabbit_password_hashing_sha512",
          "rabbit_password_hashing_md5")


class DefinitionsError(ValueError):
    """The file is not a RabbitMQ definitions export."""


@dataclass(slots=True)
class Conversion:
    """The topology plus one note per thing that was not converted."""

    topology: Topology
    notes: list[str] = field(default_factory=list)


def _empty(value: object) -> bool:
    return value in (None, "", [], {})


def _describe(item: dict[str, Any]) -> str:
    name = item.get("name", item.get("user", "?"))
    vhost = item.get("vhost")
    return f"'{name}'" + (f" in vhost '{vhost}'" if vhost is not None else "")


def convert(document: Any, label: str = "definitions") -> Conversion:
    """Convert a parsed definitions document.

    Raises:
        DefinitionsError: when the document is not a definitions object.
    """
    if not isinstance(document, dict):
        raise DefinitionsError(f"{label}: expected a JSON object (a RabbitMQ definitions "
                               f"export), got {type(document).__name__}")
    topology = Topology(where=label)
    result = Conversion(topology)
    note = result.notes.append

    for key, value in document.items():
        if key in CONVERTED or key in METADATA or _empty(value):
            continue
        if key == "topic_permissions":
            for item in _items(value):
                note(f"{label}: topic_permissions: user '{item.get('user')}' in vhost "
                     f"'{item.get('vhost')}' on exchange '{item.get('exchange')}' not "
                     "converted: amqpd has no topic permissions")
        elif key in ("parameters", "global_parameters"):
            for item in _items(value):
                component = f"{item.get('component')}/" if item.get("component") else ""
                note(f"{label}: {key}: {component}{_describe(item)} not converted: amqpd has "
                     "no runtime parameters")
        else:
            note(f"{label}: '{key}' not converted: unknown to amqpd")

    vhost_names = []
    for vhost in _items(document.get("vhosts")):
        name = vhost.get("name")
        if not isinstance(name, str) or not name:
            note(f"{label}: vhosts: an entry without a name skipped")
            continue
        vhost_names.append(name)
        topology.vhosts.setdefault(name, VhostSpec(name, where=label))
        for extra, value in vhost.items():
            if extra not in ("name",) and not _empty(value):
                note(f"{label}: vhosts: '{name}': {extra} "
                     f"{json.dumps(value, sort_keys=True)} not converted")

    def vhost_of(item: dict[str, Any], what: str) -> VhostSpec | None:
        name = item.get("vhost", "/")
        if not isinstance(name, str) or not name:
            note(f"{label}: {what}: {_describe(item)} has no vhost; skipped")
            return None
        return topology.vhosts.setdefault(name, VhostSpec(name, where=label))

    for user in _items(document.get("users")):
        _user(user, topology, label, note)

    for item in _items(document.get("permissions")):
        user_name, vhost_name = item.get("user"), item.get("vhost")
        if not isinstance(user_name, str) or not isinstance(vhost_name, str):
            note(f"{label}: permissions: an entry without user or vhost skipped")
            continue
        topology.vhosts.setdefault(vhost_name, VhostSpec(vhost_name, where=label))
        topology.permissions.append(PermissionSpec(
            user_name, vhost_name, str(item.get("configure", "")), str(item.get("write", "")),
            str(item.get("read", "")), label,
        ))

    for item in _items(document.get("exchanges")):
        name = item.get("name")
        vhost_spec = vhost_of(item, "exchanges")
        if vhost_spec is None or not isinstance(name, str):
            continue
        if not name or name.startswith("amq."):
            note(f"{label}: exchanges: {_describe(item)} skipped: built in")
            continue
        _extra_fields(item, ("name", "vhost", "type", "durable", "auto_delete", "internal",
                             "arguments"), f"exchanges: {_describe(item)}", label, note)
        vhost_spec.exchanges[name] = ExchangeSpec(
            name, str(item.get("type", "direct")), bool(item.get("durable", True)),
            bool(item.get("auto_delete", False)), bool(item.get("internal", False)),
            dict(item.get("arguments") or {}), label,
        )

    for item in _items(document.get("queues")):
        name = item.get("name")
        vhost_spec = vhost_of(item, "queues")
        if vhost_spec is None or not isinstance(name, str) or not name:
            continue
        if item.get("exclusive"):
            note(f"{label}: queues: {_describe(item)} skipped: exclusive queues belong to a "
                 "connection")
            continue
        if name.startswith("amq."):
            note(f"{label}: queues: {_describe(item)} skipped: server-named")
            continue
        arguments = dict(item.get("arguments") or {})
        queue_type = item.get("type")
        if isinstance(queue_type, str) and queue_type != "classic":
            arguments.setdefault("x-queue-type", queue_type)
        _extra_fields(item, ("name", "vhost", "durable", "auto_delete", "arguments", "type",
                             "exclusive"), f"queues: {_describe(item)}", label, note)
        vhost_spec.queues[name] = QueueSpec(
            name, bool(item.get("durable", True)), bool(item.get("auto_delete", False)),
            arguments, label,
        )

    for item in _items(document.get("bindings")):
        vhost_spec = vhost_of(item, "bindings")
        source, destination = item.get("source"), item.get("destination")
        destination_type = item.get("destination_type", "queue")
        if vhost_spec is None or not isinstance(source, str) or not isinstance(destination, str):
            continue
        if not source:
            continue  # the default exchange's implicit bindings (never in real exports)
        if destination_type not in ("queue", "exchange"):
            note(f"{label}: bindings: from '{source}' to '{destination}' skipped: "
                 f"destination_type {destination_type!r}")
            continue
        _extra_fields(item, ("source", "vhost", "destination", "destination_type",
                             "routing_key", "arguments", "properties_key"),
                      f"bindings: from '{source}' to '{destination}'", label, note)
        binding = BindingSpec(
            source, destination, "exchange" if destination_type == "exchange" else "queue",
            str(item.get("routing_key", "")), dict(item.get("arguments") or {}), label,
        )
        if binding.key() not in {b.key() for b in vhost_spec.bindings}:
            vhost_spec.bindings.append(binding)

    for item in _items(document.get("policies")):
        name = item.get("name")
        vhost_spec = vhost_of(item, "policies")
        if vhost_spec is None or not isinstance(name, str) or not name:
            continue
        _extra_fields(item, ("name", "vhost", "pattern", "apply-to", "definition",
                             "priority"), f"policies: {_describe(item)}", label, note)
        # Kept as given: the topology planner refuses an invalid one with RabbitMQ's reason.
        policy = PolicySpec(name, item.get("pattern", ""), apply_to=item.get("apply-to", "all"),
                            priority=item.get("priority", 0), where=label)
        definition: Any = item.get("definition")  # not necessarily a dict: see above
        policy.definition = definition
        vhost_spec.policies[name] = policy
    return result


def _user(user: dict[str, Any], topology: Topology, label: str, note: Any) -> None:
    name = user.get("name")
    if not isinstance(name, str) or not name:
        note(f"{label}: users: an entry without a name skipped")
        return
    algorithm = user.get("hashing_algorithm", "rabbit_password_hashing_sha256")
    password_hash = str(user.get("password_hash") or "")
    if algorithm not in HASHES or (password_hash and hash_algorithm(password_hash) is None):
        note(f"{label}: users: '{name}' skipped: password hash of {algorithm} cannot be "
             "checked by amqpd; set a new one with `amqpd hash-password`")
        return
    tags = user.get("tags", [])
    if isinstance(tags, str):
        tags = [tag.strip() for tag in tags.split(",") if tag.strip()]
    for extra, value in user.items():
        if extra not in ("name", "password_hash", "hashing_algorithm", "tags") \
                and not _empty(value):
            note(f"{label}: users: '{name}': {extra} {json.dumps(value, sort_keys=True)} "
                 "not converted")
    topology.users[name] = UserSpec(name, password_hash, [str(t) for t in tags], label)


def _extra_fields(item: dict[str, Any], known: tuple[str, ...], what: str, label: str,
                  note: Any) -> None:
    for key, value in item.items():
        if key not in known and not _empty(value):
            note(f"{label}: {what}: field '{key}' ({json.dumps(value, sort_keys=True)}) not "
                 "converted")


def _items(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]


def convert_file(path: str | Path) -> Conversion:
    """Read and convert a definitions JSON file.

    Raises:
        DefinitionsError: unreadable or not JSON.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise DefinitionsError(f"{path}: cannot read the file: {exc.strerror or exc}") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DefinitionsError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}, "
                               "expected a RabbitMQ definitions export") from exc
    return convert(document, str(path))
