"""Users, vhosts and permissions made at run time (management API, ``amqpd ctl``, definitions
imported over HTTP) across restarts: ``<data_dir>/access.json``.

What the configuration defines is left out -- it is applied again at every start and a
SIGHUP removes what it no longer lists -- and so are the default user and vhost, which come
from ``auth.default_*``. Everything else is written whole after each change (atomically,
:mod:`amqpd.store.json_file`) and restored at start-up *after* the configuration, so a name
the configuration takes over later is the configuration's, as RabbitMQ's definitions
loaded at boot override what its database held.
"""

from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amqpd.access.auth import User, hash_algorithm
from amqpd.access.permissions import Permission
from amqpd.store.json_file import read_json, write_json
from amqpd.store.records import StoreCorruptError
from amqpd.topology.apply import managed

if TYPE_CHECKING:
    from amqpd.broker.broker import Broker

LOGGER = logging.getLogger(__name__)

FILENAME = "access.json"

# Where each broker keeps its run-time access state (set by restore_access at start-up).
_FILES: weakref.WeakKeyDictionary[Broker, Path] = weakref.WeakKeyDictionary()


def access_document(broker: Broker) -> dict[str, Any]:
    """What is to be kept: run-time users, vhosts and permissions, in RabbitMQ's
    definitions vocabulary."""
    settings = broker.settings
    record = managed(broker)
    configured_vhosts = set(settings.vhosts) | {settings.default_vhost}
    if settings.topology is not None:
        configured_vhosts |= set(settings.topology.vhosts)
    skipped_users = record.users | {settings.default_user}
    users, permissions = [], []
    for user in sorted(broker.users.users.values(), key=lambda u: u.name):
        if user.name not in skipped_users:
            users.append({"name": user.name, "password_hash": user.password_hash,
                          "tags": sorted(user.tags)})
        for vhost, permission in sorted(user.permissions.items()):
            if user.name in skipped_users and (
                user.name == settings.default_user or (user.name, vhost) in record.permissions
            ):
                continue
            permissions.append({"user": user.name, "vhost": vhost,
                                "configure": permission.configure,
                                "write": permission.write, "read": permission.read})
    vhosts = sorted(name for name in broker.vhosts if name not in configured_vhosts)
    return {"users": users, "vhosts": [{"name": name} for name in vhosts],
            "permissions": permissions}


def save_access(broker: Broker) -> None:
    """Write the run-time access state to the broker's file (nothing without a data
    directory).

    A failed write is logged, not raised: the change is live, and it is the operator who
    must hear that it will not survive a restart.
    """
    path = _FILES.get(broker)
    if path is None:
        return
    try:
        write_json(path, access_document(broker))
    except OSError as exc:
        LOGGER.error("cannot write %s: %s; users, vhosts and permissions changed since are "
                     "lost when the broker stops", path, exc)


def restore_access(broker: Broker, path: Path) -> None:
    """Bring back what :func:`save_access` wrote, then keep saving there.

    Raises:
        StoreCorruptError: the file is not such a document (it is left as it is).
    """
    document = read_json(path, "the users, vhosts and permissions made at run time")
    _FILES[broker] = path
    if document is None:
        return
    try:
        _restore(broker, document)
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreCorruptError(f"{path} is not an access document ({exc!r}); amqpd has "
                                "left it as it is. Move it aside to start without it.") from exc


def _restore(broker: Broker, document: dict[str, Any]) -> None:
    for vhost in document["vhosts"]:
        broker.add_vhost(str(vhost["name"]))
    for spec in document["users"]:
        name, password_hash = str(spec["name"]), str(spec["password_hash"])
        if name in broker.users.users:
            continue  # the configuration defines it now: its definition wins
        if password_hash and hash_algorithm(password_hash) is None:
            raise ValueError(f"user '{name}' has no usable password hash")
        broker.users.add(User(name, password_hash, tags=[str(t) for t in spec["tags"]],
                              vhosts=set()))
    record = managed(broker)
    for spec in document["permissions"]:
        user = broker.users.get(str(spec["user"]))
        vhost = str(spec["vhost"])
        if user is None or vhost not in broker.vhosts or (user.name, vhost) in record.permissions:
            continue
        user.set_permission(vhost, Permission(str(spec["configure"]), str(spec["write"]),
                                              str(spec["read"])))
