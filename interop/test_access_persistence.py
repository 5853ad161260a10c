"""Users, vhosts and permissions made at run time (management API, definitions imported
over HTTP) survive a restart, and never turn into configuration: a SIGHUP reload keeps
them, and the configuration's own users stay the configuration's.

RabbitMQ keeps everything in its database, so these checks only make sense for amqpd's
split between configuration and run-time state (``<data_dir>/access.json``).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pika
import pytest
from config_broker import ConfigBroker
from test_management_api import Api
from test_policies import _management

from amqpd.access.auth import hash_password

pytestmark = pytest.mark.amqpd_only

V = "%2F"


def _config() -> str:
    return f"""
users:
  - name: ops
    password_hash: "{hash_password("ops-secret")}"
    tags: [administrator]
permissions:
  - {{user: ops, vhost: /, configure: ".*", write: ".*", read: ".*"}}
"""


def _login(broker: ConfigBroker, user: str, password: str, vhost: str) -> None:
    params = pika.ConnectionParameters(
        "127.0.0.1", broker.port, vhost, pika.PlainCredentials(user, password),
        connection_attempts=1, blocked_connection_timeout=5,
    )
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        channel.queue_declare("", exclusive=True)
    finally:
        connection.close()


def _add_runtime_state(api: Api) -> None:
    assert api.put("vhosts/tenant-a").status_code == 201
    assert api.put("users/alice", {"password": "alice-secret", "tags": "monitoring"}
                   ).status_code == 201
    assert api.put("permissions/tenant-a/alice",
                   {"configure": ".*", "write": ".*", "read": ".*"}).status_code == 201
    # Definitions imported over HTTP are run-time state too.
    definitions = {"users": [{"name": "bob", "password_hash": hash_password("bob-secret"),
                              "tags": ""}],
                   "vhosts": [{"name": "tenant-b"}],
                   "permissions": [{"user": "bob", "vhost": "tenant-b", "configure": ".*",
                                    "write": ".*", "read": ".*"}]}
    assert api.post("definitions", definitions).status_code == 204


def test_runtime_users_vhosts_and_permissions_survive_a_restart(tmp_path: Path) -> None:
    broker = ConfigBroker(tmp_path, _config(), "--management-port", "0")
    try:
        _add_runtime_state(_management(broker))
        assert broker.stop() == 0
    finally:
        broker.kill()
    document = json.loads((tmp_path / "data" / "access.json").read_text())
    names = {user["name"] for user in document["users"]}
    # The default user and the configuration's users are not run-time state.
    assert names == {"alice", "bob"}
    broker = ConfigBroker(tmp_path, _config(), "--management-port", "0")
    try:
        _login(broker, "alice", "alice-secret", "tenant-a")
        _login(broker, "bob", "bob-secret", "tenant-b")
        _login(broker, "ops", "ops-secret", "/")
        api = _management(broker)
        alice = api.get("users/alice").json()
        assert alice["tags"] == ["monitoring"]
        # A deletion is kept as well.
        assert api.delete("users/alice").status_code == 204
        assert broker.stop() == 0
    finally:
        broker.kill()
    broker = ConfigBroker(tmp_path, _config(), "--management-port", "0")
    try:
        api = _management(broker)
        assert api.get("users/alice").status_code == 404
        assert api.get("vhosts/tenant-a").status_code == 200
        assert broker.stop() == 0
    finally:
        broker.kill()


def test_a_reload_keeps_imported_definitions_and_the_configuration(tmp_path: Path) -> None:
    broker = ConfigBroker(tmp_path, _config(), "--management-port", "0")
    try:
        api = _management(broker)
        _add_runtime_state(api)
        broker.process.send_signal(signal.SIGHUP)
        broker.wait_for_log("reload")
        users = {user["name"] for user in api.get("users").json()}
        # Imported users were never configuration, so the reload must not remove them;
        # the configuration's user is still there.
        assert {"alice", "bob", "ops", "guest"} <= users
        _login(broker, "bob", "bob-secret", "tenant-b")
        assert broker.stop() == 0
    finally:
        broker.kill()
