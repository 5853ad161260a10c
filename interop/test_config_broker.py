"""The broker configured by file, environment and flags, as clients and operators see it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pika
import pytest
from config_broker import REPO_ROOT, ConfigBroker, start_failure

from amqpd.access.auth import hash_password

pytestmark = pytest.mark.amqpd_only


def test_default_user_from_the_environment(tmp_path: Path) -> None:
    broker = ConfigBroker(tmp_path, "auth:\n  default_user: guest\n", env={
        "AMQPD_DEFAULT_USER": "admin", "AMQPD_DEFAULT_PASS": "0123",
        "AMQPD_DEFAULT_VHOST": "prod",
    }, log_level="warning")
    try:
        connection = pika.BlockingConnection(pika.ConnectionParameters(
            broker.host, broker.port, "prod", pika.PlainCredentials("admin", "0123")))
        connection.channel().queue_declare("in-prod")
        connection.close()
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
        # the HEALTHCHECK command: defaults from the same environment
        env = {k: v for k, v in os.environ.items() if not k.startswith("AMQPD_")}
        env.update(AMQPD_PORT=str(broker.port), AMQPD_DEFAULT_USER="admin",
                   AMQPD_DEFAULT_PASS="0123", AMQPD_DEFAULT_VHOST="prod")
        ping = subprocess.run([sys.executable, "-m", "amqpd", "--config",
                               str(broker.config_path), "ping"], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=30, check=False)
        assert ping.returncode == 0, ping.stderr
    finally:
        assert broker.stop() == 0


def test_json_log_lines(tmp_path: Path) -> None:
    broker = ConfigBroker(tmp_path, "logging: {format: json}\n")
    try:
        broker.reload("configuration reloaded")
    finally:
        assert broker.stop() == 0
    lines = [line for line in broker.stderr_lines if line.strip()]
    assert lines
    documents = [json.loads(line) for line in lines]
    assert {"time", "level", "logger", "message"} <= set(documents[0])
    assert any(d["message"] == "received SIGHUP, reloading the configuration"
               for d in documents)


def test_invalid_configuration_stops_start_up(tmp_path: Path) -> None:
    code, stderr = start_failure(tmp_path, "limits:\n  heartbeat: often\n")
    assert code == 1
    assert stderr == (
        f"{tmp_path / 'broken.yaml'}:2:14: limits.heartbeat: got the string 'often', expected "
        "an integer from 0 to 65535\n"
    )


def test_environment_error_names_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("{}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMQPD_")}
    result = subprocess.run(
        [sys.executable, "-m", "amqpd", "--config", str(path), "--port", "0"],
        cwd=REPO_ROOT, env={**env, "AMQPD_FRAME_MAX": "huge"}, capture_output=True,
        text=True, timeout=30, check=False,
    )
    assert result.returncode == 1
    assert result.stderr == ("environment variable AMQPD_FRAME_MAX: got the string 'huge', "
                             "expected an integer from 4096 to 2147483647\n")


TOPOLOGY = """
topology:
  vhosts:
    /:
      queues:
        kept: {arguments: {x-max-length: 10}}
"""


def test_topology_survives_a_restart_and_conflicts_with_stored_state(tmp_path: Path) -> None:
    broker = ConfigBroker(tmp_path, TOPOLOGY, log_level="warning")
    connection = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
    channel = connection.channel()
    channel.queue_declare("by-client", durable=True, arguments={"x-max-length": 3})
    channel.confirm_delivery()
    channel.basic_publish("", "kept", b"persistent", pika.BasicProperties(delivery_mode=2))
    connection.close()
    assert broker.stop() == 0

    # same data directory, same topology: applies cleanly over what was recovered
    broker = ConfigBroker(tmp_path, TOPOLOGY, log_level="warning")
    connection = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
    _, _, body = connection.channel().basic_get("kept", auto_ack=True)
    assert body == b"persistent"
    connection.close()
    assert broker.stop() == 0

    # a topology that contradicts what clients declared: nothing starts
    conflicting = TOPOLOGY + "        by-client: {arguments: {x-max-length: 5}}\n"
    code, stderr = start_failure(tmp_path, conflicting)
    assert code == 1
    assert f"{tmp_path / 'broken.yaml'}:7:9: queue 'by-client' in vhost '/' already exists " \
           "(declared by a client or restored from the data directory) and differs: " \
           "argument 'x-max-length' is '5' in the topology but '3' in the broker" in stderr


def test_users_from_the_config_file(tmp_path: Path) -> None:
    config = f"""
users:
  - {{name: svc, password_hash: "{hash_password('svc-pw')}", tags: [monitoring]}}
permissions:
  - {{user: svc, vhost: /, configure: ".*", write: ".*", read: ".*"}}
auth:
  loopback_users: []
"""
    broker = ConfigBroker(tmp_path, config, log_level="warning")
    try:
        connection = pika.BlockingConnection(pika.ConnectionParameters(
            broker.host, broker.port, "/", pika.PlainCredentials("svc", "svc-pw")))
        connection.channel().queue_declare("svc-q", auto_delete=True)
        connection.close()
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            pika.BlockingConnection(pika.ConnectionParameters(
                broker.host, broker.port, "/", pika.PlainCredentials("svc", "wrong")))
    finally:
        assert broker.stop() == 0
