"""Operator tools on the management API: ``amqpd ctl`` and Debian's ``rabbitmqadmin``,
run as real subprocesses against the broker under test (amqpd or RabbitMQ)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pika
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
RABBITMQADMIN = shutil.which("rabbitmqadmin") or next(
    (str(p) for p in Path("/usr/lib/rabbitmq").glob("lib/*/plugins/*/priv/www/cli/rabbitmqadmin")
     if p.exists()), None) if Path("/usr/lib/rabbitmq").exists() else shutil.which("rabbitmqadmin")


def ctl(management_url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    parsed = urlparse(management_url)
    url = f"http://{parsed.hostname}:{parsed.port}{parsed.path}"
    result = subprocess.run(
        [sys.executable, "-m", "amqpd", "ctl", "--url", url, "-u", parsed.username or "guest",
         "-p", parsed.password or "guest", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_ctl_lists_and_changes_state(
    management_url: str, pika_conn: pika.BlockingConnection, tmp_path: Path,
) -> None:
    queue = f"ctl.{uuid.uuid4().hex[:10]}"
    channel = pika_conn.channel()
    channel.queue_declare(queue)
    channel.confirm_delivery()
    channel.basic_publish("", queue, b"one")
    channel.basic_publish("", queue, b"two")
    try:
        listed = ctl(management_url, "list_queues", "-p", "/", "name", "messages_ready",
                     "durable").stdout.splitlines()
        assert listed[0] == "name\tmessages_ready\tdurable"
        quiet = ctl(management_url, "-q", "list_queues").stdout.splitlines()
        assert "name\tmessages" not in quiet
        rows = json.loads(ctl(management_url, "--formatter", "json", "list_queues").stdout)
        assert any(row["name"] == queue for row in rows)
        assert ctl(management_url, "list_exchanges").stdout.splitlines()[0] == "name\ttype"
        bindings = ctl(management_url, "list_bindings").stdout.splitlines()
        assert bindings[0].split("\t") == ["source_name", "source_kind", "destination_name",
                                           "destination_kind", "routing_key", "arguments"]
        assert any(f"\t{queue}\tqueue\t{queue}\t" in line for line in bindings)
        connections = ctl(management_url, "list_connections").stdout.splitlines()
        assert connections[0] == "user\tpeer_host\tpeer_port\tstate"
        ctl(management_url, "list_channels")
        ctl(management_url, "list_consumers")
        ctl(management_url, "purge_queue", queue)
        user, vhost = f"ctl-user-{uuid.uuid4().hex[:6]}", f"ctl-vhost-{uuid.uuid4().hex[:6]}"
        ctl(management_url, "add_vhost", vhost)
        ctl(management_url, "add_user", user, "secret")
        ctl(management_url, "set_user_tags", user, "management")
        ctl(management_url, "set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        export = tmp_path / "definitions.json"
        ctl(management_url, "export_definitions", str(export))
        document = json.loads(export.read_text())
        assert any(u["name"] == user and u["tags"] == ["management"] for u in document["users"])
        assert {"user": user, "vhost": vhost, "configure": ".*", "write": ".*",
                "read": ".*"} in document["permissions"]
        ctl(management_url, "import_definitions", str(export))
        status = ctl(management_url, "status").stdout
        assert "rabbitmq_version" in status
        missing = ctl(management_url, "delete_queue", "-p", "no-such-vhost", "q", check=False)
        assert missing.returncode == 1 and "404" in missing.stderr
        ctl(management_url, "delete_queue", queue)
    finally:
        if channel.is_open:
            channel.queue_delete(queue)
    assert not any(row["name"] == queue for row in json.loads(
        ctl(management_url, "--formatter", "json", "list_queues").stdout))


@pytest.mark.skipif(RABBITMQADMIN is None,
                    reason="rabbitmqadmin not found (apt-get install rabbitmq-server)")
def test_rabbitmqadmin_works(management_url: str, tmp_path: Path) -> None:
    parsed = urlparse(management_url)
    base = [sys.executable, str(RABBITMQADMIN), "-H", str(parsed.hostname), "-P",
            str(parsed.port), "-u", parsed.username or "guest", "-p", parsed.password or "guest"]

    def admin(*args: str) -> str:
        result = subprocess.run([*base, *args], capture_output=True, text=True, timeout=30,
                                check=False)
        assert result.returncode == 0, f"{args}: {result.stdout} {result.stderr}"
        return result.stdout

    queue = f"admin.{uuid.uuid4().hex[:10]}"
    try:
        assert "queue declared" in admin("declare", "queue", f"name={queue}", "durable=false")
        assert queue in admin("list", "queues")
        assert queue in admin("-f", "tsv", "list", "queues", "name", "messages")
        assert "Message published" in admin("publish", "exchange=amq.default",
                                             f"routing_key={queue}", "payload=hello-admin")
        assert "hello-admin" in admin("get", f"queue={queue}", "ackmode=ack_requeue_false")
        export = tmp_path / "export.json"
        assert "Exported definitions" in admin("export", str(export))
        assert any(q["name"] == queue for q in json.loads(export.read_text())["queues"])
        assert "Uploaded definitions" in admin("import", str(export))
        admin("list", "exchanges")
        admin("list", "bindings")
        admin("list", "connections")
        admin("list", "users")
        admin("list", "vhosts")
        admin("show", "overview")
    finally:
        subprocess.run([*base, "delete", "queue", f"name={queue}"], capture_output=True,
                       timeout=30, check=False)
