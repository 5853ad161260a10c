"""kill -9 the broker while a separate process publishes persistent messages with confirms:
after a restart every confirmed message is there (at least once), in order."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pika
import pytest

from .broker_process import BrokerProcess

HERE = Path(__file__).resolve().parent
ROUNDS = int(os.environ.get("AMQPD_CRASH_ROUNDS", "2"))


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


def crash_round(tmp_path: Path, seed: int, consume: bool) -> None:
    rng = random.Random(seed)
    data = tmp_path / f"data-{seed}"
    broker = BrokerProcess(data)
    queue = "crash"
    args = [sys.executable, str(HERE / "crash_publisher.py"), str(broker.port), queue]
    if consume:
        args.append("--consume")
    client = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    time.sleep(rng.uniform(0.5, 1.5))
    os.kill(broker.pid, signal.SIGKILL)
    broker.process.wait()
    output, _ = client.communicate(timeout=30)
    confirmed = {int(line.split()[1]) for line in output.splitlines()
                 if line.startswith("confirmed")}
    acked = {int(line.split()[1]) for line in output.splitlines() if line.startswith("acked")}
    assert confirmed, "the publisher confirmed nothing before the crash"
    restarted = BrokerProcess(data)
    try:
        recovered = drain(restarted.port, queue)
    finally:
        restarted.stop()
    missing = confirmed - acked - set(recovered)
    assert not missing, f"{len(missing)} confirmed messages lost, e.g. {sorted(missing)[:5]}"
    assert recovered == sorted(recovered), "recovered messages are out of order"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("consume", [False, True], ids=["publish", "publish+consume"])
def test_confirmed_messages_survive_kill_9(tmp_path: Path, consume: bool) -> None:
    for round_number in range(ROUNDS):
        crash_round(tmp_path, round_number * 2 + consume, consume)
