"""The frame mutations of ``mutations.py`` over real sockets, against a real amqpd process,
while a pika control client keeps publishing and consuming.

Holds when: the control client sees no error and no stall, the broker process stays up
and exits 0 on SIGTERM without having logged an internal error, and each fuzzing
connection gets a close with a documented reply code, is dropped, or is still being served
when the fuzzer gives up on it (a truncated frame waits for the rest, as it should).
``AMQPD_SOCKET_FUZZ_CASES`` sets the number of connections (default 80).
``python -m interop.reliability_rabbitmq fuzz`` sends the same cases to RabbitMQ.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import os
import random
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Protocol

import pika
from pamqp import commands

from tests.broker_process import BrokerProcess

from . import mutations
from .harness import CHANNEL_CODES, CONNECTION_CODES, server_frames

CASES = int(os.environ.get("AMQPD_SOCKET_FUZZ_CASES", "80"))


class Listener(Protocol):
    """Where the broker listens: amqpd's ``BrokerProcess`` or a RabbitMQ node."""

    host: str
    port: int


class ControlClient(threading.Thread):
    """Publishes one message, waits for its delivery, repeats; records every round trip."""

    def __init__(self, broker: Listener) -> None:
        super().__init__(daemon=True)
        self.broker = broker
        self.stop = threading.Event()
        self.round_trips: list[float] = []
        self.errors: list[BaseException] = []

    def run(self) -> None:
        try:
            connection = pika.BlockingConnection(
                pika.ConnectionParameters(self.broker.host, self.broker.port, heartbeat=5))
            channel = connection.channel()
            channel.queue_declare("control", exclusive=True)
            received: list[bytes] = []
            channel.basic_consume("control", lambda ch, method, _, body: received.append(body),
                                  auto_ack=True)
            number = 0
            while not self.stop.is_set():
                number += 1
                body = str(number).encode()
                sent = time.monotonic()
                channel.basic_publish("", "control", body)
                while body not in received:
                    if time.monotonic() - sent > 5:
                        raise TimeoutError(f"message {number} not delivered within 5 s")
                    connection.process_data_events(0.01)
                self.round_trips.append(time.monotonic() - sent)
                received.clear()
                time.sleep(0.01)
            connection.close()
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)


def _complete_frames(data: bytes) -> bytes:
    """The bytes of the complete frames (reading may stop in the middle of one)."""
    offset = 8 if data.startswith(mutations.PROTOCOL_HEADER) else 0
    while len(data) - offset >= 8:
        size = struct.unpack_from(">I", data, offset + 3)[0]
        if len(data) - offset < size + 8:
            break
        offset += size + 8
    return data[:offset]


def fuzz_one(address: tuple[str, int], elements: list[bytes]) -> tuple[str, list[str]]:
    """One connection: send the mutated session, read until the broker closes or 3 s of
    silence. Returns (outcome, problems)."""
    problems: list[str] = []
    received = bytearray()
    outcome = "still open"
    with socket.create_connection(address, timeout=5) as sock:
        with contextlib.suppress(OSError):  # the broker closed first: still read below
            sock.sendall(b"".join(elements))
        sock.settimeout(3)
        try:
            while chunk := sock.recv(65536):
                received += chunk
            outcome = "dropped"
        except TimeoutError:
            pass
        except ConnectionResetError:
            outcome = "dropped"
    try:
        for _, value in server_frames(_complete_frames(bytes(received))):
            if isinstance(value, commands.Connection.Close):
                outcome = f"connection.close {value.reply_code}"
                if value.reply_code not in CONNECTION_CODES:
                    problems.append(f"connection.close {value.reply_code} {value.reply_text}")
            elif isinstance(value, commands.Channel.Close) and \
                    value.reply_code not in CHANNEL_CODES:
                problems.append(f"channel.close {value.reply_code} {value.reply_text}")
    except ValueError as exc:
        problems.append(str(exc))
    return outcome, problems


def mutated_sessions(count: int, seed: int) -> list[list[bytes]]:
    """``count`` valid sessions with 1-3 random mutations each; the same seed gives the same
    cases, so two brokers can be sent the same ones."""
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        elements = mutations.session(rng.randrange(len(mutations.SCENARIOS) * 3))
        for change in mutations.random_mutations(rng, rng.randrange(1, 4)):
            elements = mutations.mutate(elements, change)
        cases.append(elements)
    return cases


def test_mutated_sessions_over_sockets_leave_other_clients_alone(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path)
    control = ControlClient(broker)
    outcomes: collections.Counter[str] = collections.Counter()
    problems: list[str] = []
    try:
        control.start()
        cases = mutated_sessions(CASES, int(os.environ.get("AMQPD_SOCKET_FUZZ_SEED", "1")))
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            for outcome, found in pool.map(
                    lambda case: fuzz_one((broker.host, broker.port), case), cases):
                outcomes[outcome] += 1
                problems += found
        time.sleep(0.5)
        control.stop.set()
        control.join(10)
        assert broker.process.poll() is None, "the broker died"
    finally:
        control.stop.set()
        code = broker.stop()
    assert broker.process.stderr is not None
    log = broker.process.stderr.read()
    print(f"socket fuzzing: {CASES} connections: {dict(outcomes)}; control client: "
          f"{len(control.round_trips)} round trips, slowest "
          f"{max(control.round_trips, default=0) * 1000:.0f} ms")
    assert problems == []
    assert code == 0
    assert "internal error" not in log and "Traceback" not in log, log[-3000:]
    assert not control.errors, control.errors
    assert len(control.round_trips) > 10
    assert max(control.round_trips) < 2.0  # no stall while the fuzzers ran
