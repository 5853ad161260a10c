"""RabbitMQ on a really full disk, as ``tests/test_reliability.py::test_a_really_full_file_system``
does it with amqpd: the node's data directory (its mnesia base) on a 20 MiB tmpfs with 8 MiB
taken, 64 KiB persistent messages to a durable queue with confirms, ``kill -9`` of beam.smp
while the disk is full, a restart with the space freed, confirmed against recovered.

Twice: with RabbitMQ's default ``disk_free_limit`` (50 MB: the disk alarm is raised at boot
and blocks the publisher before its first message), and with ``disk_free_limit.absolute = 1``
so publishing starts and runs into the full disk. Needs root (mount).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pika

from interop import rabbitmq

BODY = b"x" * 65536
PERSISTENT = pika.BasicProperties(delivery_mode=2)


@contextlib.contextmanager
def small_tmpfs(size: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="h10-rabbitmq-disk-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        path.rmdir()


def node_on(disk: Path, disk_free_limit: str | None) -> rabbitmq.Instance:
    """A private node (as ``rabbitmq.start``) whose mnesia base is on ``disk``."""
    amqp_port, dist_port = rabbitmq._pick_ports()
    base = Path(tempfile.mkdtemp(prefix="interop-rabbitmq-"))
    base.chmod(0o755)
    management_port, prometheus_port = rabbitmq._free_port(), rabbitmq._free_port()
    rabbitmq._prepare_dir(base, management_port, prometheus_port)
    if disk_free_limit is not None:
        with open(base / "rabbitmq.conf", "a") as conf:
            conf.write(f"disk_free_limit.absolute = {disk_free_limit}\n")
    (base / "mnesia").rmdir()
    (disk / "mnesia").mkdir()
    (base / "mnesia").symlink_to(disk / "mnesia")  # df follows it: the tmpfs is measured
    user = pwd.getpwnam("rabbitmq")
    for path in (disk, disk / "mnesia"):
        os.chown(path, user.pw_uid, user.pw_gid)
    instance = rabbitmq.Instance(
        nodename=f"interop-h10disk-{amqp_port}@localhost", port=amqp_port, dist_port=dist_port,
        base_dir=str(base), pid=0, management_port=management_port,
        prometheus_port=prometheus_port)
    rabbitmq.boot(instance)
    return instance


class Publisher(threading.Thread):
    """Publishes 64 KiB persistent messages with confirms, one confirmed before the next,
    until told to stop or the connection fails; counts confirms and blocked notices."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.confirmed = 0
        self.last_confirm = time.monotonic()
        self.blocked: list[str] = []
        self.error = ""

    def run(self) -> None:
        try:
            connection = pika.BlockingConnection(pika.ConnectionParameters(
                "127.0.0.1", self.port, heartbeat=0))
            connection.add_on_connection_blocked_callback(
                lambda _, frame: self.blocked.append(frame.method.reason))
            channel = connection.channel()
            channel.queue_declare("fill", durable=True)
            channel.confirm_delivery()
            while True:
                channel.basic_publish("", "fill", BODY, PERSISTENT)
                self.confirmed += 1
                self.last_confirm = time.monotonic()
        except Exception as exc:  # the node is killed under it, or it failed first
            self.error = f"{type(exc).__name__} {exc}"[:200]


def beam_pid(instance: rabbitmq.Instance) -> int:
    return int(Path(instance.pid_file).read_text().strip())


def connection_states(instance: rabbitmq.Instance) -> str:
    """``rabbitmqctl list_connections state``: running, blocking, blocked, ..."""
    ctl = rabbitmq._find(rabbitmq.CTL_CANDIDATES, "rabbitmqctl")
    listing = subprocess.run([ctl, "-n", instance.nodename, "-q", "list_connections", "state"],
                             env=instance.env(), capture_output=True, text=True, check=False)
    return ",".join(listing.stdout.split()[1:]) or "none"  # after the column title


def message_count(port: int) -> int:
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    try:
        return int(connection.channel().queue_declare("fill", durable=True, passive=True)
                   .method.message_count)
    finally:
        connection.close()


def one_run(disk_free_limit: str | None) -> str:
    with small_tmpfs("20m") as disk:
        ballast = disk / "ballast"
        ballast.write_bytes(b"\0" * 8 * 1024 * 1024)
        instance = node_on(disk, disk_free_limit)
        try:
            publisher = Publisher(instance.port)
            publisher.start()
            # Full: no confirm for 5 s (the alarm blocked it, or the disk refused writes).
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and publisher.is_alive() and \
                    time.monotonic() - publisher.last_confirm < 5:
                time.sleep(0.2)
            stalled = publisher.confirmed
            usage = shutil.disk_usage(disk)
            node_up = rabbitmq._amqp_ready(instance.port)
            states = connection_states(instance)
            log = "".join(path.read_text(errors="replace")
                          for path in Path(instance.base_dir, "log").glob("*.log"))
            enospc = log.count("enospc")
            errors = [line[:300] for line in log.splitlines() if "[error]" in line]
            Path(tempfile.gettempdir(), f"rabbitmq-full-disk-{disk_free_limit}.log").write_text(log)
            os.kill(beam_pid(instance), signal.SIGKILL)
            time.sleep(1)
            rabbitmq._kill(instance)
            ballast.unlink()
            rabbitmq.boot(instance)
            recovered = message_count(instance.port)
        finally:
            rabbitmq.stop(instance)
    limit = "default 50 MB" if disk_free_limit is None else f"absolute {disk_free_limit}"
    return (f"full disk, disk_free_limit {limit}: {stalled} confirmed when confirms stopped "
            f"({usage.free // 1024} KiB free; connection.blocked seen: "
            f"{publisher.blocked or 'no'}; rabbitmqctl: connection {states}; publisher "
            f"error: {publisher.error or 'none'}; node answering AMQP: {node_up}; 'enospc' in "
            f"its log {enospc}x, first error: {errors[0] if errors else 'none'}); kill -9, "
            f"restart with space: {recovered} recovered")


def full_disk() -> str:
    return "\n".join(one_run(limit) for limit in (None, "1"))
