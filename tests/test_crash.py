"""kill -9 the broker while a separate process publishes persistent messages with confirms:
after a restart every confirmed message is there (at least once), in order.

The same rounds run against RabbitMQ (Debian's, a private node from interop/rabbitmq.py):
``kill -9`` of its ``beam.smp``, a restart on the same data directory, the same count. For
the figures side by side (not part of ``make test``)::

    .venv/bin/python -m tests.test_crash --rounds 10 [--rabbitmq]

and ``AMQPD_CRASH_RABBITMQ=1 pytest tests/test_crash.py`` runs the RabbitMQ rounds as tests.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pika
import pytest

from .broker_process import BrokerProcess

HERE = Path(__file__).resolve().parent
ROUNDS = int(os.environ.get("AMQPD_CRASH_ROUNDS", "2"))


class Target(Protocol):
    """A broker that can be killed with SIGKILL and started again on the same data."""

    name: str
    port: int

    def start(self) -> None: ...

    def kill9(self) -> None: ...

    def restart(self) -> None: ...

    def stop(self) -> None: ...


class Amqpd:
    """amqpd on a fresh data directory (one per round)."""

    name = "amqpd"

    def __init__(self, data: Path) -> None:
        self.data = data
        self.broker: BrokerProcess | None = None
        self.port = 0

    def start(self) -> None:
        self.broker = BrokerProcess(self.data)
        self.port = self.broker.port

    def kill9(self) -> None:
        assert self.broker is not None
        os.kill(self.broker.pid, signal.SIGKILL)
        self.broker.process.wait()

    def restart(self) -> None:
        self.start()

    def stop(self) -> None:
        if self.broker is not None:
            self.broker.stop()


class RabbitMQ:
    """A private RabbitMQ node (interop/rabbitmq.py), kept across rounds: each round kills
    its beam.smp (the pid RabbitMQ writes to its pid file) and boots it again on the same
    data directory."""

    name = "rabbitmq"

    def __init__(self) -> None:
        from interop import rabbitmq

        self.rabbitmq = rabbitmq
        self.instance: Any = None
        self.port = 0

    def start(self) -> None:
        if self.instance is None:
            self.instance = self.rabbitmq.start()
            self.port = self.instance.port

    def kill9(self) -> None:
        beam = int(Path(self.instance.pid_file).read_text().strip())
        os.kill(beam, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(beam, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        self.rabbitmq._kill(self.instance)  # the launcher's process group, if still there

    def restart(self) -> None:
        self.rabbitmq.boot(self.instance)

    def stop(self) -> None:
        if self.instance is not None:
            self.rabbitmq.stop(self.instance)
            self.instance = None


@dataclass
class Round:
    confirmed: set[int]
    acked: set[int]
    recovered: list[int]
    restart_seconds: float
    missing: set[int] = field(init=False)

    def __post_init__(self) -> None:
        self.missing = self.confirmed - self.acked - set(self.recovered)

    @property
    def in_order(self) -> bool:
        return self.recovered == sorted(self.recovered)

    @property
    def duplicates(self) -> int:
        """Recovered messages that had been consumed and acked already (at least once)."""
        return len(set(self.recovered) & self.acked)


def drain(port: int, queue: str) -> list[int]:
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    channel = connection.channel()
    channel.queue_declare(queue, durable=True)
    bodies = []
    while True:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            break
        bodies.append(int(body))
    connection.close()
    return bodies


def crash_round(target: Target, seed: int, consume: bool) -> Round:
    """Publish (and consume) under confirms, kill -9 at a random moment, restart, count."""
    rng = random.Random(seed)
    queue = f"crash-{seed}"
    target.start()
    args = [sys.executable, str(HERE / "crash_publisher.py"), str(target.port), queue]
    if consume:
        args.append("--consume")
    client = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    time.sleep(rng.uniform(0.5, 1.5))
    target.kill9()
    output, _ = client.communicate(timeout=60)
    confirmed = {int(line.split()[1]) for line in output.splitlines()
                 if line.startswith("confirmed")}
    acked = {int(line.split()[1]) for line in output.splitlines() if line.startswith("acked")}
    started = time.monotonic()
    target.restart()
    restart_seconds = time.monotonic() - started
    return Round(confirmed, acked, drain(target.port, queue), restart_seconds)


def check(result: Round) -> None:
    assert result.confirmed, "the publisher confirmed nothing before the crash"
    assert not result.missing, (
        f"{len(result.missing)} confirmed messages lost, e.g. {sorted(result.missing)[:5]}")
    assert result.in_order, "recovered messages are out of order"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("consume", [False, True], ids=["publish", "publish+consume"])
def test_confirmed_messages_survive_kill_9(tmp_path: Path, consume: bool) -> None:
    for round_number in range(ROUNDS):
        seed = round_number * 2 + consume
        target = Amqpd(tmp_path / f"data-{seed}")
        try:
            check(crash_round(target, seed, consume))
        finally:
            target.stop()


@pytest.mark.skipif(not os.environ.get("AMQPD_CRASH_RABBITMQ"),
                    reason="set AMQPD_CRASH_RABBITMQ=1 to crash a private RabbitMQ")
@pytest.mark.timeout(900)
@pytest.mark.parametrize("consume", [False, True], ids=["publish", "publish+consume"])
def test_rabbitmq_keeps_confirmed_messages_through_kill_9(consume: bool) -> None:
    target = RabbitMQ()
    try:
        for round_number in range(ROUNDS):
            check(crash_round(target, round_number * 2 + consume, consume))
    finally:
        target.stop()


def report(name: str, mode: str, rounds: list[Round]) -> str:
    restarts = sorted(r.restart_seconds for r in rounds)
    return (f"{name:8} {mode:16} rounds {len(rounds)}: confirmed "
            f"{sum(len(r.confirmed) for r in rounds)}, acked {sum(len(r.acked) for r in rounds)}, "
            f"recovered {sum(len(r.recovered) for r in rounds)}, "
            f"lost {sum(len(r.missing) for r in rounds)}, "
            f"acked but back {sum(r.duplicates for r in rounds)}, "
            f"out of order {sum(not r.in_order for r in rounds)}; restart "
            f"{restarts[0]:.2f}-{restarts[-1]:.2f} s (median {restarts[len(restarts) // 2]:.2f})")


def main() -> int:
    import tempfile

    parser = argparse.ArgumentParser(description="kill -9 rounds under confirmed load")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--rabbitmq", action="store_true", help="RabbitMQ's rounds too")
    parser.add_argument("--skip-amqpd", action="store_true")
    args = parser.parse_args()
    lines = []
    for consume in (False, True):
        mode = "publish+consume" if consume else "publish"
        if not args.skip_amqpd:
            with tempfile.TemporaryDirectory(prefix="amqpd-crash-") as directory:
                rounds = []
                for number in range(args.rounds):
                    seed = number * 2 + consume
                    amqpd = Amqpd(Path(directory) / f"data-{seed}")
                    try:
                        rounds.append(crash_round(amqpd, seed, consume))
                    finally:
                        amqpd.stop()
                lines.append(report("amqpd", mode, rounds))
                print(lines[-1], flush=True)
        if args.rabbitmq:
            rabbit = RabbitMQ()
            try:
                rounds = [crash_round(rabbit, number * 2 + consume, consume)
                          for number in range(args.rounds)]
            finally:
                with contextlib.suppress(Exception):
                    rabbit.stop()
            lines.append(report("rabbitmq", mode, rounds))
            print(lines[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
